"""Where a training run starts, and which stored epochs count as complete.

An epoch is stored as one unit, in this order, each file written atomically (temp file, fsync, rename): the
optimizer state (``<model>.NNN.opt.pt``), the model (``<model>.NNN.pt``: parameters, epoch, global step), and last
the epoch's entry in the learning_rates file with its train scores, which marks the epoch complete. Random number
generators are seeded from (random_seed, epoch) at every epoch start, so they need no state of their own. A run
stopped anywhere in that sequence leaves either the previous complete epoch or the new one, never a mix:

- a temp file: removed at the next start;
- an optimizer file without its model file: not an epoch (the retrained epoch writes it again);
- a model file whose learning_rates entry is missing: not complete; the epoch is trained again;
- a complete epoch without its evaluation: evaluated at the next start, before the next learning rate is decided
  (the engine asks :func:`datasets_missing_eval`).

The files are written in this order also where a writer thread writes them (``store_checkpoints_in_background``,
engine/background_store.py): its jobs run one after another in the order submitted, and after a failed write none
runs, so the learning_rates entry is never written without the checkpoint before it.

Training creates the learning_rates file before it stores its first epoch. Without a learning_rates file (none
configured, or checkpoints copied without theirs) the model file is the last one written and marks the epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..atomic_file import write_text_atomic
from ..config import Config
from ..errors import CheckpointError
from ..log import log
from . import checkpoints
from .learning_rate_control import LearningRateControl, learning_rate_control_from_config


@dataclass
class TrainStart:
    """Where task train begins: the first epoch to train, the checkpoint to load (None: a fresh model) and the
    optimizer state to restore (None: a fresh optimizer)."""

    epoch: int
    state: Optional[Dict[str, Any]]
    optimizer_file: Optional[str]


def find_train_start(config: Config, model_prefix: Optional[str], lr_control: LearningRateControl) -> TrainStart:
    """A stored complete epoch of this training wins (resume); else ``load_epoch`` / ``start_epoch`` name the
    epoch to continue from; else ``import_model_train_epoch1`` or ``load`` initialise the parameters for epoch 1;
    else the model starts fresh."""
    load_epoch = config.int("load_epoch", None)
    if config.value("start_epoch", "auto") != "auto" and load_epoch is None:
        load_epoch = config.int("start_epoch", 1) - 1
    allow_missing_opt = config.bool("allow_missing_optimizer_checkpoint", False)
    if model_prefix:
        checkpoints.remove_stale_temp_files(model_prefix)
    if model_prefix and load_epoch:
        path = checkpoints.model_path(model_prefix, load_epoch)
        state = checkpoints.load_model_checkpoint(checkpoints.checkpoint_file(path))
        return TrainStart(load_epoch + 1, state, optimizer_file(model_prefix, load_epoch, allow_missing_opt))
    if model_prefix and load_epoch is None:
        for epoch in complete_epochs(model_prefix, lr_control):
            try:
                state = checkpoints.load_model_checkpoint(checkpoints.model_path(model_prefix, epoch))
            except CheckpointError as exc:
                print(f"WARNING: skipping unreadable checkpoint of epoch {epoch}: {exc}", file=log.v1)
                continue
            print(
                f"Resuming training after stored epoch {epoch} ({checkpoints.model_path(model_prefix, epoch)})",
                file=log.v3,
            )
            return TrainStart(epoch + 1, state, optimizer_file(model_prefix, epoch, allow_missing_opt))
    for key in ("import_model_train_epoch1", "load"):
        if config.has(key):
            path = checkpoints.given_checkpoint(config, key)  # an input file: through the cache manager
            print(f"Initialising the model from {path} ({key})", file=log.v3)
            state = checkpoints.load_model_checkpoint(path)
            return TrainStart(1, {**state, "step": 0, "epoch": 0}, None)
    print("Starting training with a fresh model", file=log.v3)
    return TrainStart(1, None, None)


def complete_epochs(model_prefix: str, lr_control: LearningRateControl) -> List[int]:
    """Stored epochs, newest first, that count as complete; the newest ones that do not are reported."""
    stored = sorted(checkpoints.existing_epochs(model_prefix), reverse=True)
    # Only a learning_rates file that this training has written marks epochs (training creates it before it stores
    # any epoch, see start_learning_rate_file); without one (no file configured, or checkpoints copied without it)
    # the model file does.
    marked = bool(lr_control.filename) and os.path.exists(lr_control.filename)
    complete = []
    for epoch in stored:
        if marked and not lr_control.get_epoch_error_dict(epoch):
            if not complete:
                print(
                    f"Epoch {epoch}: the model was stored, but the run stopped before its learning_rates entry was "
                    "written; training this epoch again",
                    file=log.v2,
                )
            continue
        complete.append(epoch)
    return complete


def start_learning_rate_file(lr_control: LearningRateControl) -> None:
    """Creates the learning_rates file (empty) before the first epoch is stored, so that a model file stored before
    its entry was written is recognised as incomplete even in epoch 1."""
    if lr_control.filename and not os.path.exists(lr_control.filename):
        write_text_atomic(lr_control.filename, "{\n}\n")  # RETURNN's format without epochs: nothing decided yet


def optimizer_file(model_prefix: str, epoch: int, allow_missing: bool) -> Optional[str]:
    """The optimizer state stored with `epoch`; missing only where epochs were copied or deleted by hand."""
    path = checkpoints.optimizer_path(model_prefix, epoch)
    if os.path.isfile(path):
        return path
    if allow_missing:
        print(f"WARNING: optimizer state {path} not found, continuing with a fresh optimizer", file=log.v2)
        return None
    raise CheckpointError(
        f"Optimizer state {path!r} for the resumed epoch {epoch} is missing "
        "(set allow_missing_optimizer_checkpoint = True to continue with a fresh optimizer)"
    )


def datasets_missing_eval(lr_control: LearningRateControl, stored_epoch: int, eval_names: Iterable[str]) -> List[str]:
    """The eval datasets that `stored_epoch` has no scores of yet (the run stopped after storing it)."""
    if stored_epoch < 1 or not lr_control.filename:
        return []
    errors = lr_control.get_epoch_error_dict(stored_epoch)
    return [name for name in eval_names if not any(key.startswith(f"{name}_loss_") for key in errors)]


def epoch_model_to_load(config: Config) -> Tuple[Optional[int], Optional[str]]:
    """(epoch, ``<model>.NNN`` or checkpoint file) a run starts from, as Mini-RETURNN's ``Engine.get_epoch_model``
    answers custom engines; the epoch is the one stored, so training goes on with epoch + 1.

    Task train takes the same decision as :func:`find_train_start`: ``load_epoch`` / ``start_epoch``, else the newest
    complete stored epoch, else ``import_model_train_epoch1`` as (0, file), else ``load`` as (None, file), else
    (None, None) for a fresh model. Other tasks: ``load`` as (None, file; the epoch comes from the checkpoint), else
    epoch ``load_epoch`` or the newest stored epoch of ``model``.
    """
    model = config.value("model", None)
    if config.value("task", "train") != "train":
        if config.value("load", ""):
            return None, checkpoints.given_checkpoint(config, "load")
        stored = checkpoints.existing_epochs(model) if model else {}
        epoch = config.int("load_epoch", None) or (max(stored) if stored else None)
        return (epoch, checkpoints.epoch_prefix(model, epoch)) if model and epoch else (None, None)
    load_epoch = config.int("load_epoch", None)
    if config.value("start_epoch", "auto") != "auto" and load_epoch is None:
        load_epoch = config.int("start_epoch", 1) - 1
    if model and load_epoch:
        return load_epoch, checkpoints.epoch_prefix(model, load_epoch)
    if model and load_epoch is None:
        complete = complete_epochs(model, learning_rate_control_from_config(config))
        if complete:
            return complete[0], checkpoints.epoch_prefix(model, complete[0])
    if config.value("import_model_train_epoch1", ""):
        return 0, checkpoints.given_checkpoint(config, "import_model_train_epoch1")
    if config.value("load", ""):
        return None, checkpoints.given_checkpoint(config, "load")
    return None, None
