"""The engine: trains (with eval after each epoch), evaluates and forwards models given by the config functions.

Read :func:`Engine.train_epoch` top to bottom for the training loop; features enter through small methods.
Attribute and method names follow Mini-RETURNN because ``CustomEngine`` subclasses in existing configs use them:
GAN vocoder setups call ``super(Engine, self).init_train(...)`` (hence ``EngineBase``), build their own
``Updater`` per optimizer (so ``_updater`` may be a dict of them), and call ``_create_data_loader``,
``get_epoch_model``, ``_load_model(epoch=, filename=)``, ``_load_optimizer(epoch)`` and ``_save_optimizer``. Those
names map onto this engine's own logic (resume.py decides which stored epochs are complete), not onto a second copy;
the ones that are only translations live in mini_returnn_names.py. Training and evaluation share one step loop
(:meth:`Engine._step_loop`); what a pass prints is reporting.py's.
"""

from __future__ import annotations

import gc
import inspect
import os
import random
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..config import Config
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches, PipelineOptions
from ..data.registry import init_dataset
from ..errors import CheckpointError, ConfigError
from ..log import log
from . import checkpoints, priors, resume
from .device import autocast, read_amp_dtype, resolve_device, seed_everything
from .inference import forward_dataset_options, inference_checkpoint, use_forward_epoch_as_load_epoch
from .learning_rate_control import LearningRateControl, learning_rate_control_from_config
from .loss_tracker import LossTracker, Stopwatch
from .mini_returnn_names import EngineBase, EpochDataLoader, MiniReturnnEngineNames
from .output_checks import check_outputs, estimate_checkpoint_bytes, warn_on_low_space
from .reporting import LoopReport, format_losses, hms
from .run_ctx import (
    Loss,
    RunCtx,
    init_forward_step_run_ctx,
    init_load_run_ctx,
    init_train_step_run_ctx,
    reset_run_ctx,
)
from .run_lock import ModelPrefixLock
from .stop_signals import StopRequested, StopSignals
from .updater import Updater

StepResult = Tuple[torch.Tensor, Dict[str, Loss]]


def _with_unknown_kwarg() -> Dict[str, None]:
    # Step functions must take **kwargs so that new arguments can be added later (Mini-RETURNN's rule).
    return {f"__fwd_compatible_random_arg_{random.randint(0, 99)}": None}


