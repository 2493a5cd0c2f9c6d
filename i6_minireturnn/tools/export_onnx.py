"""Exports a model to ONNX, with the command line of RETURNN's ``tools/torch_export_to_onnx.py``.

    python -m i6_minireturnn.tools.export_onnx CONFIG CHECKPOINT OUT.onnx [--device cpu] [--verbosity 5]
        [--input_names data,data:size1] [--output_names log_probs]

As in Mini-RETURNN, the config does the export: the tool builds the model with
``get_model(epoch=, step=, onnx_export=True)`` (epoch and step from the checkpoint, run context stage ``load``),
loads the checkpoint into it and calls the config's ``export`` function, which runs ``torch.onnx.export`` with its
own dummy inputs, names and dynamic axes. Both conventions in use are understood:

    def export(*, model, f, **kwargs): ...          # Mini-RETURNN's tool calls export(model=, args=None, f=)
    def export(*, model, model_filename): ...       # i6_experiments' export jobs

``export`` also gets ``input_names`` / ``output_names`` (lists) where it takes them by name. While it runs,
``torch.onnx.export`` defaults to the TorchScript exporter (``dynamo=False``), the default of the torch versions
these functions were written for; a call passing ``dynamo=`` decides itself. Where the ``onnx`` package is
installed, the written model is checked and its inputs / outputs are compared with ``--input_names`` /
``--output_names``. The output appears complete or not at all.

RETURNN mainline's variant, which derives the export from ``extern_data`` / ``model_outputs`` and a
``forward_step(extern_data=...)``, belongs to the mainline API and is not supported.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..atomic_file import TEMP_MARKER, commit_temp, disk_full_error, make_output_folder
from ..config import Config, load_config, set_global_config
from ..engine import checkpoints
from ..engine.run_ctx import init_load_run_ctx, reset_run_ctx
from ..errors import CheckpointError, ConfigError, UserError
from ..log import log
from . import program_name
from .dataset_source import run_tool

EXPORT_SEED = 42  # dummy inputs made with torch.randn come out the same in every run (RETURNN seeds 42 as well)


def export_onnx(
    config_file: str,
    checkpoint: str,
    output: str,
    *,
    device: str = "cpu",
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
) -> None:
    """Builds the config's model, loads `checkpoint` and writes the ONNX model to `output` with the config's
    ``export`` function (see the module docstring)."""
    with legacy_onnx_exporter_by_default():  # before the config loads: model files may import torch.onnx.export
        device = torch_device(device)
        config = load_config([config_file], [])
        config.set("device", device)  # the command line decides, as in RETURNN
        set_global_config(config)
        try:
            export_func = config_export_function(config)
            state, epoch, step = load_checkpoint(checkpoint, device=device)
            print(f"Checkpoint {checkpoint}: epoch {epoch}, step {step}", file=log.v3)
            init_load_run_ctx(device=device, engine=None, epoch=epoch, global_step=step)
            torch.manual_seed(EXPORT_SEED)
            model = build_model(config, epoch=epoch, step=step)
            checkpoints.load_state_into_model(
                model, state, source=checkpoint, ignore_missing=config.bool("load_ignore_missing_vars")
            )
            model.eval()  # Mini-RETURNN leaves this to export(); an export wants it (no dropout, fixed norm statistics)
            print(f"Model: {model}", file=log.v5)
            with staged_output(output) as staged:
                call_export(
                    export_func, model=model, filename=staged, input_names=input_names, output_names=output_names
                )
                if not os.path.isfile(staged) or os.path.getsize(staged) == 0:
                    raise UserError(
                        f"The config's export function wrote nothing to the file it was given ({output}): "
                        "it must write the ONNX model to its argument f (or model_filename)"
                    )
                check_onnx_file(staged, name=output, input_names=input_names, output_names=output_names)
        finally:
            reset_run_ctx()
            set_global_config(None)
    print(f"Wrote {output}", file=log.v2)


def torch_device(device: str) -> str:
    """The torch device for ``--device``: cpu, cuda, cuda:N, or gpu (RETURNN's name for cuda)."""
    name = "cuda" if device == "gpu" else device
    if name != "cpu" and name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"Unknown --device {device!r}; use cpu, cuda, cuda:N or gpu")
    if name != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is available here (torch {torch.__version__}); use cpu")
    return name


