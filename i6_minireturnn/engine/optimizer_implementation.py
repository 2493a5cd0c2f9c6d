"""Which of torch's implementations an optimizer runs (fused kernels, foreach, per tensor), and restoring a stored
optimizer state without changing it.

On a GPU, Adam and AdamW use torch's fused kernels unless the ``optimizer`` dict chooses (``fused`` or ``foreach``):
the same update in one kernel launch per group of tensors instead of about a dozen per step, which a small model,
whose steps are limited by launching kernels, gains several percent of its step rate from. On a CPU the
implementation stays torch's default (as in Mini-RETURNN).

A stored state carries the implementation flags of the run that wrote it; torch's ``load_state_dict`` would take
them over (a checkpoint written on a GPU with fused kernels, loaded where they are missing, fails at the first step).
They are an implementation choice, not a hyper-parameter: the loading run keeps its own. The step counters are
placed where the kept implementation reads them: on the parameters' device for fused or capturable updates, in host
memory otherwise. A counter on the GPU under the foreach or per-tensor update is read back to the host for every
parameter at every step (a synchronisation each time, which stalls the launching of kernels for the whole resumed
training).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

IMPLEMENTATION_FLAGS = ("fused", "foreach")  # per-group optimizer options that choose an implementation only


def default_implementation(cls: type, options: Dict[str, Any], params: Sequence[torch.Tensor]) -> Dict[str, Any]:
    """Options to add for `cls` (an optimizer class) with the config's `options` over `params`: ``fused=True`` for
    torch's Adam and AdamW where every parameter is a floating-point tensor on a GPU and the config chooses no
    implementation (nor ``differentiable``, which the fused kernels do not support); nothing otherwise."""
    if cls not in (torch.optim.Adam, torch.optim.AdamW):  # subclasses may override step: theirs to choose
        return {}
    if any(flag in options for flag in IMPLEMENTATION_FLAGS) or options.get("differentiable"):
        return {}
    if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
        return {}
    return {"fused": True}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
    """Loads `state` (a state dict read into host memory) into `optimizer`, keeping the optimizer's implementation
    flags (see the module) and placing each step counter where that implementation reads it. Other state tensors go
    to their parameters' device and dtype (torch's own rule)."""
    kept = [{flag: group[flag] for flag in IMPLEMENTATION_FLAGS if flag in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept):
        for flag in IMPLEMENTATION_FLAGS:
            if flag in flags:
                group[flag] = flags[flag]
            else:
                group.pop(flag, None)
        on_device = bool(group.get("fused")) or bool(group.get("capturable"))
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                if on_device:
                    optimizer.state[param]["step"] = step.to(dtype=torch.float32, device=param.device)
                else:
                    optimizer.state[param]["step"] = step.to(device="cpu")
        for key, value in group.items():  # e.g. a capturable optimizer's learning rate tensor
            if key != "params" and isinstance(value, torch.Tensor) and group["params"]:
                group[key] = value.to(group["params"][0].device)
