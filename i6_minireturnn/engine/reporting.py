"""What a pass over a dataset prints, and when: step lines, the non-finite check, progress with ETA, summaries.

The engine's step loop calls :meth:`LoopReport.after_step` after every step and :meth:`LoopReport.finish` at the end;
device values are read (one host sync) only at these log points, never per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, Optional

import torch

from ..errors import TrainingError
from ..log import log
from .loss_tracker import LossTracker, RankGroup, Stopwatch, Totals


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
    The progress line shows the totals of this process between the log points where the ranks reduce them.
    """

    name: str
    epoch: int
    num_batches: Optional[int]
    device: str
    step_interval: int
    progress_interval: float
    stop_on_nonfinite: bool = False
    first_global_step: int = 0
    ranks: Optional[RankGroup] = None  # several processes: the totals are over all ranks
    reduce_at_log_points: bool = False  # every rank does the same steps (training), so all reach every log point
    watch: Stopwatch = field(default_factory=Stopwatch)
    data_wait: float = 0.0  # seconds the loop waited for batches

    def timed(self, batches: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """The batches, adding the time the loop waits for each one to :attr:`data_wait` (host time, no device sync)."""
        iterator = iter(batches)
        while True:
            start = time.monotonic()
            batch = next(iterator, None)
            self.data_wait += time.monotonic() - start
            if batch is None:
                return
            yield batch

    def busy_share(self) -> float:
        """The share of the pass's wall time the loop did not wait for data (1.0: the input pipeline kept up)."""
        elapsed = self.watch.elapsed()
        return 1.0 - self.data_wait / elapsed if elapsed > 0 else 1.0

    def after_step(self, tracker: LossTracker, steps_done: int) -> None:
        """Called after every step; logs every `step_interval` steps."""
        if steps_done % self.step_interval == 0:
            self._log_point(tracker, steps_done, final=False)

    def finish(self, tracker: LossTracker) -> Totals:
        """The log point at the end of the pass; returns the pass's totals (over all ranks)."""
        return self._log_point(tracker, tracker.num_steps, final=True)

    def _log_point(self, tracker: LossTracker, steps_done: int, *, final: bool) -> Optional[Totals]:
        for step, step_time, values in tracker.pop_step_lines():
            print(
                f"{self.name} epoch {self.epoch} step {step}, step time {step_time:.3f}s, {format_losses(values)}"
                + gpu_memory_note(self.device),
                file=log.v5,
            )
        progress_due = not final and log.verbose[3] and self.watch.due(self.progress_interval)
        # Several ranks read their totals together (a collective) at the end, and at every log point of a pass with
        # the same steps on every rank; the decision must not depend on anything that differs between ranks.
        reduce = self.ranks if final or self.reduce_at_log_points else None
        if not (final or progress_due or self.stop_on_nonfinite or reduce is not None):
            return None
        totals = tracker.totals(reduce)
        if self.stop_on_nonfinite and totals.num_nonfinite:
            step = self.first_global_step + totals.first_nonfinite
            raise TrainingError(
                f"Non-finite training loss in epoch {self.epoch}, step {step}; stopped without saving this epoch "
                "(set stop_on_nonfinite_train_score = False to skip such steps)"
            )
        if progress_due:
            self._print_progress(totals, steps_done)
        return totals

    def _print_progress(self, totals: Totals, steps_done: int) -> None:
        elapsed = self.watch.elapsed()
        progress = f"{self.name} epoch {self.epoch}: step {steps_done}"
        if self.num_batches:
            eta = elapsed / steps_done * (self.num_batches - steps_done)
            progress += f"/{self.num_batches} ({100.0 * steps_done / self.num_batches:.0f}%), ETA {hms(eta)}"
        print(f"{progress}, elapsed {hms(elapsed)}, {format_losses(totals.means)}", file=log.v3)
