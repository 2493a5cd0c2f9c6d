"""What a pass over a dataset prints, and when: step lines, the non-finite check, progress with ETA, summaries,
TensorBoard scalars.

The engine's step loop calls :meth:`LoopReport.after_step` after every step and :meth:`LoopReport.finish` at the end;
device values are read (one host sync) only at log points (every ``log_step_interval`` steps) and when a progress
line is due (every ``log_progress_interval`` seconds, checked every step on the host clock), never otherwise.
:class:`RunReporting` holds what all passes of a run share: the intervals, the epochs' start times (for the ETA of the
whole training), the progress file and the TensorBoard writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch

from ..atomic_file import write_text_atomic
from ..config_schema import default_of
from ..errors import TrainingError, UserError
from ..log import log
from .loss_tracker import LossTracker, RankGroup, Stopwatch, Totals
from .tensorboard import TensorBoardWriter

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_STEP_INTERVAL = default_of("log_step_interval")
DEFAULT_PROGRESS_INTERVAL = default_of("log_progress_interval")


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
    return f", GPU mem {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


@dataclass
class RunReporting:
    """What the passes of one run share. Made once per run (:meth:`from_config`); with several processes only rank 0
    gets the progress file and the TensorBoard writer (the other ranks print errors only, see the engine).

    `progress_file`: a file that holds the newest progress line (replaced atomically), for a job's status display.
    """

    step_interval: int = DEFAULT_STEP_INTERVAL
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    progress_file: Optional[str] = None
    tensorboard: Optional[TensorBoardWriter] = None
    epoch_starts: Dict[int, float] = field(default_factory=dict)  # monotonic start of each training pass of this run

    @classmethod
    def from_config(cls, config: Config, *, is_main: bool = True) -> RunReporting:
        """``log_step_interval``, ``log_progress_interval``, ``log_progress_file``, ``use_tensorboard``. Every rank
        reads and checks them (a config error stops all ranks alike, none is left waiting for rank 0)."""
        progress_file = config.value("log_progress_file")
        tensorboard = TensorBoardWriter.from_config(config)
        return cls(
            step_interval=max(1, config.int("log_step_interval")),
            progress_interval=config.float("log_progress_interval"),
            progress_file=progress_file if is_main else None,
            tensorboard=tensorboard if is_main else None,
        )

    def train_pass_started(self, epoch: int, global_step: int) -> None:
        """Notes the start of a training epoch (its time, for the ETA; its step, for TensorBoard after a restart)."""
        self.epoch_starts.setdefault(epoch, time.monotonic())
        if self.tensorboard is not None:
            self.tensorboard.start(global_step)

    def seconds_per_epoch(self) -> Optional[float]:
        """The mean wall time from one training epoch's start to the next one's (training, storing, evaluating) in
        this run; None before a second epoch started."""
        if len(self.epoch_starts) < 2:
            return None
        starts = sorted(self.epoch_starts.values())
        return (starts[-1] - starts[0]) / (len(starts) - 1)

    def write_progress(self, line: str) -> None:
        """Replaces the progress file's content with `line`; a failed write only warns (it is a status display)."""
        if not self.progress_file:
            return
        try:
            write_text_atomic(self.progress_file, line + "\n")
        except (OSError, UserError) as exc:  # UserError: a full disk, a folder in the way
            print(f"WARNING: cannot write the progress file {self.progress_file}: {exc}", file=log.v2)
            self.progress_file = None

    def close(self) -> None:
        """Closes the TensorBoard event file (the run's end)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


@dataclass
class LoopReport:
    """The reporting of one pass: a training epoch (``name`` "train") or the evaluation of one dataset ("eval dev").

    `global_step`: the global training step when the pass starts (step numbers of training messages, TensorBoard's
    step axis); `final_epoch`: the last epoch of the training (for its ETA); `learning_rate`: the epoch's rate, or a
    function that gives the current step's rate (where a step schedule changes it per step), read at log points.
    `stop_on_nonfinite`: a non-finite total loss seen at a log point ends the run with an error naming its step and
    the sequence tags of its batch (training, unless the updater skips such steps: then a warning names them).
    With several ranks, the progress line shows the totals over all ranks where it falls on a log point at which the
    ranks reduce them, else this process' own (rank 0: the other ranks print no progress); it never makes the ranks
    communicate, since when it is due depends on each process' clock.
    """

    name: str
    epoch: int
    num_batches: Optional[int]
    device: str
    run: RunReporting = field(default_factory=RunReporting)
    global_step: int = 0
    final_epoch: Optional[int] = None
    learning_rate: Union[float, Callable[[], float], None] = None
    stop_on_nonfinite: bool = False
    ranks: Optional[RankGroup] = None  # several processes: the totals are over all ranks
    reduce_at_log_points: bool = False  # every rank does the same steps (training), so all reach every log point
    watch: Stopwatch = field(default_factory=Stopwatch)
    data_wait: float = 0.0  # seconds the loop waited for batches
    # TensorBoard: (steps, elapsed, data_wait) and the loss sums at the last write
    _last_write: Tuple[int, float, float] = field(default=(0, 0.0, 0.0), init=False, repr=False)
    _last_sums: Dict[str, Tuple[float, float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._training = self.name == "train"
        if self._training:
            self.run.train_pass_started(self.epoch, self.global_step)

    @property
    def first_global_step(self) -> int:
        """The global step of the pass' first step in messages and step lines (0 for an evaluation)."""
        return self.global_step if self._training else 0

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
        """Called after every step: a log point every `step_interval` steps, else a progress line when one is due
        (not at the pass' last step: its summary follows)."""
        if steps_done % self.run.step_interval == 0:
            self._log_point(tracker, steps_done, final=False)
        elif steps_done != self.num_batches and self._progress_due():
            self._progress(tracker.totals(), steps_done, reduced=False)

    def finish(self, tracker: LossTracker) -> Totals:
        """The log point at the end of the pass; returns the pass's totals (over all ranks)."""
        totals = self._log_point(tracker, tracker.num_steps, final=True)
        if self.run.tensorboard is not None:
            self._write_pass_scalars(self.run.tensorboard, totals)
        return totals

    def _progress_due(self) -> bool:
        """Whether a progress line is due: host clock only; false on ranks other than 0 (they print no progress)."""
        if log.verbosity < 3 and not self.run.progress_file:
            return False
        return self.watch.due(self.run.progress_interval)

    def _log_point(self, tracker: LossTracker, steps_done: int, *, final: bool) -> Optional[Totals]:
        for step, step_time, values in tracker.pop_step_lines():
            print(
                f"{self.name} epoch {self.epoch} step {step}, step time {step_time:.3f}s, {format_losses(values)}"
                + gpu_memory_note(self.device),
                file=log.v5,
            )
        if tracker.skip_nonfinite:
            self._warn_skipped_steps(tracker)
        progress_due = not final and steps_done != self.num_batches and self._progress_due()
        # Several ranks read their totals together (a collective) at the end, and at every log point of a pass with
        # the same steps on every rank; the decision must not depend on anything that differs between ranks. The
        # progress and TensorBoard decisions do (clock, rank 0's writer): they only add a read of this process' own
        # totals where no collective happens anyway.
        reduce = self.ranks if final or self.reduce_at_log_points else None
        tensorboard_due = self._tensorboard_due(steps_done, final)
        if not (final or progress_due or tensorboard_due or self.stop_on_nonfinite or reduce is not None):
            tracker.release_tags()
            return None
        totals = tracker.totals(reduce)
        if self.stop_on_nonfinite and totals.num_nonfinite:
            step = self.first_global_step + totals.first_nonfinite
            batch = _batch_note(tracker.nonfinite_batch_tags(totals.first_nonfinite), other_ranks=reduce is not None)
            raise TrainingError(
                f"Non-finite training loss in epoch {self.epoch}, step {step} ({batch}); stopped without saving this "
                "epoch (set stop_on_nonfinite_train_score = False to skip such steps)"
            )
        tracker.release_tags()  # the steps so far were finite (or are skipped and named): their tags are not needed
        if tensorboard_due:
            self._write_step_scalars(self.run.tensorboard, totals, steps_done)
        if progress_due:
            self._progress(totals, steps_done, reduced=reduce is not None)
        return totals

    def _warn_skipped_steps(self, tracker: LossTracker) -> None:
        """A warning per step since the last log point whose non-finite loss the updater skipped, naming its batch."""
        for step, tags in tracker.pop_nonfinite_batches():
            print(
                f"WARNING: {self.name} epoch {self.epoch} step {self.first_global_step + step}: non-finite loss, "
                f"step skipped ({_batch_note(tags, other_ranks=False)})",
                file=log.v1,  # v1: ranks other than 0 print it too (their batches are their own)
            )

    # ---- progress ------------------------------------------------------------------------------------------------

    def _progress(self, totals: Totals, steps_done: int, *, reduced: bool) -> None:
        """Prints the progress line (log level 3) and puts its short form into the progress file."""
        elapsed = self.watch.elapsed()
        epochs = f"{self.epoch}/{self.final_epoch}" if self._training and self.final_epoch else f"{self.epoch}"
        where = f"{self.name} epoch {epochs}, step {steps_done}"
        status = f"{self.name} epoch {epochs}"
        if self.num_batches:
            percent = f"{100.0 * steps_done / self.num_batches:.0f}%"
            where += f"/{self.num_batches} ({percent})"
            status += f" {percent}"
        eta = self._eta(elapsed, steps_done)
        if eta:
            where += f", ETA {eta}"
            status += f", ETA {eta}"
        line = f"{where}, elapsed {hms(elapsed)}"
        line += f", {steps_done / elapsed if elapsed > 0 else 0.0:.3g} steps/s, {format_losses(totals.means)}"
        if self.ranks is not None and not reduced:
            line += " (losses of rank 0)"
        print(line, file=log.v3)
        self.run.write_progress(status)

    def _eta(self, elapsed: float, steps_done: int) -> str:
        """``H:MM:SS`` left of this pass and, in training, `` (training H:MM:SS)``: the remaining epochs at the mean
        epoch time of this run so far, or, before a second epoch, at this epoch's projected training time. Empty where
        unknown (a streamed first epoch)."""
        pass_total = elapsed / steps_done * self.num_batches if self.num_batches and steps_done else None
        per_epoch = self.run.seconds_per_epoch() if self._training else None
        if pass_total is None and per_epoch is not None:  # a streamed epoch: its length only from earlier epochs
            pass_total = max(per_epoch, elapsed)
        if pass_total is None:
            return ""
        eta = hms(pass_total - elapsed)
        if self._training and self.final_epoch and self.final_epoch > self.epoch:
            per_epoch = per_epoch if per_epoch is not None else pass_total
            eta += f" (training {hms(pass_total - elapsed + (self.final_epoch - self.epoch) * per_epoch)})"
        return eta

    # ---- TensorBoard ---------------------------------------------------------------------------------------------

    def _tensorboard_due(self, steps_done: int, final: bool) -> bool:
        """Training log points where the writer's interval has passed since its last write (and the pass' end)."""
        writer = self.run.tensorboard
        if writer is None or not self._training or steps_done <= self._last_write[0]:
            return False
        return final or steps_done - self._last_write[0] >= (writer.every_n_train_steps or 1)

    def _write_step_scalars(self, writer: TensorBoardWriter, totals: Totals, steps_done: int) -> None:
        """The means since the last write, learning rate, steps per second, computing share and GPU memory."""
        last_steps, last_elapsed, last_wait = self._last_write
        elapsed = self.watch.elapsed()
        values = {}
        for name, (loss, norm) in totals.sums.items():
            last_loss, last_norm = self._last_sums.get(name, (0.0, 0.0))
            if norm > last_norm:
                values[name] = (loss - last_loss) / (norm - last_norm)
        self._last_sums = dict(totals.sums)
        seconds = elapsed - last_elapsed
        if seconds > 0:
            values["steps_per_second"] = (steps_done - last_steps) / seconds
            values["computing_share"] = 1.0 - (self.data_wait - last_wait) / seconds
        if self.learning_rate is not None:
            values["learning_rate"] = self._current_learning_rate()
        if self.device.startswith("cuda"):
            values["gpu_memory_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        writer.scalars("train", values, self.global_step + steps_done)
        self._last_write = (steps_done, elapsed, self.data_wait)

    def _current_learning_rate(self) -> float:
        return float(self.learning_rate() if callable(self.learning_rate) else self.learning_rate)

    def _write_pass_scalars(self, writer: TensorBoardWriter, totals: Totals) -> None:
        """The pass' scores on the epoch axis (names as in the learning_rates file) and, for an evaluation, on the
        step axis as ``<dataset>/<loss>``."""
        if self._training:
            epoch_values = dict(totals.means)
            epoch_values["computing_share"] = self.busy_share()
            epoch_values["train_seconds"] = self.watch.elapsed()
            if self.learning_rate is not None:
                epoch_values["learning_rate"] = self._current_learning_rate()
        else:
            dataset = self.name.split(" ", 1)[-1]
            writer.scalars(dataset, totals.means, self.global_step)
            epoch_values = {f"{dataset}_loss_{loss}": value for loss, value in totals.means.items()}
        writer.scalars("epoch", epoch_values, self.epoch)
        writer.flush()


MAX_TAGS_NAMED = 20  # a message names at most this many tags of a batch (one readable line)


def _batch_note(tags: Optional[Sequence[str]], *, other_ranks: bool) -> str:
    """``batch of sequences 'a', 'b'`` (each tag once: chunks of a sequence share its tag); or why none is named."""
    if tags is None:
        return "on another rank; its message names the batch" if other_ranks else "its batch has no seq_tag"
    unique = list(dict.fromkeys(tags))
    named = ", ".join(repr(tag) for tag in unique[:MAX_TAGS_NAMED])
    more = f" and {len(unique) - MAX_TAGS_NAMED} more" if len(unique) > MAX_TAGS_NAMED else ""
    return f"batch of sequences {named}{more}"
