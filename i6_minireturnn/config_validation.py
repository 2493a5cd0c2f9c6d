"""Checks every config key up front, before anything is built: each key's rule from config_schema.py (type and
range, with the key, the value and its source named), and the keys that ask for another RETURNN backend.

The code that reads a key would otherwise accept a value it cannot use: an empty ``learning_rates`` would train at
learning rate 1.0, ``max_seqs = 0`` or a negative ``gradient_clip`` would run, an optimizer argument of the wrong
type would fail inside torch. A bad value stops the run within a second with a message naming the key, the value,
what is expected and where the value came from (config file or command line).

Each rule accepts exactly what the reading code accepts (e.g. numeric strings of line-based configs, integral
floats where ``config.int`` takes them, ``0``/``1`` for bools), so every config that worked before still works.
Unset keys and keys set to ``None`` mean "default" and are not checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config_rules import Mismatch
from .config_schema import SCHEMA
from .engine.lr_schedule import step_schedule_from_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config


def validate_config(config: Config) -> None:
    """Raises a :class:`ConfigError` for the first key whose value the runtime cannot use, naming the key."""
    for key in SCHEMA.values():
        value = config.peek(key.name)
        if value is None or key.rule is None:
            continue  # unset: the declared default applies; rule None: checked where it is read (the doc says)
        try:
            key.rule(value)
        except Mismatch as mismatch:
            raise _error(config, key.name, mismatch) from None
    if config.value("task") == "train":
        step_schedule_from_config(config)  # the step-schedule keys together (lengths, combinations)


def _error(config: Config, key: str, mismatch: Mismatch) -> ConfigError:
    entry = f" entry {mismatch.entry}" if mismatch.entry else ""
    origin = config.origin(key)
    if mismatch.note is not None:
        return ConfigError(f"Config key {key!r}{entry} {mismatch.note} ({origin})")
    value = mismatch.value
    return ConfigError(
        f"Config key {key!r}{entry} must be {mismatch.expected}, got {value!r} ({type(value).__name__}) {origin}"
    )


_SUPPORTED_BACKENDS = ("torch",)


def check_unsupported_keys(config: Config) -> None:
    """Raises for keys that ask for something this runtime does not do (rather than silently doing less)."""
    backend = config.value("backend")
    if backend is not None and backend not in _SUPPORTED_BACKENDS:
        raise ConfigError(
            f"backend = {backend!r} {config.origin('backend')}: this runtime runs PyTorch (Mini-RETURNN) configs only; "
            "set backend = 'torch' (i6_core's ReturnnTrainingJob needs it set)"
        )
    if config.bool("use_tensorflow"):
        raise ConfigError(
            f"use_tensorflow = True {config.origin('use_tensorflow')}: "
            "this runtime runs PyTorch (Mini-RETURNN) configs only"
        )
