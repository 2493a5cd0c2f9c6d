"""The run's device, mixed precision (``torch_amp_options``) and seeding."""

from __future__ import annotations

import contextlib
import random
from typing import Optional

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError


def resolve_device(config: Config) -> str:
    """``device`` = cpu | cuda | cuda:N | gpu (alias of cuda); default: cuda where available, else cpu."""
    device = config.value("device")
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "gpu":
        device = "cuda"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {config.value('device')!r} requested {config.origin('device')}, but no CUDA GPU is available "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'}). Use device = 'cpu'."
            )
        return device
    if device != "cpu":
        raise ConfigError(f"Unknown device {device!r} {config.origin('device')}; use 'cpu', 'cuda' or 'gpu'")
    return device


def seed_everything(seed: int) -> None:
    """Seeds torch, numpy and Python's random module."""
    seed %= 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def read_amp_dtype(config: Config) -> Optional[torch.dtype]:
    """The autocast dtype of ``torch_amp_options`` (``"bfloat16"``, ``{"dtype": "float16"}``), None without AMP."""
    options = config.typed_value("torch_amp_options")
    if options is None:
        return None
    dtype = options.get("dtype") if isinstance(options, dict) else options
    if dtype not in ("float16", "bfloat16"):
        raise ConfigError(f"torch_amp_options dtype must be 'float16' or 'bfloat16', got {dtype!r}")
    return getattr(torch, dtype)


def autocast(device: str, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """torch.autocast on the device's type with `dtype`; no-op without AMP."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
