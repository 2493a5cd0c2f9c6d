"""Builds datasets from RETURNN dataset dicts (``{"class": "HDFDataset", ...}``)."""

from __future__ import annotations

import importlib
from typing import Any, Dict, Optional

from ..errors import ConfigError
from ..log import log
from .dataset import Dataset, check_dataset_kwargs

# class name -> module (relative to this package) that defines it; imported on first use
DATASET_MODULES: Dict[str, str] = {
    "DummyDataset": "generating",
    "SyntheticSpeechDataset": "generating",
    "DummyDatasetMultipleSequenceLength": "generating",
    "DummyDatasetMultipleDataKeys": "generating",
    "Task12AXDataset": "generating",
    "CopyTaskDataset": "generating",
    "StaticDataset": "generating",
    "MetaDataset": "meta",
    "ConcatDataset": "meta",
    "CombinedDataset": "meta",
    "ConcatSeqsDataset": "meta",
    "HDFDataset": "hdf",
    "LmDataset": "lm",
    "OggZipDataset": "oggzip",
    "TranslationDataset": "lm",
}


def get_dataset_class(name: str) -> type:
    """The dataset class of a ``class`` entry."""
    if name not in DATASET_MODULES:
        import difflib

        close = difflib.get_close_matches(name, DATASET_MODULES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown dataset class {name!r}.{hint} Known: {', '.join(sorted(DATASET_MODULES))}")
    module = importlib.import_module(f"{__package__}.{DATASET_MODULES[name]}")
    return getattr(module, name)


def init_dataset(opts: Any, *, name: Optional[str] = None) -> Dataset:
    """A dataset from a dict with ``class`` (or an existing Dataset, returned as is)."""
    if isinstance(opts, Dataset):
        return opts
    if not isinstance(opts, dict):
        raise ConfigError(f"Dataset {name!r} must be a dict with a 'class' entry, got {type(opts).__name__}")
    if "class" not in opts:
        raise ConfigError(f"Dataset {name!r} has no 'class' entry: {opts!r}")
    if opts["class"] == "MultiProcDataset":
        return init_dataset(unwrap_multi_proc_dataset(opts, name=name), name=name)
    kwargs = dict(opts)
    cls_name = kwargs.pop("class")
    cls = cls_name if isinstance(cls_name, type) else get_dataset_class(cls_name)
    kwargs.setdefault("name", name)
    check_dataset_kwargs(cls, kwargs, name or cls.__name__)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Dataset {name!r} ({cls.__name__}): {exc}") from None


# MultiProcDataset options that only tune RETURNN's worker processes
_MULTI_PROC_ONLY = ("num_workers", "buffer_size", "sharding_method")


def unwrap_multi_proc_dataset(opts: Dict[str, Any], *, name: Optional[str] = None) -> Dict[str, Any]:
    """The inner ``dataset`` dict of RETURNN's ``MultiProcDataset``: this runtime loads in parallel in its own
    pipeline, so the wrapper adds nothing. Its worker options are ignored; any other option becomes a default of the
    inner dataset (as in RETURNN), so unknown names still fail there."""
    kwargs = dict(opts)
    kwargs.pop("class")
    inner = kwargs.pop("dataset", None)
    if not isinstance(inner, dict):
        raise ConfigError(f"Dataset {name!r} (MultiProcDataset) needs 'dataset', a dataset dict; got {inner!r}")
    ignored = {key: kwargs.pop(key) for key in _MULTI_PROC_ONLY if key in kwargs}
    inner = dict(inner)
    for key, value in kwargs.items():
        inner.setdefault(key, value)
    print(
        f"Dataset {name!r}: MultiProcDataset uses its inner dataset directly (ignored: {ignored}); "
        "loading runs in this runtime's data pipeline",
        file=log.v4,
    )
    return inner
