"""medmtl: multi-task and transfer learning for medical image analysis."""
import os

# cuBLAS reads its workspace setting once, when its first handle is made; deterministic matrix
# products need it, and the first GPU product may come from any part (a feature-extraction arm, a
# report figure) before a training sets train.deterministic, so it is set on import. A user's
# own value is kept.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from medmtl.errors import ConfigError, DataError, LeakageError, MedmtlError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "LeakageError", "MedmtlError", "__version__"]
