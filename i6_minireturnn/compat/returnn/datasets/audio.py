"""``returnn.datasets.audio``: ``OggZipDataset``.

For scripts that import these classes by module. Each resolves on first use through the dataset
registry, so importing this module loads no dataset code.
"""

from typing import Any

from i6_minireturnn.data.registry import get_dataset_class

_NAMES = "OggZipDataset"


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return get_dataset_class(name)
    raise AttributeError(f"module 'returnn.datasets.audio' has no attribute {name!r}")