class Engine(EngineBase, MiniReturnnEngineNames):
    """Runs the tasks ``train``, ``eval``, ``forward`` and ``compute_priors`` for one config."""

    def __init__(self, config: Config):
        self.config = config
        self._device = resolve_device(config)
        self.model_filename: Optional[str] = config.value("model", None)
        self.epoch = 0
        self._train_step = 0  # global step: number of training steps done
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
        self._log_step_interval = max(1, config.int("log_step_interval", 50))
        self._progress_interval = config.float("log_progress_interval", 60.0)
        self._random_seed = config.int("random_seed", 42)
        self._stop_signals = StopSignals()
        self._run_lock: Optional[ModelPrefixLock] = None
        # Mini-RETURNN's data loader attributes, read and set by custom engines (see _create_data_loader).
        self._train_dataloader: Optional[EpochDataLoader] = None
        self._eval_dataloaders: Dict[str, EpochDataLoader] = {}
        self._forward_dataloader: Optional[EpochDataLoader] = None
        self._save_model_epoch_interval = config.int("save_interval", 1)
        # A CustomEngine may override run_train_step with or without step_idx; decided once, not per step.
        self._run_train_step_takes_step_idx = _takes_step_idx(self.run_train_step)

    def close(self) -> None:
        """Releases what the run holds beyond its objects (the model prefix lock)."""
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    # ---- setup ---------------------------------------------------------------------------------------------------

    def _config_function(self, key: str, purpose: str) -> Callable:
        func = self.config.typed_value(key)
        if func is None:
            raise ConfigError(f"Config key {key!r} ({purpose}) is missing in {self.config.where()}")
        if not callable(func):
            raise ConfigError(f"Config key {key!r} must be a function, got {type(func).__name__}")
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
        start = resume.find_train_start(self.config, self.model_filename, self.learning_rate_control)
        self._start_epoch = start.epoch
        self._load_model(epoch=start.epoch, state=start.state, init_for_train=start.epoch == 1)
        # A stored epoch that was not evaluated yet is evaluated first: learning-rate control (newbob) decides the
        # next learning rate from its scores.
        self._eval_missing_for_stored_epoch()
        self.learning_rate = self.learning_rate_control.get_learning_rate_for_epoch(start.epoch)
        self._updater = Updater(
            config=self.config, network=self._model, device=self._device, initial_learning_rate=self.learning_rate
        )
        self._updater.create_optimizer()
        if self._amp_dtype == torch.float16:
            self._updater.create_grad_scaler()
            self._updater.load_grad_scaler_state((start.state or {}).get("grad_scaler"))
        if start.optimizer_file is not None:
            self._load_optimizer(start.epoch, filename=start.optimizer_file)
        warn_on_low_space(self._train_outputs(), estimate_checkpoint_bytes(self._model, self._updater.optimizer))

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
        extra = self.config.typed_value("eval_datasets", {}) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"eval_datasets must be a dict {{name: dataset dict}}, got {type(extra).__name__}")
        for name, opts in extra.items():
            self.eval_datasets[name] = self._dataset(name, opts)

    @classmethod
    def config_get_final_epoch(cls, config: Config) -> int:
        """``num_epochs`` (default 5)."""
        num_epochs = config.int("num_epochs", 5)
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
    ) -> None:
        """Creates the model with ``get_model(epoch=, step=)``, then loads `state` and ``preload_from_files``.

        Custom engines call it Mini-RETURNN's way, ``_load_model(epoch=, filename=)`` with what
        :meth:`get_epoch_model` returned: the checkpoint `filename` (with or without ``.pt``) is read here; epoch
        None takes the checkpoint's epoch; epoch 1 starts a training (step 0, ``preload_from_files`` applies), a later
        epoch continues the checkpoint's global step so that a resumed run sees the same steps as an uninterrupted one.
        """
        if filename is not None and state is None:
            print(f"Load model {filename}", file=log.v4)
            state = checkpoints.load_model_checkpoint(checkpoints.checkpoint_file(filename))
            if epoch is None:
                epoch = int(state.get("epoch") or 1)
            elif epoch == 1:
                state = {**state, "step": 0, "epoch": 0}
        epoch = epoch or 1
        if init_for_train is None:
            init_for_train = epoch == 1 and self.config.value("task", "train") == "train"
        get_model = self._config_function("get_model", "creates the model")
        step = int(state.get("step", 0)) if state is not None else 0
        self._train_step = step
        self.epoch = epoch
        seed_everything(self._random_seed * 27644437 + epoch * 193939 + step * 19937 + 479001599)
        init_load_run_ctx(device=self._device, engine=self, epoch=epoch, global_step=step)
        model = get_model(epoch=epoch, step=step, **_with_unknown_kwarg())
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
                source=f"epoch {state.get('epoch')} checkpoint",
                ignore_missing=self.config.bool("load_ignore_missing_vars", False),
            )
        preload = self.config.typed_value("preload_from_files", None)
        if preload and (init_for_train or self.config.value("task", "train") != "train"):
            checkpoints.preload_from_files(model, preload, init_for_train=init_for_train)
        del state
        gc.collect()
        model.to(self._device)
        reset_run_ctx()

    def _load_optimizer(self, epoch: int, filename: Optional[str] = None) -> None:
        """Restores the optimizer state stored with epoch ``epoch - 1`` (Mini-RETURNN's signature: `epoch` is the
        epoch about to be trained), or from `filename`."""
        if filename is None:
            filename = checkpoints.optimizer_path(self.model_filename, epoch - 1)
            if not os.path.isfile(filename):
                if not self.config.bool("allow_missing_optimizer_checkpoint", False):
                    raise CheckpointError(
                        f"Optimizer state {filename!r} for the resumed epoch {epoch - 1} is missing "
                        "(set allow_missing_optimizer_checkpoint = True to continue with a fresh optimizer)"
                    )
                print(f"WARNING: optimizer state {filename} not found, continuing with a fresh optimizer", file=log.v2)
                return
        self._updater.load_optimizer(filename)

    def _updaters(self) -> List[Updater]:
        """The updaters of the run: ours, or the several a custom engine keeps in ``_updater`` (a dict, e.g.
        generator and discriminator of a GAN)."""
        if isinstance(self._updater, dict):
            return list(self._updater.values())
        return [self._updater] if self._updater is not None else []

    # ---- training ------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Trains epochs start..num_epochs; each: train, save, evaluate, clean up."""
        self._cleanup()  # where a stopped run left it unfinished
        # Done in our init_train already (then a no-op); a CustomEngine's own init_train relies on this call, as in
        # Mini-RETURNN, which checks here.
        self._eval_missing_for_stored_epoch()
        if self._start_epoch > self._final_epoch:
            print(f"Nothing to train: epoch {self._final_epoch} is stored already.", file=log.v2)
            return
        print(f"Starting training at epoch {self._start_epoch}, global step {self._train_step}.", file=log.v3)
        try:
            with self._stop_signals:
                for epoch in range(self._start_epoch, self._final_epoch + 1):
                    self.epoch = epoch
                    self._seed_epoch()  # also for a CustomEngine whose init_train_epoch does not call ours
                    self.init_train_epoch()
                    self.train_epoch()
        except StopRequested as stop:
            raise StopRequested(
                stop.signum,
                f"{signal.Signals(stop.signum).name} received in epoch {self.epoch}: "
                f"stopped; {self._kept_epochs()}",
            ) from None
        print(f"Finished training at epoch {self._final_epoch}.", file=log.v3)

    def _kept_epochs(self) -> str:
        stored = resume.complete_epochs(self.model_filename, self.learning_rate_control) if self.model_filename else []
        if not stored:
            return "no epoch is stored yet; a restart begins with epoch 1"
        return f"kept the stored epochs up to {stored[0]}; a restart continues with epoch {stored[0] + 1}"

    def init_train_epoch(self) -> None:
        """Learning rate and seeds of the epoch (a resumed epoch sees the same random numbers)."""
        self.learning_rate = self.learning_rate_control.get_learning_rate_for_epoch(self.epoch)
        for updater in self._updaters():
            updater.set_learning_rate(self.learning_rate)
        self._seed_epoch()

    def _seed_epoch(self) -> None:
        """Seeds the random number generators from (random_seed, epoch): a resumed epoch draws the same numbers."""
        seed_everything(self._random_seed * 1_000_003 + self.epoch)

    def train_epoch(self) -> None:
        """One epoch: steps over the training data, then save, evaluate and clean up."""
        print(f"start epoch {self.epoch} with learning rate {self.learning_rate} ...", file=log.v3)
        batches = EpochBatches(self.train_dataset, self.epoch, self._pipeline)
        skip_nonfinite = any(getattr(updater, "skip_nonfinite", False) for updater in self._updaters())
        tracker = LossTracker(self._device, keep_step_values=log.verbose[5], skip_nonfinite=skip_nonfinite)
        report = self._loop_report("train", batches, stop_on_nonfinite=not skip_nonfinite)
        self._model.train()
        run_ctx = init_train_step_run_ctx(
            device=self._device, engine=self, epoch=self.epoch, global_step=self._train_step
        )
        self._step_loop(batches, self._train_one_step, run_ctx, tracker, report)
        for updater in self._updaters():  # a partial gradient accumulation at the epoch end still counts
            if hasattr(updater, "apply_update"):  # an updater written for Mini-RETURNN updates inside step()
                updater.apply_update()
        reset_run_ctx()
        self._finish_train_epoch(tracker, report.watch.elapsed())

    def _loop_report(self, name: str, batches: EpochBatches, *, stop_on_nonfinite: bool = False) -> LoopReport:
        return LoopReport(
            name=name,
            epoch=self.epoch,
            num_batches=batches.num_batches,
            device=self._device,
            step_interval=self._log_step_interval,
            progress_interval=self._progress_interval,
            stop_on_nonfinite=stop_on_nonfinite,
            first_global_step=self._train_step if name == "train" else 0,
        )

    def _step_loop(
        self,
        batches: EpochBatches,
        run_step: Callable[[Dict[str, Any], RunCtx, int], StepResult],
        run_ctx: RunCtx,
        tracker: LossTracker,
        report: LoopReport,
    ) -> None:
        """The loop of training and evaluation: `run_step` per batch, losses summed on the device, log points."""
        for step_idx, data in enumerate(batches):
            step_start = time.monotonic()
            run_ctx.init_step(self._train_step)
            total_loss, losses = run_step(data, run_ctx, step_idx)
            step_time = time.monotonic() - step_start
            tracker.add(losses, total_loss, global_step=report.first_global_step + step_idx, step_time=step_time)
            report.after_step(tracker, step_idx + 1)
        report.finish(tracker)

    def _finish_train_epoch(self, tracker: LossTracker, seconds: float) -> None:
        means = tracker.means()
        skipped = tracker.nonfinite()[0] if tracker.skip_nonfinite else 0
        summary = f"epoch {self.epoch}: trained {tracker.num_steps} steps in {seconds:.1f}s, " + format_losses(means)
        if skipped:
            summary += f", {skipped} step(s) with non-finite loss skipped"
        print(summary, file=log.v2)
        with self._stop_signals.deferred():  # stored as one unit; see resume.py for the order and why
            resume.start_learning_rate_file(self.learning_rate_control)
            if self._should_save(self.epoch):
                self._save_optimizer()
                self.save_model()
            self.learning_rate_control.set_epoch_error(self.epoch, means)
            self.learning_rate_control.save()  # last: marks the epoch complete
        self.eval_model()
        self._cleanup()

    def _should_save(self, epoch: int) -> bool:
        interval = self.config.int("save_interval", 1)
        return bool(self.model_filename) and (epoch % max(interval, 1) == 0 or epoch == self._final_epoch)

    def _train_one_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int) -> StepResult:
        """:meth:`run_train_step` (which a CustomEngine may override, with or without `step_idx`), then the global
        step counts on."""
        if self._run_train_step_takes_step_idx:
            result = self.run_train_step(data, run_ctx, step_idx)
        else:
            result = self.run_train_step(data, run_ctx)
        self._train_step += 1
        return result

    def run_train_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int = 0) -> StepResult:
        """Runs ``train_step`` and the parameter update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with autocast(self._device, self._amp_dtype):
            self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **_with_unknown_kwarg())
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
            batches = EpochBatches(dataset, self.epoch, self._pipeline)
            tracker = LossTracker(self._device, keep_step_values=log.verbose[5])
            report = self._loop_report(f"eval {name}", batches)
            with torch.no_grad():
                self._step_loop(batches, self._eval_one_step, run_ctx, tracker, report)
            reset_run_ctx()
            scores = {f"{name}_loss_{loss}": value for loss, value in tracker.means().items()}
            results[name] = scores
            print(
                f"epoch {self.epoch} eval {name}: {format_losses(scores)} ({report.watch.elapsed():.1f}s)", file=log.v2
            )
            if self.learning_rate_control is not None:
                self.learning_rate_control.set_epoch_error(self.epoch, scores)
                self.learning_rate_control.save()
        self._model.train()
        return results

    def _eval_one_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int) -> StepResult:
        return self.run_eval_step(data, run_ctx)

    def run_eval_step(self, data: Dict[str, Any], run_ctx: RunCtx) -> StepResult:
        """Runs ``train_step`` without an update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with autocast(self._device, self._amp_dtype):
            self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **_with_unknown_kwarg())
        return run_ctx.total_loss(), run_ctx.losses

    def _is_dataset_evaluated(self, name: str) -> bool:
        errors = self.learning_rate_control.get_epoch_error_dict(self.epoch)
        return any(key.startswith(f"{name}_loss_") for key in errors)

    def _eval_missing_for_stored_epoch(self) -> None:
        """A run stopped between storing an epoch and evaluating it catches up on the evaluation."""
        stored = self._start_epoch - 1
        missing = resume.datasets_missing_eval(self.learning_rate_control, stored, self.eval_datasets)
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

    # ---- forward -------------------------------------------------------------------------------------------------

    def init_forward(self, forward_data: Optional[Dataset] = None) -> None:
        """Task forward: the ``forward`` dataset (or ``forward_data``), checkpoint and ``forward_step``."""
        use_forward_epoch_as_load_epoch(self.config)
        self.forward_dataset = forward_data or self._dataset(*forward_dataset_options(self.config))
        self._forward_step_func = self._config_function("forward_step", "the forward step")
        self._load_model_for_inference()

    def _load_model_for_inference(self) -> None:
        """Loads ``load``, or epoch ``load_epoch`` of ``model``, or the newest stored epoch of ``model``; with none
        of them and ``allow_random_model_init`` (i6_core's forward job without a checkpoint), a fresh model."""
        path = inference_checkpoint(self.config, self.model_filename)
        if path is None:
            print("No checkpoint given: allow_random_model_init, the model keeps its initial parameters", file=log.v2)
            self._load_model(epoch=1, state=None)
        else:
            print(f"Loading checkpoint {path}", file=log.v3)
            state = checkpoints.load_model_checkpoint(path)
            self._load_model(epoch=int(state.get("epoch") or 1), state=state)
        self._start_epoch = self._final_epoch = self.epoch

    def forward(self) -> None:
        """Runs ``forward_step`` over the forward dataset, between ``forward_init_hook`` and ``forward_finish_hook``."""
        self._forward_loop(self.forward_dataset, self.epoch)

    def _forward_loop(
        self, dataset: Dataset, data_epoch: int, prepare: Optional[Callable[[RunCtx], None]] = None
    ) -> RunCtx:
        """The hooks and ``forward_step`` over one epoch of `dataset`; returns the run context they used."""
        self._model.eval()
        run_ctx = init_forward_step_run_ctx(
            device=self._device, engine=self, epoch=self.epoch, global_step=self._train_step
        )
        if prepare is not None:
            prepare(run_ctx)
        init_hook = self.config.typed_value("forward_init_hook")
        finish_hook = self.config.typed_value("forward_finish_hook")
        if init_hook is not None:
            init_hook(run_ctx, **_with_unknown_kwarg())
        watch, num_steps = Stopwatch(), 0
        batches = EpochBatches(dataset, data_epoch, self._pipeline)
        with torch.no_grad():
            for data in batches:
                run_ctx.init_step(self._train_step)
                self.run_forward_step(data, run_ctx)
                num_steps += 1
                if log.verbose[3] and watch.due(self._progress_interval):
                    print(
                        f"forward: step {num_steps}/{batches.num_batches or '?'}, {hms(watch.elapsed())}", file=log.v3
                    )
        if finish_hook is not None:
            finish_hook(run_ctx, **_with_unknown_kwarg())
        reset_run_ctx()
        print(f"Finished forwarding {num_steps} batches in {watch.elapsed():.1f}s", file=log.v3)
        return run_ctx

    # ---- priors --------------------------------------------------------------------------------------------------

    def init_compute_priors(self) -> None:
        """Task compute_priors (RETURNN's): the ``train`` dataset, checkpoint, ``forward_step`` and ``output_file``."""
        if not self.config.has("train"):
            raise ConfigError(
                f"Task compute_priors needs the dataset 'train' (ReturnnComputePriorJobV2's prior_data) in "
                f"{self.config.where()}"
            )
        if not self.config.value("output_file", ""):
            raise ConfigError(
                f"Task compute_priors needs 'output_file' (where the prior goes) in {self.config.where()}"
            )
        check_outputs({"output_file": self.config.value("output_file")})
        self.forward_dataset = self._dataset("train")
        self._forward_step_func = self._config_function("forward_step", "sums the posteriors for the prior")
        self._load_model_for_inference()

    def compute_priors(self) -> None:
        """One epoch of ``train`` (epoch 1, as RETURNN) through ``forward_step``; the prior goes to ``output_file``."""
        output_file = self.config.value("output_file")
        print(f"Computing the prior over dataset 'train', writing to {output_file}", file=log.v3)
        stamp = priors.file_stamp(output_file)  # a file already there (a rerun) is replaced, as a whole
        run_ctx = self._forward_loop(self.forward_dataset, 1, prepare=priors.init_prior_sums)
        priors.finish_priors(run_ctx, output_file, stamp)

    def run_forward_step(self, data: Dict[str, Any], run_ctx: RunCtx) -> None:
        """Runs ``forward_step`` on one batch."""
        data = self.move_data_to_device(data)
        with autocast(self._device, self._amp_dtype):
            self._forward_step_func(model=self._model, data=data, run_ctx=run_ctx, **_with_unknown_kwarg())

    # ---- files ---------------------------------------------------------------------------------------------------

    def move_data_to_device(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """Tensors to the run's device (non-blocking from pinned memory); other entries stay."""
        non_blocking = self._device.startswith("cuda")
        return {
            k: v.to(self._device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in data.items()
        }

    def _create_data_loader(self, dataset: Dataset) -> EpochDataLoader:
        """The batches of `dataset` for the current epoch, each time it is iterated (Mini-RETURNN's DataLoader)."""
        return EpochDataLoader(self, dataset)

    def save_model(self) -> None:
        """Writes the current epoch's model file."""
        scaler_state = self._updater.grad_scaler_state() if isinstance(self._updater, Updater) else None
        extra = {"grad_scaler": scaler_state} if scaler_state is not None else None
        checkpoints.save_model(self.model_filename, self.epoch, self._model, self._train_step, extra=extra)

    def _save_optimizer(self) -> None:
        """Writes the current epoch's optimizer state (a custom engine with several updaters overrides this)."""
        self._updater.save_optimizer(checkpoints.optimizer_path(self.model_filename, self.epoch))

    def _cleanup(self) -> None:
        """Deletes what the stored epochs make unneeded: optimizer states but the two newest (enough to resume if one
        is damaged), and the epochs ``cleanup_old_models`` does not keep. It depends only on the files and scores,
        so a restart repeats it where a run stopped in the middle."""
        if not self.model_filename:
            return
        checkpoints.remove_old_optimizer_states(self.model_filename, keep_newest=2)
        options = self.config.bool_or_other("cleanup_old_models", None)
        if options:
            scores = {e: d.error for e, d in self.learning_rate_control.epoch_data.items()}
            checkpoints.cleanup_old_models(self.model_filename, options, scores)


def _takes_step_idx(method: Callable) -> bool:
    params = list(inspect.signature(method).parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 3
