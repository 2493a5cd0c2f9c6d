"""The tasks without training: forward and compute_priors (:class:`InferenceTasks`, a part of the engine), and what
they and task eval load: the checkpoint and the forward dataset."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..config import Config
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches
from ..errors import ConfigError
from ..log import log
from . import priors
from .device import autocast
from .loss_tracker import Stopwatch
from .output_checks import check_outputs
from .reporting import hms
from .run_ctx import RunCtx, init_forward_step_run_ctx, reset_run_ctx, with_unknown_kwarg


def use_forward_epoch_as_load_epoch(config: Config) -> None:
    """Task forward: RETURNN's ``epoch`` (as i6_core's forward jobs set it) names the epoch to load."""
    if config.has("epoch"):
        config.set("load_epoch", config.int("epoch"))


def forward_dataset_options(config: Config) -> Tuple[str, Any]:
    """(config key, dataset options) of task forward: ``forward`` (Mini-RETURNN), else ``forward_data``, which as in
    RETURNN may also name another dataset key (``forward_data = "dev"``)."""
    if config.has("forward"):
        return "forward", config.typed_value("forward")
    if not config.has("forward_data"):
        raise ConfigError(f"Task forward needs the dataset 'forward' (or 'forward_data') in {config.where()}")
    opts = config.typed_value("forward_data")
    if not isinstance(opts, str):
        return "forward_data", opts
    named = config.typed_value(opts, None) if opts != "forward_data" else None
    if not isinstance(named, dict):
        raise ConfigError(
            f"forward_data = {opts!r} {config.origin('forward_data')} names no dataset: set it to a dataset dict "
            "or to the name of a config key holding one (e.g. 'dev')"
        )
    return opts, named


class InferenceTasks:
    """The engine's methods of tasks forward and compute_priors (``forward_step`` over a dataset between the hooks),
    a part of :class:`.engine.Engine` that uses its attributes."""

    def init_forward(self, forward_data: Optional[Dataset] = None) -> None:
        """Task forward: the ``forward`` dataset (or ``forward_data``), checkpoint and ``forward_step``."""
        self._refuse_several_ranks("forward")
        use_forward_epoch_as_load_epoch(self.config)
        self.forward_dataset = forward_data or self._dataset(*forward_dataset_options(self.config))
        self._forward_step_func = self._config_function("forward_step", "the forward step")
        self._load_model_for_inference()

    def _load_model_for_inference(self) -> None:
        """Loads ``load``, or epoch ``load_epoch`` of ``model``, or the newest complete stored epoch of ``model``;
        with none of them and ``allow_random_model_init`` (i6_core's forward job without a checkpoint), a fresh
        model."""
        checkpoint = self._epochs.inference_checkpoint()  # the rule of every task: epoch_store.py
        if checkpoint is None:
            print("No checkpoint given: allow_random_model_init, the model keeps its initial parameters", file=log.v2)
            self._load_model(epoch=1, state=None)
        else:
            print(f"Loading checkpoint {checkpoint.path}", file=log.v3)
            state = checkpoint.state
            self._load_model(epoch=int(state.get("epoch") or 1), state=state, source=checkpoint.path)
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
            init_hook(run_ctx, **with_unknown_kwarg())
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
            finish_hook(run_ctx, **with_unknown_kwarg())
        reset_run_ctx()
        print(f"Finished forwarding {num_steps} batches in {watch.elapsed():.1f}s", file=log.v3)
        return run_ctx

    def init_compute_priors(self) -> None:
        """Task compute_priors (RETURNN's): the ``train`` dataset, checkpoint, ``forward_step`` and ``output_file``."""
        self._refuse_several_ranks("compute_priors")
        if not self.config.has("train"):
            raise ConfigError(
                f"Task compute_priors needs the dataset 'train' (ReturnnComputePriorJobV2's prior_data) in "
                f"{self.config.where()}"
            )
        if not self.config.value("output_file"):
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
            self._forward_step_func(model=self._model, data=data, run_ctx=run_ctx, **with_unknown_kwarg())

    def _refuse_several_ranks(self, task: str) -> None:
        if self._ranks.world_size > 1:
            raise ConfigError(
                f"Task {task} runs in one process (its hooks write one output); it was started as "
                f"{self._ranks.world_size} processes: start it without torchrun"
            )
