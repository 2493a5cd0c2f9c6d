"""Sisyphus jobs that write Mini-RETURNN configs and run them with the runtime next to this package."""

from .forward import MiniReturnnForwardJob  # noqa: F401
from .hdf_dump import HdfDumpJob  # noqa: F401
from .training import MiniReturnnTrainingJob  # noqa: F401
