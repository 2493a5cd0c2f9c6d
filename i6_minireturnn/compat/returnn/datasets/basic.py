"""``returnn.datasets.basic``: ``Dataset`` (custom engines annotate with it), ``init_dataset``, ``get_dataset_class``.

The functions take Mini-RETURNN's signatures and build this runtime's datasets.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type, Union

from i6_minireturnn.data.dataset import Dataset
from i6_minireturnn.data.registry import DATASET_MODULES
from i6_minireturnn.data.registry import get_dataset_class as _get_dataset_class
from i6_minireturnn.data.registry import init_dataset as _init_dataset

__all__ = ["Dataset", "init_dataset", "get_dataset_class"]


def get_dataset_class(name: Union[str, Type[Dataset]]) -> Optional[Type[Dataset]]:
    """The dataset class called `name` (a class is returned as is); None where this runtime has no such class."""
    if isinstance(name, type):
        return name if issubclass(name, Dataset) else None
    if name not in DATASET_MODULES:
        return None
    return _get_dataset_class(name)


def init_dataset(
    kwargs: Union[Dict[str, Any], Dataset, Any],
    extra_kwargs: Optional[Dict[str, Any]] = None,
    default_kwargs: Optional[Dict[str, Any]] = None,
) -> Dataset:
    """A dataset from its dict (``class`` plus options); `default_kwargs` fill in, `extra_kwargs` override.

    An existing Dataset is returned as is; a callable is called first and its result used.
    """
    if isinstance(kwargs, Dataset):
        return kwargs
    if callable(kwargs):
        return init_dataset(kwargs(), extra_kwargs=extra_kwargs, default_kwargs=default_kwargs)
    opts: Dict[str, Any] = dict(default_kwargs or {})
    opts.update(kwargs)
    opts.update(extra_kwargs or {})
    return _init_dataset(opts)
