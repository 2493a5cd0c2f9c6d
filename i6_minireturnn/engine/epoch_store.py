"""The epoch files of a model prefix, with one owner: which stored epoch is complete, which checkpoint each task loads,
storing an epoch, and deleting what is no longer needed.

An epoch is stored as one unit, in this order, each file written atomically (temp file, fsync, rename): the
optimizer state (``<model>.NNN.opt.pt``), the model (``<model>.NNN.pt``: parameters, epoch, global step), and last
the epoch's entry in the learning_rates file with its train scores, which marks the epoch complete. Random number
generators are seeded from (random_seed, epoch) at every epoch start, so they need no state of their own. A run
stopped anywhere in that sequence leaves either the previous complete epoch or the new one, never a mix:

- a temp file: removed at the next start;
- an optimizer file without its model file: not an epoch (the retrained epoch writes it again);
- a model file whose learning_rates entry is missing: not complete; training trains the epoch again, and eval,
  forward and compute_priors load the newest complete epoch instead (with a note);
- a complete epoch without its evaluation: evaluated at the next start, before the next learning rate is decided
  (:meth:`EpochStore.datasets_missing_eval`).

Training creates the learning_rates file before it stores its first epoch. Without a learning_rates file (none
configured, or checkpoints copied without theirs) the model file is the last one written and marks the epoch.

The files are written by one writer thread while training goes on (``store_checkpoints_in_background``, default
True; :mod:`.background_store`): its jobs run one after another in the order submitted, and after a failed write
none runs, so the learning_rates entry is never written without the checkpoint before it.

Every task decides the checkpoint to load here, with the same rule: an explicit ``load_epoch`` (``start_epoch``)
first, else the newest complete epoch that reads back (an unreadable one is reported and skipped), else the files
that initialise a model (``import_model_train_epoch1`` or ``load`` for training; ``load`` for the other tasks, where
it comes first as in RETURNN). Mini-RETURNN's engine names (``get_epoch_model``, ``_load_optimizer``,
``save_model``, ``_save_optimizer``) map onto these methods (engine/mini_returnn_names.py, engine/engine.py).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

import torch

from ..atomic_file import write_text_atomic
from ..errors import CheckpointError, ConfigError
from ..file_formats import read_learning_rate_file
from ..log import log
from . import checkpoints
from .background_store import BackgroundStore

if TYPE_CHECKING:
    from ..config import Config
    from .learning_rate_control import LearningRateControl
    from .updater import Updater


@dataclass
class LoadedCheckpoint:
    """A checkpoint read back: its epoch (None: a given file, whose own entry says), its path and its content."""

    epoch: Optional[int]
    path: str
    state: Dict[str, Any]


@dataclass
class TrainStart:
    """Where task train begins: the first epoch to train; the checkpoint it continues from or is initialised with
    (None: a fresh model), by which config key (``None`` for a stored epoch of this training); and the optimizer
    state to restore (None: a fresh optimizer), read already so that a damaged file stops the run before any work."""

    epoch: int
    checkpoint: Optional[LoadedCheckpoint]
    initialised_by: Optional[str] = None
    optimizer_state: Optional[Dict[str, Any]] = None
    optimizer_file: Optional[str] = None


class EpochStore:
    """The epoch files of ``model`` (and the ``learning_rate_file`` that marks them complete) for one run.

    `is_main`: this process writes (rank 0 of several); the others read only.
    """

    def __init__(self, config: Config, *, model_prefix: Optional[str], is_main: bool = True):
        self.model_prefix = model_prefix
        self.learning_rate_file: Optional[str] = config.value("learning_rate_file")
        self._config = config
        self._is_main = is_main
        self._writer = BackgroundStore(in_background=config.bool("store_checkpoints_in_background"))

    # ---- which epochs are stored -------------------------------------------------------------------------------

    def stored_epochs(self) -> Dict[int, str]:
        """{epoch: model file} of every stored model file, oldest first (complete or not)."""
        return checkpoints.existing_epochs(self.model_prefix) if self.model_prefix else {}

    def complete_epochs(self, *, report: bool = True) -> List[int]:
        """Stored epochs, newest first, that count as complete; where the newest do not, `report` says so."""
        stored = sorted(self.stored_epochs(), reverse=True)
        marks = self._completion_marks()
        complete = [epoch for epoch in stored if marks is None or marks.get(epoch)]
        skipped = [epoch for epoch in stored if not complete or epoch > complete[0]]
        if skipped and report:
            print(
                f"Epoch {skipped[0]}: the model was stored, but the run stopped before its learning_rates entry was "
                f"written ({self.learning_rate_file}); it does not count as stored",
                file=log.v2,
            )
        return complete

    def _completion_marks(self) -> Optional[Dict[int, bool]]:
        """{epoch: whether its learning_rates entry has scores}; None where no learning_rates file marks epochs.

        Only a learning_rates file that training has written marks epochs (training creates it before it stores any
        epoch, see :meth:`begin_epoch`); without one (no file configured, or checkpoints copied without it) the model
        file does."""
        if not self.learning_rate_file or not os.path.exists(self.learning_rate_file):
            return None
        return {epoch: bool(data.error) for epoch, data in read_learning_rate_file(self.learning_rate_file).items()}

    def kept_epochs_text(self) -> str:
        """What a stopped training leaves, for its last message (after the files being written are complete)."""
        self.flush()
        stored = self.complete_epochs(report=False)
        if not stored:
            return "no epoch is stored yet; a restart begins with epoch 1"
        return f"kept the stored epochs up to {stored[0]}; a restart continues with epoch {stored[0] + 1}"

    def datasets_missing_eval(
        self, lr_control: LearningRateControl, stored_epoch: int, eval_names: Iterable[str]
    ) -> List[str]:
        """The eval datasets that `stored_epoch` has no scores of yet (the run stopped after storing it)."""
        if stored_epoch < 1 or not lr_control.filename:
            return []
        errors = lr_control.get_epoch_error_dict(stored_epoch)
        return [name for name in eval_names if not any(key.startswith(f"{name}_loss_") for key in errors)]

    # ---- which checkpoint a task loads ---------------------------------------------------------------------------

    def train_start(self, *, read_optimizer: bool = True) -> TrainStart:
        """A stored complete epoch of this training wins (resume); else ``load_epoch`` / ``start_epoch`` name the
        epoch to continue from; else ``import_model_train_epoch1`` or ``load`` initialise the parameters for epoch 1;
        else the model starts fresh. With `read_optimizer`, the optimizer state to continue with is read now."""
        if self.model_prefix and self._is_main:
            checkpoints.remove_stale_temp_files(self.model_prefix)
        named = self._config.int("load_epoch")
        if named is None and self._config.value("start_epoch") != "auto":
            named = self._config.int("start_epoch") - 1
        if named is None:
            checkpoint = self._newest_complete("Resuming training after stored epoch")
        else:  # 0: none, start with epoch 1
            checkpoint = self._stored_epoch(named) if named else None
        if checkpoint is not None:
            start = TrainStart(checkpoint.epoch + 1, checkpoint)
            if read_optimizer:
                start.optimizer_file = self.optimizer_file(checkpoint.epoch)
                start.optimizer_state = self._read_optimizer(start.optimizer_file, checkpoint.epoch)
            return start
        for key in ("import_model_train_epoch1", "load"):
            if self._config.has(key):
                given = self._given(key)
                print(f"Initialising the model from {given.path} ({key})", file=log.v3)
                given.state = {**given.state, "step": 0, "epoch": 0}
                return TrainStart(1, given, initialised_by=key)
        print("Starting training with a fresh model", file=log.v3)
        return TrainStart(1, None)

    def inference_checkpoint(self) -> Optional[LoadedCheckpoint]:
        """Tasks eval, forward and compute_priors: ``load`` (a checkpoint file), else epoch ``load_epoch`` of
        ``model``, else its newest complete epoch; None where there is none and ``allow_random_model_init``
        permits a fresh model (i6_core's forward job without a checkpoint)."""
        if self._config.value("load"):
            return self._given("load")
        named = self._config.int("load_epoch")
        checkpoint = self._stored_epoch(named) if named else self._newest_complete("Loading stored epoch")
        if checkpoint is not None:
            return checkpoint
        if self._config.bool("allow_random_model_init"):
            return None
        raise ConfigError(
            f"No model to load: set 'load' (a checkpoint file) or 'model' in {self._config.where()} "
            "(or allow_random_model_init = True to run a freshly initialised model)"
            + (f"; {self.model_prefix!r} has no stored epoch" if self.model_prefix else "")
        )

    def epoch_model(self) -> Tuple[Optional[int], Optional[str]]:
        """Mini-RETURNN's ``get_epoch_model``: (epoch, ``<model>.NNN`` or checkpoint file) the task starts from, by
        the rules above: a stored epoch as (epoch, ``<model>.NNN``), ``import_model_train_epoch1`` as (0, file),
        ``load`` as (None, file; the epoch comes from the checkpoint), a fresh model as (None, None)."""
        if self._config.value("task") == "train":
            start = self.train_start(read_optimizer=False)
            checkpoint = start.checkpoint
            if checkpoint is None:
                return None, None
            if start.initialised_by is not None:
                return (0 if start.initialised_by == "import_model_train_epoch1" else None), checkpoint.path
        else:
            checkpoint = self.inference_checkpoint()
            if checkpoint is None:
                return None, None
        if checkpoint.epoch is None:
            return None, checkpoint.path
        return checkpoint.epoch, checkpoints.epoch_prefix(self.model_prefix, checkpoint.epoch)

    def optimizer_file(self, epoch: int) -> Optional[str]:
        """The optimizer state stored with `epoch`; missing only where epochs were copied or deleted by hand, which
        ``allow_missing_optimizer_checkpoint`` accepts (None: a fresh optimizer)."""
        path = checkpoints.optimizer_path(self.model_prefix, epoch)
        if os.path.isfile(path):
            return path
        if self._config.bool("allow_missing_optimizer_checkpoint"):
            print(f"WARNING: optimizer state {path} not found, continuing with a fresh optimizer", file=log.v2)
            return None
        raise CheckpointError(
            f"Optimizer state {path!r} for the resumed epoch {epoch} is missing "
            "(set allow_missing_optimizer_checkpoint = True to continue with a fresh optimizer)"
        )

    def _read_optimizer(self, path: Optional[str], epoch: int) -> Optional[Dict[str, Any]]:
        if path is None:
            return None
        self.flush()  # a file being written is read back complete
        try:
            return checkpoints.load_file(path)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}. It is the optimizer state to continue epoch {epoch} with: remove "
                f"{checkpoints.model_path(self.model_prefix, epoch)} and {path} to train epoch {epoch} again from "
                "the epoch before, or set allow_missing_optimizer_checkpoint = True to continue with a fresh optimizer"
            ) from None

    def _stored_epoch(self, epoch: int) -> Optional[LoadedCheckpoint]:
        """Epoch `epoch` of ``model``, as ``load_epoch`` / ``start_epoch`` name it (an error where it is missing)."""
        if not self.model_prefix:
            return None
        path = checkpoints.checkpoint_file(checkpoints.model_path(self.model_prefix, epoch))
        return LoadedCheckpoint(epoch, path, self._read_model(path))

    def _newest_complete(self, what: str) -> Optional[LoadedCheckpoint]:
        """The newest complete stored epoch that reads back; unreadable ones are reported and skipped."""
        if not self.model_prefix:
            return None
        for epoch in self.complete_epochs():
            path = checkpoints.model_path(self.model_prefix, epoch)
            try:
                state = self._read_model(path)
            except CheckpointError as exc:
                print(f"WARNING: skipping unreadable checkpoint of epoch {epoch}: {exc}", file=log.v1)
                continue
            print(f"{what} {epoch} ({path})", file=log.v3)
            return LoadedCheckpoint(epoch, path, state)
        return None

    def _given(self, key: str) -> LoadedCheckpoint:
        """The checkpoint config key `key` names, through the cache manager (:func:`checkpoints.given_checkpoint`)."""
        path = checkpoints.given_checkpoint(self._config, key)
        return LoadedCheckpoint(None, path, self._read_model(path))

    def _read_model(self, path: str) -> Dict[str, Any]:
        self.flush()  # a file being written is read back complete
        return checkpoints.load_model_checkpoint(path)

    # ---- storing an epoch ----------------------------------------------------------------------------------------

    def begin_epoch(self, lr_control: LearningRateControl) -> None:
        """Before an epoch's files: the previous epoch's files are written first (one epoch's snapshots in memory at
        most, and a custom engine's own synchronous writes follow them on disk), and the learning_rates file exists,
        so that a model file stored before its entry is recognised as incomplete even in epoch 1."""
        self.flush()
        if self._is_main and lr_control.filename:
            filename = lr_control.filename

            def create() -> None:
                if not os.path.exists(filename):
                    write_text_atomic(filename, "{\n}\n")  # RETURNN's format without epochs: nothing decided yet

            self._writer.submit(f"{filename} (created empty)", create)

    def submit_model(
        self, epoch: int, model: torch.nn.Module, step: int, extra: Optional[Dict[str, Any]] = None
    ) -> None:
        """The model file of `epoch` (parameters copied to CPU now where written in the background)."""
        if self._is_main:
            self._writer.submit_model(self.model_prefix, epoch, model, step, extra)

    def submit_optimizer(self, updater: Updater, epoch: int) -> None:
        """The optimizer state of `updater` stored with `epoch`."""
        if self._is_main:
            self._writer.submit_optimizer(updater, checkpoints.optimizer_path(self.model_prefix, epoch))

    def submit_learning_rates(self, lr_control: LearningRateControl) -> None:
        """The learning_rates file with the scores known now, written after the files submitted before."""
        save = lr_control.save_later() if self._is_main else None
        if save is not None:
            self._writer.submit(lr_control.filename, save)

    def cleanup(self, lr_control: LearningRateControl) -> None:
        """Deletes what the stored epochs make unneeded: optimizer states but the two newest (enough to resume if one
        is damaged), and the epochs ``cleanup_old_models`` does not keep. It depends only on the files and scores,
        so a restart repeats it where a run stopped in the middle."""
        if not self.model_prefix or not self._is_main:
            return
        options = self._config.bool_or_other("cleanup_old_models")
        scores = {e: dict(d.error) for e, d in lr_control.epoch_data.items()}  # as of now
        cleanup = functools.partial(checkpoints.remove_unneeded, self.model_prefix, options, scores)
        self._writer.submit(f"the cleanup of old epochs of {self.model_prefix}", cleanup)

    def flush(self) -> None:
        """Waits for the files submitted so far; raises a failed write (once)."""
        self._writer.flush()

    def flush_after(self, error: BaseException, deferring: Callable[[], ContextManager[None]]) -> None:
        """Finishes the files submitted before `error` ended the work (:meth:`BackgroundStore.flush_after`)."""
        self._writer.flush_after(error, deferring)
