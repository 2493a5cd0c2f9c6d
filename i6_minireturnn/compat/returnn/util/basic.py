"""``returnn.util.basic``: the helpers Mini-RETURNN model, hook and engine files import from it.

``cf`` is the i6 cache manager (decoder files call ``cf(arpa_lm)`` before loading an LM); here it goes through
this runtime's cache manager, so it returns the path unchanged where no ``cf`` command exists. ``NumbersDict``
is the same class as ``returnn.util.NumbersDict``. The rest are small helpers that engine files and tools use.
"""

from __future__ import annotations

import getpass
import os
import re
from typing import Any, Iterable, Optional, Union

from i6_minireturnn.cache_manager import cached_path
from i6_minireturnn.compat.numbers_dict import NumbersDict

__all__ = [
    "cf",
    "NumbersDict",
    "NotSpecified",
    "OptionalNotImplementedError",
    "hms",
    "hms_fraction",
    "human_size",
    "human_bytes_size",
    "prod",
    "get_login_username",
    "model_epoch_from_filename",
]


def cf(filename: str) -> str:
    """The node-local copy of `filename` made by the cluster's cache manager, or `filename` where there is none."""
    return cached_path(os.fspath(filename))


class NotSpecified:
    """Marker for "argument not given" where None is a meaningful value; compare with ``is NotSpecified``."""


class OptionalNotImplementedError(NotImplementedError):
    """A method a subclass may leave out; callers catch this to fall back."""


def hms(seconds: Union[int, float]) -> str:
    """``3723`` -> ``"01:02:03"`` (hours, minutes, whole seconds)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def hms_fraction(seconds: Union[int, float], decimals: int = 4) -> str:
    """Like :func:`hms`, with `decimals` digits after the seconds' point."""
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    width = 3 + decimals if decimals > 0 else 2
    return f"{hours:02d}:{minutes:02d}:{secs:0{width}.{decimals}f}"


_SIZE_PREFIXES = ("", "K", "M", "G", "T", "P", "E")


def human_size(n: Union[int, float], factor: int = 1000, frac: float = 0.8, prec: int = 1) -> str:
    """``1234567`` -> ``"1.2M"``: the largest prefix where the value is still at least `frac` of a unit."""
    prefix = 0
    value = float(n)
    while abs(value) >= factor * frac and prefix < len(_SIZE_PREFIXES) - 1:
        value /= factor
        prefix += 1
    if prefix == 0:
        return str(n)
    return f"{value:.{prec}f}{_SIZE_PREFIXES[prefix]}"


def human_bytes_size(n: Union[int, float], factor: int = 1024, frac: float = 0.8, prec: int = 1) -> str:
    """``2048`` -> ``"2.0KB"`` (binary prefixes by default)."""
    return human_size(n, factor=factor, frac=frac, prec=prec) + "B"


def prod(values: Iterable[Any]) -> Any:
    """Product of `values` (1 for none); works for ints, floats and tensors alike."""
    result: Any = 1
    for value in values:
        result = result * value
    return result


def get_login_username() -> str:
    """The name of the user running this process."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


_EPOCH_IN_FILENAME = re.compile(r"\.(?:pretrain\.)?(\d+)(?:\.pt|\.opt\.pt|\.index|\.meta)?$")


def model_epoch_from_filename(filename: str) -> Optional[int]:
    """The epoch of a checkpoint name such as ``out/model.012.pt`` or ``model.012`` (None if it has none)."""
    match = _EPOCH_IN_FILENAME.search(os.fspath(filename))
    return int(match.group(1)) if match else None
