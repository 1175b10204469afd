"""Readers turn a dataset on disk into a record table. Importing this package registers them all.

pydicom and nibabel are imported by the volume reader only when it reads, so they stay optional.
"""
from medmtl.data.readers import busi, folder, manifest, medmnist, mias, volume  # noqa: F401  (registration)
from medmtl.data.readers._base import READERS, Reader, default_data_root

__all__ = ["READERS", "Reader", "default_data_root"]
