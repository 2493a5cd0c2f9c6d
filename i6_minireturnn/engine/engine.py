"""The engine: trains (with eval after each epoch), evaluates and forwards models given by the config functions.

Read :func:`Engine.train_epoch` top to bottom for the training loop; features enter through small methods.
Attribute and method names follow Mini-RETURNN because ``CustomEngine`` subclasses in existing configs use them:
GAN vocoder setups call ``super(Engine, self).init_train(...)`` (hence ``EngineBase``), build their own
``Updater`` per optimizer (so ``_updater`` may be a dict of them), and call ``_create_data_loader``,
``get_epoch_model``, ``_load_model(epoch=, filename=)``, ``_load_optimizer(epoch)`` and ``_save_optimizer``. Those
names map onto this engine's own logic (the epoch files are epoch_store.py's), not onto a second copy; the ones
that are only translations live in mini_returnn_names.py. Training and evaluation share one step loop
(:meth:`Engine._step_loop`); what a pass prints is reporting.py's.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import signal
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from ..config import Config
from ..data.collate import map_tensors
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches, PipelineOptions
from ..data.registry import init_dataset
from ..errors import ConfigError
from ..log import log
from ..loop_tuning import LOOP_TUNING
from . import checkpoints
from .device import autocast, read_amp_dtype, resolve_device, seed_everything
from .distributed import init_distributed
from .epoch_store import EpochStore
from .inference import InferenceTasks
from .learning_rate_control import LearningRateControl, learning_rate_control_from_config
from .loss_tracker import LossTracker, Totals
from .lr_schedule import epoch_continuous
from .mini_returnn_names import EngineBase, EpochDataLoader, MiniReturnnEngineNames
from .output_checks import estimate_checkpoint_bytes, warn_on_low_space
from .reporting import LoopReport, RunReporting, format_losses
from .run_ctx import (
    Loss,
    RunCtx,
    init_load_run_ctx,
    init_train_step_run_ctx,
    reset_run_ctx,
    with_unknown_kwarg,
)
from .run_lock import ModelPrefixLock
from .startup_overlap import FirstBatches, start_cuda, take_batches
from .stop_signals import StopRequested, StopSignals
from .updater import Updater

StepResult = Tuple[torch.Tensor, Dict[str, Loss]]


class Engine(EngineBase, InferenceTasks, MiniReturnnEngineNames):
    """Runs the tasks ``train``, ``eval``, ``forward`` and ``compute_priors`` for one config."""

    def __init__(self, config: Config):
        self.config = config
        self._ranks = init_distributed(config, resolve_device(config))
        self._device = self._ranks.device(resolve_device(config))
        start_cuda(self._device)  # overlaps with building datasets and the model on the CPU
        if not self._ranks.is_main:  # rank 0 writes the log (files); the others print warnings and errors only
            log.initialize(verbosity=min(log.verbosity, 1))
        self.model_filename: Optional[str] = config.value("model")
        self.epoch = 0
        self._train_step = 0  # global step: number of training steps done
        self._steps_in_epoch: Optional[int] = None  # of this rank; None where the epoch is streamed
        self._model: Optional[torch.nn.Module] = None
        self._updater: Optional[Updater] = None
        self._train_step_func: Optional[Callable] = None
        self._forward_step_func: Optional[Callable] = None
        self._amp_dtype = read_amp_dtype(config)
        self._start_epoch = 1
        self._final_epoch = 1
        self.learning_rate = 0.0
        self.learning_rate_control: Optional[LearningRateControl] = None
        self.train_dataset: Optional[Dataset] = None
        self.eval_datasets: Dict[str, Dataset] = {}
        self.forward_dataset: Optional[Dataset] = None
        self._pipeline = PipelineOptions.from_config(config, device=self._device)
        self._reporting = RunReporting.from_config(config, is_main=self._ranks.is_main)
        self._progress_interval = self._reporting.progress_interval  # also of forward (inference.py)
        self._random_seed = config.int("random_seed")
        self._stop_signals = StopSignals()
        # The epoch files: which one each task loads, and storing them (by a writer thread while training goes on).
        self._epochs = EpochStore(config, model_prefix=self.model_filename, is_main=self._ranks.is_main)
        self._first_batches: Optional[FirstBatches] = None  # the first epoch's, read while the model is built
        self._run_lock: Optional[ModelPrefixLock] = None
        # Mini-RETURNN's data loader attributes, read and set by custom engines (see _create_data_loader).
        self._train_dataloader: Optional[EpochDataLoader] = None
        self._eval_dataloaders: Dict[str, EpochDataLoader] = {}
        self._forward_dataloader: Optional[EpochDataLoader] = None
        self._save_model_epoch_interval = config.int("save_interval")
        # A CustomEngine may override run_train_step with or without step_idx; decided once, not per step.
        self._run_train_step_takes_step_idx = _takes_step_idx(self.run_train_step)

    def close(self, *, completed: bool = False) -> None:
        """Finishes the files being written, then releases the model prefix lock and the process group; `completed`:
        the task ended without an error (then the ranks leave the process group together)."""
        try:
            if self._first_batches is not None:  # unused (nothing to train, an error)
                self._first_batches.close()
            self._epochs.flush()  # raises a failed write not reported yet
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None
            self._reporting.close()
            self._ranks.close(completed=completed)

    def _data_options(self, purpose: str) -> PipelineOptions:
        """The pipeline options for training ("train") or evaluation ("eval"): with several ranks, this rank's shard:
        training drops the batches beyond a multiple of the rank count (every rank takes the same steps), evaluation
        keeps them (their sums are added)."""
        options, ranks = self._pipeline, self._ranks
        remainder = "drop" if purpose == "train" else "keep"
        return options if ranks.world_size == 1 else options.sharded(ranks.rank, ranks.world_size, remainder=remainder)

    # ---- setup ---------------------------------------------------------------------------------------------------

    def _config_function(self, key: str, purpose: str) -> Callable:
        func = self.config.typed_value(key)
        if func is None:
            raise ConfigError(f"Config key {key!r} ({purpose}) is missing in {self.config.where()}")
        if not callable(func):
            raise ConfigError(
                f"Config key {key!r} must be a function, got {type(func).__name__} {self.config.origin(key)}"
            )
        return func

    def _dataset(self, key: str, opts: Any = None) -> Dataset:
        opts = self.config.typed_value(key) if opts is None else opts
        return init_dataset(opts, name=key)

    def init_train(self, train_data: Optional[Dataset] = None, dev_data: Optional[Dataset] = None) -> None:
        """Datasets, learning-rate control, model (fresh or resumed), optimizer and step function."""
        super().init_train(train_data=train_data, dev_data=dev_data)
        self._train_dataloader = self._create_data_loader(self.train_dataset)
        self._eval_dataloaders = {name: self._create_data_loader(ds) for name, ds in self.eval_datasets.items()}
        self._train_step_func = self._config_function("train_step", "the training step")
        if not self._ranks.is_main:
            self._ranks.barrier()  # rank 0 removes unfinished files first
        start = self._epochs.train_start()  # reads the optimizer state too: a damaged file stops before any work
        if self._ranks.is_main:
            self._ranks.barrier()
        self._start_epoch = start.epoch
        self._start_first_batches()
        checkpoint = start.checkpoint
        scaler_state = checkpoint.state.get("grad_scaler") if checkpoint else None
        self._load_model(
            epoch=start.epoch,
            state=checkpoint.state if checkpoint else None,
            init_for_train=start.epoch == 1,
            source=checkpoint.path if checkpoint else None,
        )
        start.checkpoint = checkpoint = None  # the parameters are in the model now
        self._ranks.wrap(self._model)
        # A stored epoch that was not evaluated yet is evaluated first: learning-rate control (newbob) decides the
        # next learning rate from its scores.
        self._eval_missing_for_stored_epoch()
        self.learning_rate = self.learning_rate_control.get_learning_rate_for_epoch(start.epoch)
        self._updater = Updater(
            config=self.config, network=self._model, device=self._device, initial_learning_rate=self.learning_rate
        )
        self._updater.create_optimizer()
        self._updater.agree_on_finite = self._ranks.all_true
        if self._amp_dtype == torch.float16:
            self._updater.create_grad_scaler()
            self._updater.load_grad_scaler_state(scaler_state)
        if start.optimizer_state is not None:
            self._updater.load_optimizer(start.optimizer_file, state=start.optimizer_state)
            start.optimizer_state = None
        warn_on_low_space(self._train_outputs(), estimate_checkpoint_bytes(self._model, self._updater.optimizer))

    def _start_first_batches(self) -> None:
        """Starts reading the first epoch's batches while the model is built; only where our train_epoch reads them
        and the training dataset is no eval dataset (evaluating a stored epoch first must not move its state)."""
        if (
            self.config.value("task") != "train"
            or type(self).train_epoch is not Engine.train_epoch
            or self._start_epoch > self._final_epoch
            or any(dataset is self.train_dataset for dataset in self.eval_datasets.values())
        ):
            return
        options = self._data_options("train")
        read_ahead = not options.forks_workers
        self._first_batches = FirstBatches(self.train_dataset, self._start_epoch, options, read_ahead=read_ahead)

    def _train_outputs(self) -> Dict[str, str]:
        """The files training writes, by the config key that names them (checked before the first step)."""
        outputs = {}
        if self.model_filename:
            outputs["model"] = checkpoints.model_path(self.model_filename, 1)
        if self.learning_rate_control.filename:
            outputs["learning_rate_file"] = self.learning_rate_control.filename
        return outputs

    def _init_eval_datasets(self, dev_data: Optional[Dataset] = None) -> None:
        self.eval_datasets = {}
        if dev_data is not None:
            self.eval_datasets["dev"] = dev_data
        elif self.config.has("dev"):
            self.eval_datasets["dev"] = self._dataset("dev")
        extra = self.config.typed_value("eval_datasets") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"eval_datasets must be a dict {{name: dataset dict}}, got {type(extra).__name__}")
        for name, opts in extra.items():
            self.eval_datasets[name] = self._dataset(name, opts)

    @classmethod
    def config_get_final_epoch(cls, config: Config) -> int:
        """``num_epochs`` (default 5)."""
        num_epochs = config.int("num_epochs")
        if num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1, got {num_epochs}")
        return num_epochs

    def _load_model(
        self,
        *,
        epoch: Optional[int],
        state: Optional[Dict[str, Any]] = None,
        init_for_train: Optional[bool] = None,
        filename: Optional[str] = None,
        source: Optional[str] = None,
    ) -> None:
        """Creates the model with ``get_model(epoch=, step=)``, then loads `state` and ``preload_from_files``.
        Custom engines call it Mini-RETURNN's way, ``_load_model(epoch=, filename=)`` with what :meth:`get_epoch_model`
        returned: the checkpoint `filename` (with or without ``.pt``) is read here; epoch None takes the checkpoint's
        epoch; epoch 1 starts a training (step 0, ``preload_from_files`` applies), a later epoch continues the
        checkpoint's global step so that a resumed run sees the same steps as an uninterrupted one. `source`: the
        file `state` was read from, for messages."""
        if filename is not None and state is None:
            self._epochs.flush()  # a file being written is read back complete
            print(f"Load model {filename}", file=log.v4)
            source = checkpoints.checkpoint_file(filename)
            state = checkpoints.load_model_checkpoint(source)
            if epoch is None:
                epoch = int(state.get("epoch") or 1)
            elif epoch == 1:
                state = {**state, "step": 0, "epoch": 0}
        epoch = epoch or 1
        if init_for_train is None:
            init_for_train = epoch == 1 and self.config.value("task") == "train"
        get_model = self._config_function("get_model", "creates the model")
        step = int(state.get("step", 0)) if state is not None else 0
        self._train_step = step
        self.epoch = epoch
        seed_everything(self._random_seed * 27644437 + epoch * 193939 + step * 19937 + 479001599)
        init_load_run_ctx(device=self._device, engine=self, epoch=epoch, global_step=step)
        model = get_model(epoch=epoch, step=step, **with_unknown_kwarg())
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"get_model must return a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        print(f"Model: {model}", file=log.v4)
        num_params = sum(p.numel() for p in model.parameters())
        print(f"Total number of parameters: {num_params}", file=log.v3)
        if state is not None:
            checkpoints.load_state_into_model(
                model,
                state["model"],
                source=source or f"epoch {state.get('epoch')} checkpoint",
                ignore_missing=self.config.bool("load_ignore_missing_vars"),
            )
        preload = self.config.typed_value("preload_from_files")
        if preload and (init_for_train or self.config.value("task") != "train"):
            checkpoints.preload_from_files(
                model,
                preload,
                init_for_train=init_for_train,
                use_cache_manager=checkpoints.caches_checkpoints(self.config),
            )
        del state
        gc.collect()
        model.to(self._device)
        reset_run_ctx()

    def _load_optimizer(self, epoch: int, filename: Optional[str] = None) -> None:
        """Restores the optimizer state stored with epoch ``epoch - 1`` (Mini-RETURNN's signature: `epoch` is the
        epoch about to be trained), or from `filename`."""
        self._epochs.flush()  # a file being written is read back complete
        filename = filename or self._epochs.optimizer_file(epoch - 1)
        if filename is not None:  # None: missing, and allow_missing_optimizer_checkpoint accepts a fresh optimizer
            self._updater.load_optimizer(filename)

    def _updaters(self) -> List[Updater]:
        """The updaters of the run: ours, or the several a custom engine keeps in ``_updater`` (a dict, e.g.
        generator and discriminator of a GAN)."""
        if isinstance(self._updater, dict):
            return list(self._updater.values())
        return [self._updater] if self._updater is not None else []

    # ---- training ------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Trains epochs start..num_epochs (train, save, evaluate, clean up); ends when all their files are written."""
        try:
            with self._stop_signals:
                try:
                    trained = self._train_epochs()
                    self._epochs.flush()
                except BaseException as error:
                    self._epochs.flush_after(error, self._stop_signals.deferred)
                    raise
        except StopRequested as stop:
            raise StopRequested(
                stop.signum,
                f"{signal.Signals(stop.signum).name} received in epoch {self.epoch}: "
                f"stopped; {self._epochs.kept_epochs_text()}",
            ) from None
        if trained:
            print(f"Finished training at epoch {self._final_epoch}.", file=log.v3)

    def _train_epochs(self) -> bool:
        """The epochs still to train; False where there were none."""
        self._cleanup()  # where a stopped run left it unfinished
        # Done in our init_train already (then a no-op); a CustomEngine's own init_train relies on this call, as in
        # Mini-RETURNN, which checks here.
        self._eval_missing_for_stored_epoch()
        if self._start_epoch > self._final_epoch:
            print(f"Nothing to train: epoch {self._final_epoch} is stored already.", file=log.v2)
            return False
        print(f"Starting training at epoch {self._start_epoch}, global step {self._train_step}.", file=log.v3)
        for epoch in range(self._start_epoch, self._final_epoch + 1):
            self.epoch = epoch
            self._seed_epoch()  # also for a CustomEngine whose init_train_epoch does not call ours
            self.init_train_epoch()
            self.train_epoch()
        return True

    def init_train_epoch(self) -> None:
        """Learning rate and seeds of the epoch (a resumed epoch sees the same random numbers)."""
        # decided once (by rank 0) for all ranks
        self.learning_rate = self._ranks.broadcast_object(
            self.learning_rate_control.get_learning_rate_for_epoch(self.epoch)
        )
        for updater in self._updaters():
            updater.set_learning_rate(self.learning_rate)
        self._seed_epoch()

    def _seed_epoch(self) -> None:
        """Seeds the random number generators from (random_seed, epoch): a resumed epoch draws the same numbers."""
        seed_everything(self._random_seed * 1_000_003 + self.epoch + 7919 * self._ranks.rank)

    def train_epoch(self) -> None:
        """One epoch: steps over the training data, then save, evaluate and clean up."""
        print(f"start epoch {self.epoch} with learning rate {self.learning_rate} ...", file=log.v3)
        first, self._first_batches = self._first_batches, None  # started early where they are this epoch's
        batches = take_batches(first, self.train_dataset, self.epoch, self._data_options("train"))
        self._steps_in_epoch = batches.num_batches
        skip_nonfinite = any(getattr(updater, "skip_nonfinite", False) for updater in self._updaters())
        tracker = LossTracker(self._device, keep_step_values=log.verbose[5], skip_nonfinite=skip_nonfinite)
        report = self._loop_report("train", batches, stop_on_nonfinite=not skip_nonfinite)
        self._model.train()
        run_ctx = init_train_step_run_ctx(
            device=self._device, engine=self, epoch=self.epoch, global_step=self._train_step
        )
        tuning = LOOP_TUNING.training_loop(  # see loop_tuning.py
            self._device,
            paced=self.config.bool("data_loader_pacing"),
            pinned=self.config.bool("pin_training_loop"),
            local_rank=getattr(self._ranks, "local_rank", 0),
            distributed=self._ranks.world_size > 1,
        )
        with self._ranks.train_forward(self._model), tuning:
            totals = self._step_loop(
                self._same_steps_on_all_ranks(batches), self._train_one_step, run_ctx, tracker, report
            )
        for updater in self._updaters():  # a partial gradient accumulation at the epoch end still counts
            if hasattr(updater, "apply_update"):  # an updater written for Mini-RETURNN updates inside step()
                updater.apply_update()
        self._ranks.before_store(self._model)
        reset_run_ctx()
        self._finish_train_epoch(totals, tracker.num_steps, report.watch.elapsed(), report.busy_share())

    def _same_steps_on_all_ranks(self, batches: EpochBatches) -> Iterable[Dict[str, Any]]:
        """A planned epoch gives every rank the same number of batches; a streamed one (a dataset without cheap
        lengths) ends for every rank where the first rank runs out: one small collective per step, only then."""
        if self._ranks.world_size == 1 or batches.num_batches is not None:
            return batches
        return self._until_a_rank_runs_out(batches)

    def _until_a_rank_runs_out(self, batches: EpochBatches) -> Iterator[Dict[str, Any]]:
        for data in itertools.chain(batches, [None]):
            if not bool(self._ranks.all_true(torch.tensor(data is not None, device=self._device))):
                return
            yield data

    def _loop_report(self, name: str, batches: EpochBatches, *, stop_on_nonfinite: bool = False) -> LoopReport:
        return LoopReport(
            name=name,
            epoch=self.epoch,
            num_batches=batches.num_batches,
            device=self._device,
            run=self._reporting,
            global_step=self._train_step,
            final_epoch=self._final_epoch,
            learning_rate=self._step_learning_rate,
            stop_on_nonfinite=stop_on_nonfinite,
            ranks=self._ranks if self._ranks.world_size > 1 else None,
            reduce_at_log_points=name == "train" and self._ranks.world_size > 1,
        )

    def _step_learning_rate(self) -> float:
        """The learning rate of the current training step (a step schedule changes it per step), for the reports."""
        if isinstance(self._updater, Updater):
            return self._updater.get_effective_learning_rate()
        return self.learning_rate

    def _step_loop(
        self,
        batches: Iterable[Dict[str, Any]],
        run_step: Callable[[Dict[str, Any], RunCtx, int], StepResult],
        run_ctx: RunCtx,
        tracker: LossTracker,
        report: LoopReport,
    ) -> Totals:
        """The loop of training and evaluation: `run_step` per batch, losses summed on the device, log points;
        returns the totals of the pass (over all ranks)."""
        for step_idx, data in enumerate(report.timed(batches)):
            step_start = time.monotonic()
            run_ctx.init_step(self._train_step)
            total_loss, losses = run_step(data, run_ctx, step_idx)
            step_time = time.monotonic() - step_start
            global_step = report.first_global_step + step_idx
            tracker.add(losses, total_loss, global_step=global_step, step_time=step_time, seq_tags=data.get("seq_tag"))
            report.after_step(tracker, step_idx + 1)
        return report.finish(tracker)

    def _finish_train_epoch(self, totals: Totals, num_steps: int, seconds: float, busy_share: float) -> None:
        summary = f"epoch {self.epoch}: trained {num_steps} steps in {seconds:.1f}s, " + format_losses(totals.means)
        summary += f", computing {100 * busy_share:.0f}% of the time (the rest waiting for data)"
        if totals.num_nonfinite:  # only here where the updater skips such steps; else the loop stopped
            summary += f", {totals.num_nonfinite} step(s) with non-finite loss skipped"
        if self._ranks.world_size > 1:
            summary += f" (steps of each of {self._ranks.world_size} ranks; losses over all ranks)"
        print(summary, file=log.v2)
        with self._stop_signals.deferred():  # stored as one unit; see epoch_store.py for the order and why
            self._epochs.begin_epoch(self.learning_rate_control)
            if self._should_save(self.epoch):
                self._save_optimizer()
                self.save_model()
            self.learning_rate_control.set_epoch_error(self.epoch, totals.means)
            self._save_learning_rates()  # last: marks the epoch complete
        self.eval_model()
        self._cleanup()

    def _should_save(self, epoch: int) -> bool:
        # the attribute, not the config: a CustomEngine may set it, as Mini-RETURNN's engine honours
        interval = self._save_model_epoch_interval
        return bool(self.model_filename) and (epoch % max(interval, 1) == 0 or epoch == self._final_epoch)

    def _train_one_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int) -> StepResult:
        """:meth:`run_train_step` (which a CustomEngine may override, with or without `step_idx`), then the global
        step counts on. With DDP, gradients are reduced where an accumulation window ends and at the epoch's end."""
        for updater in self._updaters():  # the learning rate of this step (dynamic_learning_rate, step schedules)
            if hasattr(updater, "set_current_train_step"):  # an updater written for Mini-RETURNN has none
                updater.set_current_train_step(
                    global_train_step=self._train_step,
                    epoch=self.epoch,
                    epoch_continuous=epoch_continuous(self.epoch, step_idx, self._steps_in_epoch),
                )
        last_in_epoch = step_idx + 1 == self._steps_in_epoch
        sync = last_in_epoch or not isinstance(self._updater, Updater) or self._updater.ends_accumulation(step_idx)
        with self._ranks.grad_sync(sync):
            if self._run_train_step_takes_step_idx:
                result = self.run_train_step(data, run_ctx, step_idx)
            else:
                result = self.run_train_step(data, run_ctx)
        self._train_step += 1
        self._ranks.after_update(self._model, self._train_step)
        if step_idx == 0:  # threads the first step started (a custom engine's loader) leave a pinned loop's CPU
            LOOP_TUNING.after_first_step()
        return result

    def run_train_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int = 0) -> StepResult:
        """Runs ``train_step`` and the parameter update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with autocast(self._device, self._amp_dtype):
            self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **with_unknown_kwarg())
        total_loss = run_ctx.total_loss()
        self._updater.step(total_loss, step_idx)
        return total_loss, run_ctx.losses

    # ---- evaluation ----------------------------------------------------------------------------------------------

    def eval_model(self, *, skip_already_evaluated: bool = False) -> Dict[str, Dict[str, float]]:
        """Evaluates every eval dataset with ``train_step`` under no_grad; scores go to the learning_rates file."""
        results = {}
        if not self.eval_datasets:
            return results
        self._model.eval()
        for name, dataset in self.eval_datasets.items():
            if skip_already_evaluated and self._is_dataset_evaluated(name):
                continue
            run_ctx = init_train_step_run_ctx(
                device=self._device, engine=self, epoch=self.epoch, global_step=self._train_step
            )
            batches = EpochBatches(dataset, self.epoch, self._data_options("eval"))
            tracker = LossTracker(self._device, keep_step_values=log.verbose[5])
            report = self._loop_report(f"eval {name}", batches)
            with torch.no_grad():
                totals = self._step_loop(batches, self._eval_one_step, run_ctx, tracker, report)
            reset_run_ctx()
            scores = {f"{name}_loss_{loss}": value for loss, value in totals.means.items()}
            results[name] = scores
            print(
                f"epoch {self.epoch} eval {name}: {format_losses(scores)} ({report.watch.elapsed():.1f}s)", file=log.v2
            )
            if self.learning_rate_control is not None:
                self.learning_rate_control.set_epoch_error(self.epoch, scores)
                self._save_learning_rates()
        self._model.train()
        return results

    def _eval_one_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int) -> StepResult:
        return self.run_eval_step(data, run_ctx)

    def run_eval_step(self, data: Dict[str, Any], run_ctx: RunCtx) -> StepResult:
        """Runs ``train_step`` without an update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with autocast(self._device, self._amp_dtype):
            self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **with_unknown_kwarg())
        return run_ctx.total_loss(), run_ctx.losses

    def _is_dataset_evaluated(self, name: str) -> bool:
        errors = self.learning_rate_control.get_epoch_error_dict(self.epoch)
        return any(key.startswith(f"{name}_loss_") for key in errors)

    def _eval_missing_for_stored_epoch(self) -> None:
        """A run stopped between storing an epoch and evaluating it catches up on the evaluation."""
        stored = self._start_epoch - 1
        missing = self._epochs.datasets_missing_eval(self.learning_rate_control, stored, self.eval_datasets)
        if not missing or stored > self._final_epoch:
            return
        print(f"Epoch {stored} was not evaluated on {', '.join(missing)}; doing that now.", file=log.v3)
        self.epoch = stored
        self.eval_model(skip_already_evaluated=True)
        self.epoch = self._start_epoch

    def init_eval(self) -> None:
        """Task eval: the checkpoint (``load`` / ``load_epoch`` / newest), ``dev``, ``eval`` and ``eval_datasets``."""
        self._init_eval_datasets()
        if self.config.has("eval"):
            self.eval_datasets["eval"] = self._dataset("eval")
        if not self.eval_datasets:
            raise ConfigError(f"Task eval needs 'dev', 'eval' or 'eval_datasets' in {self.config.where()}")
        self._train_step_func = self._config_function("train_step", "computes the losses to evaluate")
        self.learning_rate_control = learning_rate_control_from_config(self.config)
        self._load_model_for_inference()

    # ---- files ---------------------------------------------------------------------------------------------------

    def move_data_to_device(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """Tensors to the run's device (non-blocking from pinned memory); other entries stay."""
        non_blocking = self._device.startswith("cuda")
        return map_tensors(data, lambda t: t.to(self._device, non_blocking=non_blocking))

    def _create_data_loader(self, dataset: Dataset) -> EpochDataLoader:
        """The batches of `dataset` for the current epoch, each time it is iterated (Mini-RETURNN's DataLoader)."""
        return EpochDataLoader(self, dataset)

    def save_model(self) -> None:
        """Writes the current epoch's model file (rank 0 of several; in the background unless configured not to)."""
        scaler_state = self._updater.grad_scaler_state() if isinstance(self._updater, Updater) else None
        extra = {"grad_scaler": scaler_state} if scaler_state is not None else None
        self._epochs.submit_model(self.epoch, self._model, self._train_step, extra)

    def _save_optimizer(self) -> None:
        """Writes the current epoch's optimizer state (a custom engine with several updaters overrides this)."""
        self._epochs.submit_optimizer(self._updater, self.epoch)

    def _save_learning_rates(self) -> None:
        """The learning_rates file with the scores known now, written after the files submitted before."""
        self._epochs.submit_learning_rates(self.learning_rate_control)

    def _cleanup(self) -> None:
        """Deletes the files the stored epochs make unneeded (:meth:`EpochStore.cleanup`)."""
        self._epochs.cleanup(self.learning_rate_control)


def _takes_step_idx(method: Callable) -> bool:
    params = list(inspect.signature(method).parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3
