"""Task ``compute_priors``: the average posterior over the frames of a dataset, as RETURNN's prior file.

RETURNN writes the prior to ``output_file`` in +log space, one value per line (``numpy.savetxt``); i6_core's
ReturnnComputePriorJobV2 reads it with ``numpy.loadtxt`` and converts it to RASR's XML. With the Mini-RETURNN API
the model's posteriors are only known to ``forward_step``, so the step hands them over the way the prior steps of
i6 setups already do: it adds the posteriors (probability space) summed over the batch's frames to
``run_ctx.sum_probs`` and the number of frames to ``run_ctx.sum_frames``. Hooks that write the file themselves
(``forward_finish_hook`` writing ``output_file``) take precedence.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np
import torch

from ..atomic_file import atomic_path
from ..errors import TrainingError
from ..log import log
from .run_ctx import RunCtx

FileStamp = Optional[Tuple[int, int, int]]


def init_prior_sums(run_ctx: RunCtx) -> None:
    """The accumulators the step adds to (an init hook of the config may set them again, to the same values)."""
    run_ctx.sum_probs = None
    run_ctx.sum_frames = 0


def file_stamp(path: str) -> FileStamp:
    """What identifies the file's current content (None: no file), to tell whether a hook (re)wrote it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def finish_priors(run_ctx: RunCtx, output_file: str, stamp_before: FileStamp) -> None:
    """Writes the prior from the run context's sums, unless a hook wrote ``output_file`` during the run."""
    stamp_after = file_stamp(output_file)
    if stamp_after is not None and stamp_after != stamp_before:
        print(f"Prior file {output_file} was written by forward_finish_hook", file=log.v2)
        return
    sum_probs = getattr(run_ctx, "sum_probs", None)
    if sum_probs is None:
        raise TrainingError(
            "Task compute_priors: forward_step must add the posteriors of each batch, summed over its frames "
            "(probability space, shape [num_classes]), to run_ctx.sum_probs and the number of frames to "
            f"run_ctx.sum_frames; or forward_finish_hook must write output_file ({output_file!r}) itself"
        )
    write_prior_file(output_file, sum_probs, getattr(run_ctx, "sum_frames", 0))


def write_prior_file(path: str, sum_probs: Any, sum_frames: Any) -> np.ndarray:
    """log(sum_probs / sum_frames) to `path` as RETURNN writes it; returns the average posterior."""
    probs = torch.as_tensor(sum_probs).detach().to("cpu", torch.float64).numpy()
    frames = float(torch.as_tensor(sum_frames).detach().to("cpu", torch.float64))
    if probs.ndim != 1:
        raise TrainingError(
            f"Task compute_priors: run_ctx.sum_probs must have shape [num_classes] (summed over batch and time), "
            f"got shape {tuple(probs.shape)}"
        )
    if frames <= 0:
        raise TrainingError(f"Task compute_priors: run_ctx.sum_frames must count the frames, got {frames}")
    average = probs / frames
    total = float(average.sum())
    if not np.isfinite(total):
        raise TrainingError(f"Task compute_priors: the prior is not finite (sum {total})")
    print(f"Prior sum in std-space (should be close to 1.0): {total:.6f}", file=log.v2)
    if abs(total - 1.0) > 1e-3:
        # a sum far from 1 means log-probabilities were added, or padded frames were counted or left out
        print(
            "WARNING: the prior does not sum to 1: run_ctx.sum_probs should hold probabilities summed over the "
            "frames that run_ctx.sum_frames counts (no padding)",
            file=log.v1,
        )
    with np.errstate(divide="ignore"):  # a class never seen gets log(0) = -inf, as in RETURNN
        log_average = np.log(average)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, log_average, delimiter=" ")
    print(f"Saved prior ({len(average)} classes) in {path} in +log space", file=log.v2)
    return average
