"""Where the tools get their dataset: a dataset dict literal, or a dataset key of a config file."""

from __future__ import annotations

import ast
import os
from typing import Any, Optional, Tuple

from ..__main__ import load_config
from ..config import Config
from ..data.dataset import Dataset
from ..data.registry import init_dataset
from ..errors import ConfigError


def load_dataset(source: str, key: str = "train") -> Tuple[Dataset, Optional[Config]]:
    """(dataset, config or None) from a dict literal or from the `key` entry of a config file."""
    if source.lstrip().startswith("{") and not os.path.isfile(source):
        try:
            opts: Any = ast.literal_eval(source)
        except (ValueError, SyntaxError) as exc:
            raise ConfigError(f"Cannot parse the dataset dict {source!r}: {exc}") from None
        return init_dataset(opts, name=key), None
    config = load_config([source], [])
    if not config.has(key):
        raise ConfigError(f"Config file {source} has no dataset {key!r}")
    return init_dataset(config.typed_value(key), name=key), config
