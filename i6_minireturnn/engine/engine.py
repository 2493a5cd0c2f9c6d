"""The engine: trains (with eval after each epoch), evaluates and forwards models given by the config functions.

Read :func:`Engine.train_epoch` top to bottom for the training loop; features enter through small methods.
Attribute and method names follow Mini-RETURNN because ``CustomEngine`` subclasses in existing configs use them:
GAN vocoder setups call ``super(Engine, self).init_train(...)`` (hence :class:`EngineBase`), build their own
``Updater`` per optimizer (so ``_updater`` may be a dict of them), and call ``_create_data_loader``,
``get_epoch_model``, ``_load_model(epoch=, filename=)``, ``_load_optimizer(epoch)`` and ``_save_optimizer``. Those
names map onto this engine's own logic (resume.py decides which stored epochs are complete), not onto a second copy.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import random
import signal
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..config import Config
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches, PipelineOptions
from ..data.registry import init_dataset
from ..errors import CheckpointError, ConfigError, TrainingError
from ..log import log
from . import checkpoints, priors, resume
from .learning_rate_control import LearningRateControl, learning_rate_control_from_config
from .loss_tracker import LossTracker, Stopwatch
from .output_checks import check_outputs, estimate_checkpoint_bytes, warn_on_low_space
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


def resolve_device(config: Config) -> str:
    """``device`` = cpu | cuda | cuda:N | gpu (alias of cuda); default: cuda where available, else cpu."""
    device = config.value("device", None)
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "gpu":
        device = "cuda"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {config.value('device')!r} requested in {config.where()}, but no CUDA GPU is available "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda or 'no'}). Use device = 'cpu'."
            )
        return device
    if device != "cpu":
        raise ConfigError(f"Unknown device {device!r} in {config.where()}; use 'cpu', 'cuda' or 'gpu'")
    return device


def _seed_everything(seed: int) -> None:
    seed %= 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _with_unknown_kwarg() -> Dict[str, None]:
    # Step functions must take **kwargs so that new arguments can be added later (Mini-RETURNN's rule).
    return {f"__fwd_compatible_random_arg_{random.randint(0, 99)}": None}


class EngineBase:
    """Mini-RETURNN's backend-independent engine part. Custom engines call ``super(Engine, self).init_train(...)`` to
    get the datasets and learning-rate control without the model, optimizer and resume that :meth:`Engine.init_train`
    adds; :class:`Engine` is its only implementation (the helpers used here are Engine's)."""

    def init_train(self, train_data: Optional[Dataset] = None, dev_data: Optional[Dataset] = None) -> None:
        """Datasets, final epoch and learning-rate control; checks the output files and takes the model prefix lock
        (so a custom engine's training is as exclusive as ours)."""
        if train_data is None and not self.config.has("train"):
            raise ConfigError(f"Config key 'train' (the training dataset) is missing in {self.config.where()}")
        self.train_dataset = train_data or self._dataset("train")
        self._init_eval_datasets(dev_data)
        self._final_epoch = self.config_get_final_epoch(self.config)
        self.learning_rate_control = learning_rate_control_from_config(self.config)
        self.learning_rate = self.learning_rate_control.default_learning_rate
        check_outputs(self._train_outputs())
        if self.model_filename and self._run_lock is None:
            self._run_lock = ModelPrefixLock(self.model_filename)
            self._run_lock.acquire()


class EpochDataLoader:
    """What ``Engine._create_data_loader`` returns: iterating it yields the batches of the engine's current epoch
    (our batch plan, :class:`EpochBatches`), as iterating Mini-RETURNN's DataLoader does after the epoch was set."""

    def __init__(self, engine: Engine, dataset: Dataset):
        self._engine = engine
        self.dataset = dataset

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(EpochBatches(self.dataset, self._engine.epoch, self._engine._pipeline))


class Engine(EngineBase):
    """Runs the tasks ``train``, ``eval`` and ``forward`` for one config."""

    FILE_POSTFIX = checkpoints.MODEL_SUFFIX

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
        self._amp_dtype = self._read_amp_dtype()
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
        self._stop_on_nonfinite = config.bool("stop_on_nonfinite_train_score", True)
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

    def _read_amp_dtype(self) -> Optional[torch.dtype]:
        options = self.config.typed_value("torch_amp_options", None)
        if options is None:
            return None
        dtype = options.get("dtype") if isinstance(options, dict) else options
        if dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"torch_amp_options dtype must be 'float16' or 'bfloat16', got {dtype!r}")
        return getattr(torch, dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self._device).type, dtype=self._amp_dtype)

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
        _seed_everything(self._random_seed * 27644437 + epoch * 193939 + step * 19937 + 479001599)
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
        _seed_everything(self._random_seed * 1_000_003 + self.epoch)

    def train_epoch(self) -> None:
        """One epoch: steps over the training data, then save, evaluate and clean up."""
        print(f"start epoch {self.epoch} with learning rate {self.learning_rate} ...", file=log.v3)
        batches = EpochBatches(self.train_dataset, self.epoch, self._pipeline)
        stop_on_nonfinite = self._stop_on_nonfinite
        tracker = LossTracker(self._device, keep_step_values=log.verbose[5], skip_nonfinite=not stop_on_nonfinite)
        self._model.train()
        run_ctx = init_train_step_run_ctx(
            device=self._device, engine=self, epoch=self.epoch, global_step=self._train_step
        )
        first_step, watch = self._train_step, Stopwatch()
        for step_idx, data in enumerate(batches):
            step_start = time.monotonic()
            run_ctx.init_step(self._train_step)
            total_loss, losses = self._run_train_step(data, run_ctx, step_idx)
            tracker.add(losses, total_loss, global_step=self._train_step, step_time=time.monotonic() - step_start)
            self._train_step += 1
            if (step_idx + 1) % self._log_step_interval == 0:
                self._log_point(
                    tracker, "train", step_idx + 1, batches.num_batches, watch, first_step, stop_on_nonfinite
                )
        for updater in self._updaters():  # a partial gradient accumulation at the epoch end still counts
            if hasattr(updater, "apply_update"):  # an updater written for Mini-RETURNN updates inside step()
                updater.apply_update()
        self._log_point(tracker, "train", tracker.num_steps, batches.num_batches, None, first_step, stop_on_nonfinite)
        reset_run_ctx()
        self._finish_train_epoch(tracker, watch.elapsed())

    def _finish_train_epoch(self, tracker: LossTracker, seconds: float) -> None:
        means = tracker.means()
        skipped = tracker.nonfinite()[0] if tracker.skip_nonfinite else 0
        summary = f"epoch {self.epoch}: trained {tracker.num_steps} steps in {seconds:.1f}s, " + _format_losses(means)
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

    def _run_train_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int) -> StepResult:
        """Calls :func:`run_train_step` (which a CustomEngine may override, with or without `step_idx`)."""
        if self._run_train_step_takes_step_idx:
            return self.run_train_step(data, run_ctx, step_idx)
        return self.run_train_step(data, run_ctx)

    def run_train_step(self, data: Dict[str, Any], run_ctx: RunCtx, step_idx: int = 0) -> StepResult:
        """Runs ``train_step`` and the parameter update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with self._autocast():
            self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **_with_unknown_kwarg())
        total_loss = run_ctx.total_loss()
        if not self._stop_on_nonfinite and not bool(
            torch.isfinite(total_loss.detach())
        ):  # syncs; only in this opt-in mode
            self._updater.skip_step(step_idx)
        else:
            self._updater.step(total_loss, step_idx)
        return total_loss, run_ctx.losses

    def _log_point(
        self,
        tracker: LossTracker,
        what: str,
        steps_done: int,
        num_batches: Optional[int],
        watch: Optional[Stopwatch],
        first_step: int,
        stop_on_nonfinite: bool,
    ) -> None:
        """Where the host reads device values: step lines (verbosity 5), non-finite check, progress with ETA."""
        for step, step_time, values in tracker.pop_step_lines():
            line = f"{what} epoch {self.epoch} step {step}, step time {step_time:.3f}s, {_format_losses(values)}"
            if self._device.startswith("cuda"):
                line += f", GPU mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            print(line, file=log.v5)
        if stop_on_nonfinite and what == "train":
            count, first = tracker.nonfinite()
            if count:
                raise TrainingError(
                    f"Non-finite training loss in epoch {self.epoch}, step {first_step + first}; stopped without "
                    "saving this epoch (set stop_on_nonfinite_train_score = False to skip such steps)"
                )
        if watch is not None and log.verbose[3] and watch.due(self._progress_interval):
            elapsed = watch.elapsed()
            progress = f"{what} epoch {self.epoch}: step {steps_done}"
            if num_batches:
                eta = elapsed / steps_done * (num_batches - steps_done)
                progress += f"/{num_batches} ({100.0 * steps_done / num_batches:.0f}%), ETA {_hms(eta)}"
            print(f"{progress}, elapsed {_hms(elapsed)}, {_format_losses(tracker.means())}", file=log.v3)

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
            tracker, watch = LossTracker(self._device, keep_step_values=log.verbose[5]), Stopwatch()
            batches = EpochBatches(dataset, self.epoch, self._pipeline)
            with torch.no_grad():
                for step_idx, data in enumerate(batches):
                    step_start = time.monotonic()
                    run_ctx.init_step(self._train_step)
                    total_loss, losses = self.run_eval_step(data, run_ctx)
                    tracker.add(losses, total_loss, global_step=step_idx, step_time=time.monotonic() - step_start)
                    if (step_idx + 1) % self._log_step_interval == 0:
                        self._log_point(tracker, f"eval {name}", step_idx + 1, batches.num_batches, watch, 0, False)
            self._log_point(tracker, f"eval {name}", tracker.num_steps, batches.num_batches, None, 0, False)
            reset_run_ctx()
            scores = {f"{name}_loss_{loss}": value for loss, value in tracker.means().items()}
            results[name] = scores
            print(f"epoch {self.epoch} eval {name}: {_format_losses(scores)} ({watch.elapsed():.1f}s)", file=log.v2)
            if self.learning_rate_control is not None:
                self.learning_rate_control.set_epoch_error(self.epoch, scores)
                self.learning_rate_control.save()
        self._model.train()
        return results

    def run_eval_step(self, data: Dict[str, Any], run_ctx: RunCtx) -> StepResult:
        """Runs ``train_step`` without an update; returns (total loss, losses by name)."""
        data = self.move_data_to_device(data)
        with self._autocast():
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
        self.forward_dataset = forward_data or self._forward_dataset()
        self._forward_step_func = self._config_function("forward_step", "the forward step")
        self._load_model_for_inference()

    def _forward_dataset(self) -> Dataset:
        """``forward`` (Mini-RETURNN), else ``forward_data``: a dataset dict, or as in RETURNN the name of another
        dataset key (``forward_data = "dev"``)."""
        if self.config.has("forward"):
            return self._dataset("forward")
        if not self.config.has("forward_data"):
            raise ConfigError(f"Task forward needs the dataset 'forward' (or 'forward_data') in {self.config.where()}")
        opts = self.config.typed_value("forward_data")
        if not isinstance(opts, str):
            return self._dataset("forward_data", opts)
        named = self.config.typed_value(opts, None) if opts != "forward_data" else None
        if not isinstance(named, dict):
            raise ConfigError(
                f"forward_data = {opts!r} in {self.config.where()} names no dataset: set it to a dataset dict "
                "or to the name of a config key holding one (e.g. 'dev')"
            )
        return self._dataset(opts, named)

    def _load_model_for_inference(self) -> None:
        """Loads ``load``, or epoch ``load_epoch`` of ``model``, or the newest stored epoch of ``model``; with none
        of them and ``allow_random_model_init`` (i6_core's forward job without a checkpoint), a fresh model."""
        path = self._inference_checkpoint()
        if path is None:
            print("No checkpoint given: allow_random_model_init, the model keeps its initial parameters", file=log.v2)
            self._load_model(epoch=1, state=None)
        else:
            print(f"Loading checkpoint {path}", file=log.v3)
            state = checkpoints.load_model_checkpoint(path)
            self._load_model(epoch=int(state.get("epoch") or 1), state=state)
        self._start_epoch = self._final_epoch = self.epoch

    def _inference_checkpoint(self) -> Optional[str]:
        """The checkpoint file to load, or None where ``allow_random_model_init`` permits a fresh model."""
        if self.config.value("load", ""):
            return checkpoints.checkpoint_file(self.config.value("load"))
        if self.model_filename and self.config.has("load_epoch"):
            return checkpoints.checkpoint_file(
                checkpoints.model_path(self.model_filename, self.config.int("load_epoch"))
            )
        if self.model_filename and checkpoints.existing_epochs(self.model_filename):
            return list(checkpoints.existing_epochs(self.model_filename).values())[-1]
        if self.config.bool("allow_random_model_init", False):
            return None
        raise ConfigError(
            f"No model to load: set 'load' (a checkpoint file) or 'model' in {self.config.where()} "
            "(or allow_random_model_init = True to run a freshly initialised model)"
        )

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
                        f"forward: step {num_steps}/{batches.num_batches or '?'}, {_hms(watch.elapsed())}", file=log.v3
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
        with self._autocast():
            self._forward_step_func(model=self._model, data=data, run_ctx=run_ctx, **_with_unknown_kwarg())

    # ---- files ---------------------------------------------------------------------------------------------------

    def move_data_to_device(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """Tensors to the run's device (non-blocking from pinned memory); other entries stay."""
        non_blocking = self._device.startswith("cuda")
        return {
            k: v.to(self._device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
            for k, v in data.items()
        }

    def get_epoch_model_filename(self, epoch: Optional[int] = None) -> str:
        """``<model>.NNN`` of an epoch (default: the current one)."""
        return checkpoints.epoch_prefix(self.model_filename, epoch or self.epoch)

    @classmethod
    def epoch_model_filename(cls, model_filename: str, epoch: int) -> str:
        """``<model_filename>.NNN`` (Mini-RETURNN's classmethod)."""
        return checkpoints.epoch_prefix(model_filename, epoch)

    @classmethod
    def get_file_postfix(cls) -> str:
        """``.pt``: what a model file adds to its ``<model>.NNN`` name."""
        return cls.FILE_POSTFIX

    def get_epoch_str(self) -> str:
        """``epoch N``, for log lines of custom engines."""
        return f"epoch {self.epoch}"

    @classmethod
    def get_existing_models(cls, config: Config) -> Dict[int, str]:
        """Stored epochs of ``model``, oldest first: epoch -> ``<model>.NNN`` (complete or not; see get_epoch_model)."""
        model = config.value("model", None)
        if not model:
            return {}
        return {epoch: checkpoints.epoch_prefix(model, epoch) for epoch in sorted(checkpoints.existing_epochs(model))}

    @classmethod
    def get_epoch_model(cls, config: Config) -> Tuple[Optional[int], Optional[str]]:
        """(epoch, ``<model>.NNN`` or checkpoint file) to start from, Mini-RETURNN's classmethod that custom engines
        call as ``self.get_epoch_model(self.config)``; the epoch is the one stored, so training goes on with epoch + 1.

        Task train takes the same decision as our own start (resume.py): ``load_epoch`` / ``start_epoch``, else the
        newest complete stored epoch (its learning_rates entry written; a model file without it is an epoch that was
        not finished), else ``import_model_train_epoch1`` as (0, file), else ``load`` as (None, file), else
        (None, None) for a fresh model. Other tasks: ``load`` as (None, file; the epoch comes from the checkpoint),
        else epoch ``load_epoch`` or the newest stored epoch of ``model``.
        """
        model = config.value("model", None)
        if config.value("task", "train") != "train":
            if config.value("load", ""):
                return None, checkpoints.checkpoint_file(config.value("load"))
            stored = checkpoints.existing_epochs(model) if model else {}
            epoch = config.int("load_epoch", None) or (max(stored) if stored else None)
            return (epoch, checkpoints.epoch_prefix(model, epoch)) if model and epoch else (None, None)
        load_epoch = config.int("load_epoch", None)
        if config.value("start_epoch", "auto") != "auto" and load_epoch is None:
            load_epoch = config.int("start_epoch", 1) - 1
        if model and load_epoch:
            return load_epoch, checkpoints.epoch_prefix(model, load_epoch)
        if model and load_epoch is None:
            complete = resume.complete_epochs(model, learning_rate_control_from_config(config))
            if complete:
                return complete[0], checkpoints.epoch_prefix(model, complete[0])
        if config.value("import_model_train_epoch1", ""):
            return 0, checkpoints.checkpoint_file(config.value("import_model_train_epoch1"))
        if config.value("load", ""):
            return None, checkpoints.checkpoint_file(config.value("load"))
        return None, None

    def _create_data_loader(self, dataset: Dataset) -> EpochDataLoader:
        """The batches of `dataset` for the current epoch, each time it is iterated (Mini-RETURNN's DataLoader)."""
        return EpochDataLoader(self, dataset)

    def save_model(self) -> None:
        """Writes the current epoch's model file."""
        scaler_state = self._updater.grad_scaler_state() if isinstance(self._updater, Updater) else None
        extra = {"grad_scaler": scaler_state} if scaler_state is not None else None
        checkpoints.save_model(self.model_filename, self.epoch, self._model, self._train_step, extra=extra)

    def _save_model(self) -> None:
        """Alias of :meth:`save_model` for custom engines that call the private name."""
        self.save_model()

    def _check_epoch_missing_eval(self) -> None:
        """Mini-RETURNN's name of :meth:`_eval_missing_for_stored_epoch`."""
        self._eval_missing_for_stored_epoch()

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


def _format_losses(values: Dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.5g}" for name, value in sorted(values.items())) or "no losses"


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