def config_export_function(config: Config) -> Callable[..., Any]:
    """The config's ``export`` function, or an error saying what to define."""
    export_func = config.typed_value("export")
    if callable(export_func):
        return export_func
    what = "no export function" if export_func is None else f"export = {type(export_func).__name__}, not a function"
    if export_func is None and config.has("extern_data") and config.has("model_outputs"):
        # RETURNN mainline exports from these with forward_step(extern_data=...): its API, not Mini-RETURNN's
        what += " (an export derived from extern_data / model_outputs is RETURNN mainline's, not supported here)"
    raise ConfigError(
        f"{config.where()} has {what}. As in Mini-RETURNN, the config does the ONNX export: define "
        "export(*, model, f, **kwargs) that calls torch.onnx.export(model, (dummy inputs,), f, input_names=..., "
        "output_names=..., dynamic_axes=...)"
    )


def load_checkpoint(path: str, *, device: str) -> Tuple[Dict[str, Any], int, int]:
    """(state dict, epoch, step) of a RETURNN checkpoint; a bare state dict counts as epoch 1, step 0."""
    path = checkpoints.checkpoint_file(path)
    state = checkpoints.load_file(path, map_location=torch.device(device))
    if isinstance(state, dict) and "model" in state:
        return state["model"], int(state.get("epoch", 1)), int(state.get("step", 0))
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state, 1, 0
    raise CheckpointError(f"{path!r} is not a model checkpoint: expected a dict with 'model', 'epoch', 'step'")


def build_model(config: Config, *, epoch: int, step: int) -> torch.nn.Module:
    """``get_model(epoch=, step=, onnx_export=True)``, Mini-RETURNN's call when exporting."""
    get_model = config.typed_value("get_model")
    if not callable(get_model):
        raise ConfigError(f"{config.where()} defines no get_model(*, epoch, step, **kwargs)")
    if not _accepts_keyword(get_model, "onnx_export"):
        raise ConfigError(f"get_model in {config.where()} must take **kwargs: exporting calls it with onnx_export=True")
    model = get_model(epoch=epoch, step=step, onnx_export=True)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"get_model must return a torch.nn.Module, got {type(model).__name__}")
    return model


def call_export(
    export_func: Callable[..., Any],
    *,
    model: torch.nn.Module,
    filename: str,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
) -> None:
    """Calls the config's ``export`` with the keywords of the convention it was written for."""
    params = _keyword_parameters(export_func)
    if params is None:  # no signature to read (a builtin, a C extension): Mini-RETURNN's call
        kwargs: Dict[str, Any] = {"model": model, "args": None, "f": filename}
    else:
        named, takes_any = params
        kwargs = {"model": model}
        if "model_filename" in named:
            kwargs["model_filename"] = filename
        if "f" in named or ("model_filename" not in named and takes_any):
            kwargs["f"] = filename
        if "f" not in kwargs and "model_filename" not in kwargs:
            raise ConfigError(
                "The config's export function must take the output file as f= (Mini-RETURNN) or model_filename=, "
                f"its parameters are: {', '.join(named) or '(none)'}"
            )
        if "args" in named or takes_any:
            kwargs["args"] = None  # Mini-RETURNN passes it; the function makes its own dummy inputs
        # Only by name: a function taking **kwargs may already pass its own names on to torch.onnx.export.
        if input_names and "input_names" in named:
            kwargs["input_names"] = list(input_names)
        if output_names and "output_names" in named:
            kwargs["output_names"] = list(output_names)
    try:
        export_func(**kwargs)
    except (ImportError, _onnx_exporter_error()) as exc:
        package = _missing_onnx_package(exc)
        if package is None:
            raise
        raise UserError(
            f"The ONNX export needs the Python package {package!r} with torch {torch.__version__}: "
            f"pip install {package} (or pip install -e .[onnx])"
        ) from exc


def check_onnx_file(
    path: str,
    *,
    name: Optional[str] = None,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
) -> None:
    """Validates the ONNX file and compares its inputs / outputs with the expected names (in any order: consumers
    feed and fetch by name). Without the ``onnx`` package (an export function may write the file by other means),
    says so and returns."""
    name = name or path
    try:
        import onnx
    except ImportError:
        print(f"Note: the onnx package is not installed, {name} is not checked", file=log.v2)
        return
    try:
        onnx.checker.check_model(path)  # the path, not a loaded model: works for models over 2 GB as well
    except onnx.checker.ValidationError as exc:
        raise UserError(f"The exported model {name} is not valid ONNX: {exc}") from None
    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    print(f"ONNX model {name}: inputs {inputs}, outputs {outputs}", file=log.v3)
    for what, wanted, got in (("input", input_names, inputs), ("output", output_names, outputs)):
        if wanted and set(wanted) != set(got):
            raise UserError(
                f"The exported model's {what}s {got} are not the requested --{what}_names {list(wanted)}: "
                f"the config's export function names them (torch.onnx.export(..., {what}_names=...))"
            )


