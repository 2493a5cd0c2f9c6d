"""What the tools share: the dataset to work on (a dataset dict literal or a config's key) and error handling."""

from __future__ import annotations

import ast
import os
import sys
from typing import Any, Callable, Optional, Tuple

from .. import compat
from ..config import Config, load_config
from ..data.dataset import Dataset
from ..data.registry import init_dataset
from ..errors import ConfigError, UserError


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


def run_tool(action: Callable[[], None]) -> int:
    """Runs a tool's work with the ``returnn.*`` names available (configs may import them); user errors become
    one message on stderr and exit status 1."""
    compat.install()
    try:
        action()
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        compat.uninstall()
    return 0
