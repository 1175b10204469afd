"""medmtl: multi-task and transfer learning for medical image analysis."""
from medmtl.errors import ConfigError, DataError, LeakageError, MedmtlError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "LeakageError", "MedmtlError", "__version__"]
