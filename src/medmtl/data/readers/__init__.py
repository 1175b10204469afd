"""Readers turn a dataset on disk into a record table. Importing this package registers them all."""
from medmtl.data.readers._base import READERS, Reader, default_data_root
from medmtl.data.readers import busi, folder, manifest, medmnist, mias  # noqa: F401  (registration)

try:  # the volume reader registers itself; pydicom/nibabel are imported only when it reads
    from medmtl.data.readers import volume  # noqa: F401
except ImportError:  # pragma: no cover - while the module is absent
    pass

__all__ = ["READERS", "Reader", "default_data_root"]
