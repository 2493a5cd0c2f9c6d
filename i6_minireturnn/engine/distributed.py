"""Training on several processes with torch.distributed: started by torchrun (or the cluster's launcher through it),
asked for with the config key ``torch_distributed`` (RETURNN mainline's name).

One process per GPU (or CPU process with gloo). The model is wrapped in ``DistributedDataParallel`` (reduce_type
``"grad"``, the default) or its parameters are averaged every ``param_sync_step`` steps (``"param"``). Everything the
user's code sees stays the plain module: ``get_model``, ``train_step``'s ``model``, ``get_run_ctx()``, checkpoints.
Calls of the plain module's ``forward`` during training go through the DDP wrapper (:meth:`Distributed.train_forward`),
so DDP's gradient reduction works for step functions written for one process.

Collectives happen only at fixed points that every rank reaches in the same order: log points (every
``log_step_interval`` steps), the epoch end, evaluation ends, stores, and -- only with opt-in per-step checks
(``stop_on_nonfinite_train_score = False``, streamed datasets) -- steps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Optional, Union

import torch
import torch.distributed as dist

from ..config import Config
from ..errors import ConfigError
from ..log import log

_REDUCE_TYPES = ("grad", "param")
_OPTIONS = ("reduce_type", "param_sync_step", "find_unused_parameters", "gradient_as_bucket_view", "backend", "timeout")

# Whether this process joined a process group (the command line then ends the process without finalization, see
# i6_minireturnn.__main__._exit_without_finalization).
_joined_process_group = False


@dataclass(frozen=True)
class DistributedOptions:
    """The entries of ``torch_distributed``; unknown entries are an error naming them."""

    reduce_type: str = "grad"
    param_sync_step: int = 1
    find_unused_parameters: bool = False
    gradient_as_bucket_view: bool = True
    backend: Optional[str] = None  # default: nccl on CUDA, gloo on CPU
    timeout: float = 1800.0  # seconds a collective may wait for another rank

    @classmethod
    def from_config(cls, config: Config) -> DistributedOptions:
        opts = config.typed_value("torch_distributed")
        if opts is True:
            opts = {}
        if not isinstance(opts, dict):
            raise ConfigError(
                "torch_distributed must be a dict (e.g. {} or {'reduce_type': 'grad'}) "
                + config.origin("torch_distributed")
            )
        unknown = sorted(set(opts) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"torch_distributed {config.origin('torch_distributed')} has unknown entries {', '.join(unknown)}; "
                f"known: {', '.join(_OPTIONS)}"
            )
        options = cls(**opts)
        if options.reduce_type not in _REDUCE_TYPES:
            raise ConfigError(
                f"torch_distributed reduce_type {options.reduce_type!r} {config.origin('torch_distributed')}; "
                "use 'grad' (DDP) or 'param'"
            )
        if not isinstance(options.param_sync_step, int) or options.param_sync_step < 1:
            raise ConfigError(
                f"torch_distributed param_sync_step must be an int >= 1 {config.origin('torch_distributed')}"
            )
        return options


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class SingleProcess:
    """The engine's view of a run in one process: rank 0 of 1; the collectives do nothing."""

    rank = 0
    world_size = 1
    is_main = True
    reduce_type = None

    def device(self, device: str) -> str:
        return device

    def close(self, *, completed: bool = False) -> None:
        pass

    def wrap(self, model: torch.nn.Module) -> None:
        pass

    def train_forward(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def after_update(self, model: torch.nn.Module, global_step: int) -> None:
        pass

    def before_store(self, model: torch.nn.Module) -> None:
        pass

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        return flag

    def broadcast_object(self, value: Any) -> Any:
        return value

    def barrier(self) -> None:
        pass


class Distributed:
    """This process's place in the process group, and the few collectives the engine needs."""

    def __init__(self, options: DistributedOptions, device_type: str):
        self.options = options
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = options.backend or ("nccl" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=options.timeout))
        global _joined_process_group
        _joined_process_group = True
        self.backend = dist.get_backend()
        self._ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
        print(
            f"Distributed training: rank {self.rank} of {self.world_size} (local rank {self.local_rank}), "
            f"backend {self.backend}, reduce_type {options.reduce_type}",
            file=log.v3,
        )

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    @property
    def reduce_type(self) -> str:
        """``grad`` (DDP) or ``param`` (parameter averaging)."""
        return self.options.reduce_type

    def device(self, device: str) -> str:
        """The process's device: ``cuda:LOCAL_RANK`` where the config asks for CUDA."""
        return f"cuda:{self.local_rank}" if device.startswith("cuda") else device

    def close(self, *, completed: bool = False) -> None:
        """Leaves the process group. After a completed task all ranks first wait for each other: a rank that tore its
        connections down while another still used them ended that one with SIGABRT at exit (gloo)."""
        if dist.is_initialized():
            if completed:
                dist.barrier()
            dist.destroy_process_group()

    # ---- the model ------------------------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> None:
        """Creates the DDP wrapper of `model` (reduce_type grad); rank 0's parameters are broadcast to all ranks."""
        if self.options.reduce_type != "grad":
            self.average_parameters(model)  # the same start on every rank
            return
        if not any(p.requires_grad for p in model.parameters()):
            return
        device = next(model.parameters()).device
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.options.find_unused_parameters,
            gradient_as_bucket_view=self.options.gradient_as_bucket_view,
        )

    @contextlib.contextmanager
    def train_forward(self, model: torch.nn.Module) -> Iterator[None]:
        """While active, calling `model` (the plain module) runs DDP's forward, which prepares the gradient reduction
        of the following backward; the instance attribute is removed afterwards, so copies of the model (EMA) and
        evaluation see the plain forward."""
        if self._ddp is None:
            yield
            return
        model.forward = _ForwardThroughDDP(self._ddp, type(model).forward.__get__(model))
        try:
            yield
        finally:
            del model.forward

    def grad_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` for the micro-steps of a gradient accumulation that do not end it."""
        if self._ddp is None or sync:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def after_update(self, model: torch.nn.Module, global_step: int) -> None:
        """reduce_type param: averages the parameters every ``param_sync_step`` global steps."""
        if self.options.reduce_type == "param" and global_step % self.options.param_sync_step == 0:
            self.average_parameters(model)

    def before_store(self, model: torch.nn.Module) -> None:
        """reduce_type param: the stored model is the average of the ranks' models (DDP keeps them equal anyway)."""
        if self.options.reduce_type == "param":
            self.average_parameters(model)

    def average_parameters(self, model: torch.nn.Module) -> None:
        """reduce_type param: every rank takes the mean of the ranks' parameters and floating-point buffers."""
        with torch.no_grad():
            tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
            for tensor in tensors:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
                tensor.div_(self.world_size)

    # ---- collectives ----------------------------------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """The sum (or min / max) of `tensor` over the ranks, as a new tensor."""
        result = tensor.clone()
        dist.all_reduce(result, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        return result

    def union_of(self, names: List[str]) -> List[str]:
        """The sorted union of the ranks' `names`."""
        gathered: List[Optional[List[str]]] = [None] * self.world_size
        dist.all_gather_object(gathered, names)
        return sorted(set().union(*gathered))

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """Whether `flag` (a bool tensor) holds on every rank."""
        return self.all_reduce(flag.to(torch.int32), "min").bool()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        box: List[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Waits until every rank got here."""
        dist.barrier()


class _ForwardThroughDDP:
    """The plain module's forward while training: the outer call goes through DDP, whose own call of the module
    then reaches the original forward. The module's hooks ran with the outer call; DDP's call runs without them (they
    would run twice per step)."""

    _HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel, original: Callable[..., Any]):
        self._ddp = ddp
        self._original = original
        self._inside = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._inside:
            return self._original(*args, **kwargs)
        module = self._ddp.module
        hooks = {name: getattr(module, name) for name in self._HOOKS if hasattr(module, name)}
        self._inside = True
        try:
            for name, value in hooks.items():
                setattr(module, name, type(value)())  # the same kind of dict, empty
            return self._ddp(*args, **kwargs)
        finally:
            for name, value in hooks.items():
                setattr(module, name, value)
            self._inside = False


def joined_process_group() -> bool:
    """Whether this process was a rank of a process group (also after it left it)."""
    return _joined_process_group


def init_distributed(config: Config, device: str) -> Union[Distributed, SingleProcess]:
    """The process group where ``torch_distributed`` asks for it and torchrun started the run; else one process.
    Several processes without ``torch_distributed`` are an error: each would train the whole model and write the same
    files."""
    requested = config.typed_value("torch_distributed") is not None
    world_size = launched_world_size()
    if requested:
        options = DistributedOptions.from_config(config)
        if world_size > 1 or "RANK" in os.environ:
            return Distributed(options, torch.device(device).type)
        print("torch_distributed is set, but the run was not started by torchrun: training in one process", file=log.v2)
        return SingleProcess()
    if world_size > 1:
        raise ConfigError(
            f"Started as {world_size} processes (WORLD_SIZE), but {config.where()} does not set torch_distributed: "
            "each process would train the whole model on all data and write the same files. Add "
            "torch_distributed = {} (DistributedDataParallel) to the config, or start one process."
        )
    if config.bool("use_horovod") and "RANK" not in os.environ:
        raise ConfigError(
            f"use_horovod = True {config.origin('use_horovod')}, but the run was not started by torchrun: "
            "this runtime trains on several processes through torch.distributed only "
            "(i6_core: distributed_launch_cmd='torchrun', and torch_distributed = {} in the config)"
        )
    return SingleProcess()
