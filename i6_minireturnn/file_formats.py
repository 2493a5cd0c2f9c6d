"""RETURNN's on-disk formats that the runtime and the Sisyphus jobs share: the ``learning_rates`` file and the
checkpoint file names ``<model>.NNN.pt`` / ``<model>.NNN.opt.pt``.

Importing this module does not import torch: jobs read the learning_rates file (progress, plots) and name checkpoint
files in the Sisyphus manager, whose Python need not have torch.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

from .atomic_file import write_text_atomic
from .errors import FileFormatError

MODEL_SUFFIX = ".pt"
OPTIMIZER_SUFFIX = ".opt.pt"


def epoch_prefix(model_prefix: str, epoch: int) -> str:
    """``model`` + epoch 3 -> ``model.003`` (no suffix)."""
    return f"{model_prefix}.{epoch:03d}"


def model_path(model_prefix: str, epoch: int) -> str:
    """Path of an epoch's model file, ``<model>.NNN.pt``."""
    return epoch_prefix(model_prefix, epoch) + MODEL_SUFFIX


def optimizer_path(model_prefix: str, epoch: int) -> str:
    """Path of an epoch's optimizer file, ``<model>.NNN.opt.pt``."""
    return epoch_prefix(model_prefix, epoch) + OPTIMIZER_SUFFIX


class EpochData:
    """One epoch's entry of the learning_rates file; the odd argument name is part of the file format."""

    def __init__(self, learningRate: Optional[float] = None, error: Optional[Dict[str, float]] = None):  # noqa: N803
        self.learning_rate = learningRate
        if isinstance(error, float):  # the oldest files store a single score
            error = {"old_format_score": error}
        self.error: Dict[str, float] = dict(error or {})

    def __repr__(self) -> str:
        return f"EpochData(learningRate={format_value(self.learning_rate)}, error={format_value(self.error)})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, EpochData) and (self.learning_rate, self.error) == (other.learning_rate, other.error)


def format_value(value: Any) -> str:
    """Deterministic repr in RETURNN's file style: sorted dicts, one entry per line once they get long."""
    if isinstance(value, dict):
        entries = [f"{format_value(k)}: {format_value(v)}" for k, v in sorted(value.items())]
        if sum(len(e) for e in entries) >= 40:
            return "{\n" + "".join(e + ",\n" for e in entries) + "}"
        return "{" + ", ".join(entries) + "}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value!r}')"
    return repr(value)


def read_learning_rate_file(filename: str) -> Dict[int, EpochData]:
    """Parses a learning_rates file (a Python dict literal of EpochData entries).

    A missing file raises FileNotFoundError; a file that cannot be read (a folder under the name, no permission) or
    content that is no such dict raises :class:`FileFormatError` naming the file.
    """
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise FileFormatError(
            f"Cannot read learning_rate_file {filename}: it is a folder, a file name is expected; remove or rename "
            "the folder, or set learning_rate_file to another file name"
        ) from None
    except OSError as exc:  # without permission, or the filesystem fails: the file is named, no traceback
        raise FileFormatError(f"Cannot read learning_rate_file {filename}: {exc.strerror or exc}") from None
    namespace = {"EpochData": EpochData, "nan": float("nan"), "inf": float("inf"), "__builtins__": {"float": float}}
    try:
        data = eval(text, namespace)  # noqa: S307 -- the file format is a Python literal with EpochData calls
    except Exception as exc:
        raise FileFormatError(f"Cannot read learning_rate_file {filename}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"learning_rate_file {filename} does not hold a dict")
    return data


def learning_rate_file_text(epoch_data: Mapping[int, EpochData]) -> str:
    """The learning_rates file content for `epoch_data`, epochs in order."""
    lines = "".join(f"{epoch}: {epoch_data[epoch]!r},\n" for epoch in sorted(epoch_data))
    return "{\n" + lines + "}\n"


def write_learning_rate_file(filename: str, epoch_data: Mapping[int, EpochData]) -> None:
    """Writes the learning_rates file atomically (a crash leaves the previous complete file)."""
    write_text_atomic(filename, learning_rate_file_text(epoch_data))
