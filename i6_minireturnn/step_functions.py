"""Checks, before anything runs, that the config's step functions and hooks can take the arguments the runtime
passes them (Mini-RETURNN's calling convention), so that a wrong signature stops the run with a message naming the
function and what to change, not with a TypeError deep in the first step.

The engine calls (each with an extra unknown keyword argument, as Mini-RETURNN, so that arguments can be added):

- ``get_model(epoch=, step=, **extra)`` (a function, or a class whose ``__init__`` takes these),
- ``train_step(model=, data=, run_ctx=, **extra)`` and ``forward_step(model=, data=, run_ctx=, **extra)``,
- ``forward_init_hook(run_ctx, **extra)`` and ``forward_finish_hook(run_ctx, **extra)`` (run_ctx positional).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

# stands for the unknown keyword argument the engine adds to every call
_EXTRA_KWARG = "__fwd_compatible_random_arg_0"


@dataclass(frozen=True)
class Call:
    """How the engine calls one config function."""

    positional: Tuple[str, ...]  # names of the arguments passed positionally, in order
    keywords: Tuple[str, ...]  # names of the arguments passed by keyword
    expected: str  # the signature to write, as the README documents it
    engine_methods: Tuple[str, ...]  # engine methods that make the call (a CustomEngine overriding one decides itself)


CALLS: Dict[str, Call] = {
    "get_model": Call((), ("epoch", "step"), "get_model(*, epoch, step, **kwargs)", ("_load_model",)),
    "train_step": Call(
        (),
        ("model", "data", "run_ctx"),
        "train_step(*, model, data, run_ctx, **kwargs)",
        ("run_train_step", "run_eval_step"),
    ),
    "forward_step": Call(
        (), ("model", "data", "run_ctx"), "forward_step(*, model, data, run_ctx, **kwargs)", ("run_forward_step",)
    ),
    "forward_init_hook": Call(
        ("run_ctx",), (), "forward_init_hook(run_ctx, **kwargs)", ("forward", "compute_priors", "_forward_loop")
    ),
    "forward_finish_hook": Call(
        ("run_ctx",), (), "forward_finish_hook(run_ctx, **kwargs)", ("forward", "compute_priors", "_forward_loop")
    ),
}

# the functions each task calls
TASK_FUNCTIONS: Dict[str, Tuple[str, ...]] = {
    "train": ("get_model", "train_step"),
    "eval": ("get_model", "train_step"),
    "forward": ("get_model", "forward_step", "forward_init_hook", "forward_finish_hook"),
    "compute_priors": ("get_model", "forward_step", "forward_init_hook", "forward_finish_hook"),
    "initialize_model": ("get_model",),
}


def check_config_functions(config: Config) -> None:
    """Raises a :class:`ConfigError` for the first function of the config's task whose signature cannot take the
    runtime's call. Functions a ``CustomEngine`` calls itself (it overrides the engine method making the call) and
    callables without a readable signature are left alone."""
    task = config.peek("task", "train")
    custom_engine = config.peek("CustomEngine", None)
    for key in TASK_FUNCTIONS.get(task if isinstance(task, str) else "", ()):
        func = config.peek(key, None)
        if func is None or not callable(func):
            continue  # missing or not a function: the engine names that when it needs the function
        call = CALLS[key]
        if _overridden_by(custom_engine, call.engine_methods):
            continue
        problem = signature_problem(func, call)
        if problem:
            raise ConfigError(f"{_describe(key, func)} in {_defined_where(config, func)} {problem}")


def signature_problem(func: Callable, call: Call) -> Optional[str]:
    """What keeps `func` from taking `call` (None where it can), phrased as what to change."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*call.positional, **{name: None for name in call.keywords}, **{_EXTRA_KWARG: None})
        return None
    except TypeError:
        pass
    params = list(signature.parameters.values())
    by_name = {p.name: p for p in params}
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    problems: List[str] = []
    positional_slots = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if (
        call.positional
        and len(positional_slots) < len(call.positional)
        and not any(p.kind is p.VAR_POSITIONAL for p in params)
    ):
        names = ", ".join(call.positional)
        problems.append(f"must take {names} as its first positional argument (the runtime passes it positionally)")
    positional_only = [n for n in call.keywords if n in by_name and by_name[n].kind is by_name[n].POSITIONAL_ONLY]
    if positional_only:
        problems.append(
            f"takes {', '.join(positional_only)} positional-only (before '/'), but the runtime passes "
            f"{'it' if len(positional_only) == 1 else 'them'} by name: remove the '/'"
        )
    if not takes_var_kw:
        unknown = [n for n in call.keywords if n not in by_name]
        if unknown:
            problems.append(f"has no parameter {', '.join(unknown)}, which the runtime passes by name")
        problems.append("must also take **kwargs (the runtime passes extra keyword arguments, as Mini-RETURNN)")
    # parameters the call fills: by name, and the first positional slots
    passed = set(call.keywords) | set(call.positional) | {p.name for p in positional_slots[: len(call.positional)]}
    required = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in passed
    ]
    if required:
        problems.append(
            f"requires {', '.join(required)}, which the runtime does not pass: give "
            f"{'it a default' if len(required) == 1 else 'them defaults'} (or bind with functools.partial)"
        )
    if not problems:
        problems.append("cannot take the runtime's arguments")
    return "; ".join(problems) + f". The runtime calls {call.expected}."


def _describe(key: str, func: Any) -> str:
    """``train_step(*, model, data, run_ctx)``, the way the config defines it (annotations left out)."""
    shown = _plain_signature(func)
    if isinstance(func, type):
        return f"{key} = {func.__name__} (a class; its __init__ takes {shown})"
    if isinstance(func, functools.partial):
        return f"{key} = functools.partial({getattr(func.func, '__name__', 'function')}, ...) taking {shown}"
    name = getattr(func, "__name__", key)
    return f"{key}{shown}" if name == key else f"{key} = {name}{shown}"


def _plain_signature(func: Any) -> str:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=params, return_annotation=signature.empty))


def _defined_where(config: Config, func: Any) -> str:
    """The config file, and the file and line of the definition where it is another one (a model file)."""
    target = func.func if isinstance(func, functools.partial) else func
    target = inspect.unwrap(target.__init__ if isinstance(target, type) else target)
    code = getattr(target, "__code__", None)
    where = config.where()
    if code is None:
        return where
    if code.co_filename in config.files:
        return f"config file {code.co_filename} (line {code.co_firstlineno})"
    return f"{where} (defined in {code.co_filename}, line {code.co_firstlineno})"


def _overridden_by(custom_engine: Any, methods: Tuple[str, ...]) -> bool:
    """Whether the config's CustomEngine class overrides one of the engine methods."""
    if not isinstance(custom_engine, type):
        return False
    from .engine.engine import Engine

    if not issubclass(custom_engine, Engine) or custom_engine is Engine:
        return False
    return any(getattr(custom_engine, m, None) is not getattr(Engine, m, None) for m in methods)
