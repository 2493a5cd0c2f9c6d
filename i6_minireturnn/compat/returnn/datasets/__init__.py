"""``returnn.datasets``: the dataset base class and ``init_dataset``."""

from i6_minireturnn.data.dataset import Dataset  # noqa: F401
from i6_minireturnn.data.registry import init_dataset  # noqa: F401
