"""What a pass over a dataset prints, and when: step lines, the non-finite check, progress with ETA, summaries.

The engine's step loop calls :meth:`LoopReport.after_step` after every step and :meth:`LoopReport.finish` at the end;
device values are read (one host sync) only at these log points, never per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..errors import TrainingError
from ..log import log
from .loss_tracker import LossTracker, Stopwatch


def format_losses(values: Dict[str, float]) -> str:
    """``name value, ...`` sorted by name, 5 significant digits."""
    return ", ".join(f"{name} {value:.5g}" for name, value in sorted(values.items())) or "no losses"


def hms(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def gpu_memory_note(device: str) -> str:
    """``, GPU mem X GiB`` (peak allocated) on a CUDA device, else empty."""
    if not device.startswith("cuda"):
        return ""
    return f", GPU mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


@dataclass
class LoopReport:
    """The reporting of one pass: a training epoch (``name`` "train") or the evaluation of one dataset ("eval dev").

    `stop_on_nonfinite`: a non-finite total loss seen at a log point ends the run with an error naming its step
    (training, unless the updater skips such steps); `first_global_step` numbers the steps in that message.
    """

    name: str
    epoch: int
    num_batches: Optional[int]
    device: str
    step_interval: int
    progress_interval: float
    stop_on_nonfinite: bool = False
    first_global_step: int = 0
    watch: Stopwatch = field(default_factory=Stopwatch)

    def after_step(self, tracker: LossTracker, steps_done: int) -> None:
        """Called after every step; logs every `step_interval` steps."""
        if steps_done % self.step_interval == 0:
            self._log_point(tracker, steps_done, with_progress=True)

    def finish(self, tracker: LossTracker) -> None:
        """The log point at the end of the pass (step lines still buffered, non-finite check)."""
        self._log_point(tracker, tracker.num_steps, with_progress=False)

    def _log_point(self, tracker: LossTracker, steps_done: int, *, with_progress: bool) -> None:
        for step, step_time, values in tracker.pop_step_lines():
            print(
                f"{self.name} epoch {self.epoch} step {step}, step time {step_time:.3f}s, {format_losses(values)}"
                + gpu_memory_note(self.device),
                file=log.v5,
            )
        if self.stop_on_nonfinite:
            count, first = tracker.nonfinite()
            if count:
                raise TrainingError(
                    f"Non-finite training loss in epoch {self.epoch}, step {self.first_global_step + first}; stopped "
                    "without saving this epoch (set stop_on_nonfinite_train_score = False to skip such steps)"
                )
        if with_progress and log.verbose[3] and self.watch.due(self.progress_interval):
            self._print_progress(tracker, steps_done)

    def _print_progress(self, tracker: LossTracker, steps_done: int) -> None:
        elapsed = self.watch.elapsed()
        progress = f"{self.name} epoch {self.epoch}: step {steps_done}"
        if self.num_batches:
            eta = elapsed / steps_done * (self.num_batches - steps_done)
            progress += f"/{self.num_batches} ({100.0 * steps_done / self.num_batches:.0f}%), ETA {hms(eta)}"
        print(f"{progress}, elapsed {hms(elapsed)}, {format_losses(tracker.means())}", file=log.v3)