@contextlib.contextmanager
def legacy_onnx_exporter_by_default() -> Iterator[None]:
    """While active, ``torch.onnx.export`` uses the TorchScript exporter unless the caller passes ``dynamo=``.

    Since torch 2.9 the default is the torch.export-based exporter, which needs onnxscript and traces differently;
    config export functions were written for the TorchScript exporter, the default before.
    """
    original = torch.onnx.export
    try:
        takes_dynamo = "dynamo" in inspect.signature(original).parameters
    except (TypeError, ValueError):
        takes_dynamo = False
    if not takes_dynamo:  # torch < 2.5: there is only the TorchScript exporter
        yield
        return

    @functools.wraps(original)
    def export(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dynamo", False)
        return original(*args, **kwargs)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = original


@contextlib.contextmanager
def staged_output(path: str) -> Iterator[str]:
    """Yields a file name to export to: `path`'s base name in a fresh folder beside it. On success the files written
    there move beside `path`, the model file last; on error they are removed.

    A folder, not a temp file name: files of external data (models over 2 GB) are named after the model file and
    referred to by name from inside it, so the model must be written under its final name.
    """
    folder = make_output_folder(path)
    base = os.path.basename(path)
    stage = tempfile.mkdtemp(prefix=base + TEMP_MARKER, dir=folder)
    try:
        staged = os.path.join(stage, base)
        yield staged
        for entry in sorted(os.listdir(stage)):
            if entry != base:
                os.replace(os.path.join(stage, entry), os.path.join(folder, entry))
        commit_temp(staged, path)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)  # first, so that the message counts the space it freed
        disk_full = disk_full_error(exc, path)
        if disk_full is not None:
            raise disk_full from exc
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _keyword_parameters(func: Callable[..., Any]) -> Optional[Tuple[List[str], bool]]:
    """(names that can be passed by keyword, whether it takes **kwargs), or None without a readable signature."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _accepts_keyword(func: Callable[..., Any], keyword: str) -> bool:
    params = _keyword_parameters(func)
    return params is None or keyword in params[0] or params[1]


def _onnx_exporter_error() -> type:
    # torch.onnx.OnnxExporterError exists from torch 2.0 on; the TorchScript exporter raises it without onnx
    return getattr(torch.onnx, "OnnxExporterError", ImportError)


def _missing_onnx_package(exc: BaseException) -> Optional[str]:
    """'onnx' / 'onnxscript' where `exc` says torch's exporter lacks that package, else None."""
    if isinstance(exc, ImportError) and exc.name in ("onnx", "onnxscript"):
        return exc.name
    text = str(exc)
    for package in ("onnxscript", "onnx"):
        if f"{package} is not installed" in text or f"No module named '{package}'" in text:
            return package
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry (RETURNN's arguments); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=program_name(__file__, "torch_export_to_onnx.py"),
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="config file with get_model() and export()")
    parser.add_argument("checkpoint", help="model checkpoint (.pt; the suffix may be left out)")
    parser.add_argument("out_onnx_filename", help="ONNX file to write")
    parser.add_argument("--verbosity", type=int, default=4, help="log verbosity 1-5 (default: 4)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or gpu")
    parser.add_argument("--input_names", help="comma-separated names the model's inputs must have")
    parser.add_argument("--output_names", help="comma-separated names the model's outputs must have")
    args = parser.parse_args(argv)

    def action() -> None:
        previous = log.verbosity
        log.verbosity = args.verbosity
        try:
            export_onnx(
                args.config,
                args.checkpoint,
                args.out_onnx_filename,
                device=args.device,
                input_names=_split_names(args.input_names),
                output_names=_split_names(args.output_names),
            )
        finally:
            log.verbosity = previous  # main() may run inside another program (tests)

    return run_tool(action)


def _split_names(value: Optional[str]) -> Optional[List[str]]:
    return [n for n in value.split(",") if n] if value else None


if __name__ == "__main__":
    sys.exit(main())
