"""Averages the parameters of model checkpoints, with the command line of RETURNN's ``tools/torch_avg_checkpoints.py``.

    python -m i6_minireturnn.tools.average_checkpoints --checkpoints A.pt B.pt ... --output_path OUT.pt
    python tools/torch_avg_checkpoints.py --checkpoints model.080,model.090 --postfix .pt --output_path avg.pt

Checkpoints are RETURNN's ``{"model": state_dict, "epoch": int, "step": int}``. The floating-point tensors of the
state dicts are averaged; everything else there (integer buffers such as ``num_batches_tracked``) is taken from the
last checkpoint. As in RETURNN, ``epoch`` and ``step`` of the output are the largest of the inputs (for checkpoints
listed in training order: the last one's), ``merged_epochs`` / ``merged_steps`` list those of every input, and other
top-level entries come from the first checkpoint. All checkpoints must have the same parameters with the same shapes;
the output appears complete or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..atomic_file import save_torch_atomic
from ..engine.checkpoints import MODEL_SUFFIX, load_model_checkpoint
from ..errors import CheckpointError
from . import program_name
from .dataset_source import run_tool

# top-level entries the averaging computes itself (the others are copied from the first checkpoint)
_COMPUTED_KEYS = ("model", "epoch", "step", "merged_epochs", "merged_steps")


def checkpoint_paths(names: Sequence[str], *, separator: str = ",", prefix: str = "", postfix: str = "") -> List[str]:
    """The checkpoint files named on the command line: each argument may hold several names joined by `separator`
    ("" keeps arguments whole), each name becomes ``prefix + name + postfix``. Like the runtime's ``load`` option, a
    name may leave out the ``.pt`` suffix (RETURNN's tool needs ``--postfix .pt`` for that)."""
    paths = []
    for arg in names:
        for name in arg.split(separator) if separator else [arg]:
            if not name:
                continue  # "a.pt,b.pt," or an empty argument names nothing
            path = prefix + name + postfix
            candidates = [path] if path.endswith(MODEL_SUFFIX) else [path, path + MODEL_SUFFIX]
            found = next((c for c in candidates if os.path.isfile(c)), None)
            if found is None:
                affixes = f" (prefix {prefix!r}, postfix {postfix!r}, name {name!r})" if prefix or postfix else ""
                tried = f", also tried {candidates[1]!r}" if len(candidates) > 1 else ""
                raise CheckpointError(f"Input checkpoint not found: {path!r}{affixes}{tried}")
            paths.append(found)
    if not paths:
        raise CheckpointError("No input checkpoints given (--checkpoints)")
    return paths


def average_checkpoints(paths: Sequence[str]) -> Dict[str, Any]:
    """The averaged checkpoint of the given files, in RETURNN's layout (see the module docstring)."""
    if not paths:
        raise CheckpointError("No input checkpoints given")
    first_path = paths[0]
    reference: Dict[str, Any] = {}  # parameter -> (is float, shape) in the first checkpoint, in its order
    sums: Dict[str, torch.Tensor] = {}
    # the last checkpoint's non-float entries (they go out as they are) and float dtypes; keeping no float tensor
    # of an older checkpoint means no more than one loaded checkpoint in memory besides the sums
    last_values: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    epochs: List[Any] = []
    steps: List[Any] = []
    for index, path in enumerate(paths):
        print(f"Reading checkpoint {path}")
        state = load_model_checkpoint(path)
        model_state = state["model"]
        if not isinstance(model_state, dict):
            raise CheckpointError(f"{path!r}: 'model' is a {type(model_state).__name__}, expected a state dict")
        if index == 0:
            reference = {name: _describe(value) for name, value in model_state.items()}
        else:
            _check_same_parameters(model_state, reference, path=path, first_path=first_path)
        for name, value in model_state.items():
            if reference[name][0]:
                # Sum in at least float32: half-precision sums of several checkpoints lose digits.
                acc_dtype = torch.promote_types(value.dtype, torch.float32)
                if index == 0:
                    # A copy, never the loaded tensor itself: tied parameters share storage in the loaded state,
                    # and adding into one of them in place would add into the other as well.
                    sums[name] = value.to(dtype=acc_dtype, copy=True)
                else:
                    sums[name].add_(value.to(dtype=acc_dtype))
            last_values[name] = value.dtype if reference[name][0] else value
        epochs.extend(state.get("merged_epochs", ()))  # an input that is itself an average lists its epochs
        steps.extend(state.get("merged_steps", ()))
        epochs.append(state.get("epoch"))
        steps.append(state.get("step"))
        for key, entry in state.items():
            if key not in _COMPUTED_KEYS:
                extra.setdefault(key, entry)
        del state, model_state  # free this checkpoint before the next one loads

    count = len(paths)
    averaged: Dict[str, Any] = {}
    for name, (is_float, _) in reference.items():
        if is_float:
            # Back to the parameter's own dtype, so that the output loads into the model like any checkpoint.
            averaged[name] = (sums.pop(name) / count).to(dtype=last_values[name])
        else:
            averaged[name] = last_values[name]
    out: Dict[str, Any] = {"model": averaged}
    for key, values in (("epoch", epochs), ("step", steps)):
        known = [v for v in values if v is not None]
        if known:
            out[key] = max(known)  # RETURNN's rule: the newest of the merged checkpoints
    out["merged_epochs"] = epochs
    out["merged_steps"] = steps
    out.update(extra)
    return out


def _describe(value: Any) -> tuple:
    """(is a float tensor, shape or None) of a state-dict entry."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point(), tuple(value.shape)
    return False, None


def _check_same_parameters(model_state: Dict[str, Any], reference: Dict[str, Any], *, path: str, first_path: str):
    """Raises unless `model_state` has the parameters, kinds and shapes of the first checkpoint."""
    missing = [name for name in reference if name not in model_state]
    unexpected = [name for name in model_state if name not in reference]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {_names(missing)}")
        if unexpected:
            parts.append(f"has {_names(unexpected)} in addition")
        raise CheckpointError(
            f"Checkpoint {path!r} does not match {first_path!r}: it {' and '.join(parts)}; "
            "only checkpoints of the same model can be averaged"
        )
    for name, value in model_state.items():
        is_float, shape = _describe(value)
        ref_float, ref_shape = reference[name]
        if shape != ref_shape:
            raise CheckpointError(
                f"Parameter {name!r} has shape {_shape(shape)} in {path!r} but {_shape(ref_shape)} in {first_path!r}"
            )
        if is_float != ref_float:
            kinds = ("a float tensor", "not a float tensor")
            raise CheckpointError(
                f"Parameter {name!r} is {kinds[not is_float]} in {path!r} but {kinds[not ref_float]} in {first_path!r}"
            )


def _names(names: List[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"parameter(s) {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _shape(shape: Optional[tuple]) -> str:
    return "(no tensor)" if shape is None else str(list(shape))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry (RETURNN's arguments); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=program_name(__file__, "torch_avg_checkpoints.py"), description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--checkpoints", nargs="+", required=True, help="input checkpoints (several arguments, or comma-separated)"
    )
    parser.add_argument("--separator", default=",", help="separator within --checkpoints arguments ('' disables)")
    parser.add_argument("--prefix", default="", help="prepended to each input checkpoint name")
    parser.add_argument("--postfix", default="", help="appended to each input checkpoint name (e.g. '.pt')")
    parser.add_argument("--output_path", required=True, help="the averaged checkpoint to write")
    args = parser.parse_args(argv)

    def action() -> None:
        paths = checkpoint_paths(args.checkpoints, separator=args.separator, prefix=args.prefix, postfix=args.postfix)
        state = average_checkpoints(paths)
        save_torch_atomic(state, args.output_path)
        print(
            f"Wrote the average of {len(paths)} checkpoints ({len(state['model'])} parameters, "
            f"epoch {state.get('epoch')}, step {state.get('step')}) to {args.output_path}"
        )

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
