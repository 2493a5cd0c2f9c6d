"""``returnn.torch.util.diagnose_gpu``: reports on the GPUs torch sees, for configs that print them at start."""

from __future__ import annotations

import os
import sys
from typing import List, Optional, TextIO, Union

import torch

__all__ = ["print_available_devices", "print_using_cuda_device_report", "diagnose_no_gpu"]


def print_available_devices(*, file: Optional[TextIO] = None) -> None:
    """One line per CUDA device torch sees (name, memory, compute capability), or why there is none."""
    file = file or sys.stdout
    if not torch.cuda.is_available():
        print("CUDA not available.", file=file)
        for line in diagnose_no_gpu():
            print(f"  {line}", file=file)
        return
    count = torch.cuda.device_count()
    print(f"Available CUDA devices: {count}", file=file)
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        print(
            f"  {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
            f"compute capability {props.major}.{props.minor}",
            file=file,
        )


def print_using_cuda_device_report(dev: Union[str, torch.device], *, file: Optional[TextIO] = None) -> None:
    """Names the device the run uses and what torch was built with."""
    file = file or sys.stdout
    dev = torch.device(dev)
    if dev.type != "cuda":
        print(f"Using device {dev}.", file=file)
        return
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    print(
        f"Using CUDA device {index}: {torch.cuda.get_device_name(index)} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
        file=file,
    )


def diagnose_no_gpu() -> List[str]:
    """Likely reasons why torch sees no GPU, one per line (an empty list where a GPU is there)."""
    if torch.cuda.is_available():
        return []
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} was built without CUDA (a CPU-only build)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        reasons.append(f"CUDA_VISIBLE_DEVICES={visible!r} hides all GPUs")
    if not os.path.exists("/dev/nvidia0") and sys.platform.startswith("linux"):
        reasons.append("no /dev/nvidia0: no NVIDIA GPU or driver on this machine")
    return reasons or ["torch.cuda.is_available() is False for an unknown reason"]
