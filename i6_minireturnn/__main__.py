"""Command line: ``python -m i6_minireturnn CONFIG... [++key value] [--key value]``."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import time
import traceback
from typing import List, NoReturn, Optional, Sequence

from . import __version__, compat
from .config import Config, load_config, set_global_config, split_args
from .config_schema import help_text
from .config_validation import check_unsupported_keys, validate_config
from .engine.stack_dump import stack_dumps
from .engine.stop_signals import StopRequested
from .errors import ConfigError, UserError
from .log import log

USAGE = """usage: python -m i6_minireturnn CONFIG [CONFIG ...] [++key value | --key value ...]
       python -m i6_minireturnn --help | --version"""

HELP = (
    USAGE
    + """

Runs a RETURNN / Mini-RETURNN style config: Python code (every module-level name is a key), JSON or line-based
"key value" files, read in order. Also started as `i6-minireturnn CONFIG ...` or `python rnn.py CONFIG ...`.

Command-line values override the config files (and are visible while a Python config runs). One rule for every key:
  1. a Python literal: 10, 1e-3, -0.1 (or RETURNN's +-0.1), True, None, "text", [1, 2], {"a": 1}
  2. else an expression of literals and arithmetic: "[1e-3] * 5", 2**10, "[0.1] * 3 + [0.01] * 2"
     (no names, calls, attributes, subscripts or comprehensions)
  3. else the text as it is: out/model, cuda:0, newbob_multi_epoch
A key whose value in the config is a string stays a string (++name 123 gives "123"), as in RETURNN. A quoted string
literal ('"text"') always becomes the text without quotes: quote strings that look like numbers or arithmetic.

Tasks (task = ...):
  train             trains epochs 1..num_epochs (resumes by itself); evaluates dev and eval_datasets after each
  eval              evaluates dev / eval / eval_datasets with train_step on a checkpoint
  forward           runs forward_step over the forward dataset, between forward_init_hook and forward_finish_hook
  compute_priors    averages forward_step's posteriors over train into output_file (RETURNN's prior file)
  initialize_model  creates the model (and preload_from_files) and saves it as epoch file
  nop               loads the config and does nothing

Config keys (docs/config.md: each key's default and meaning; a misspelt key is refused naming the key meant):
"""
    + help_text()
    + """
Functions: get_model(*, epoch, step, **kwargs), train_step(*, model, data, run_ctx, **kwargs),
  forward_step(*, model, data, run_ctx, **kwargs), forward_init_hook(run_ctx, **kwargs),
  forward_finish_hook(run_ctx, **kwargs), and a CustomEngine class.

Tools (each with --help):
  python -m i6_minireturnn.tools.check_config CONFIG [--task T]   checks a config as a run would start (no model, data)
  python -m i6_minireturnn.tools.hdf_dump CONFIG OUT.hdf        a dataset to an HDF file
  python -m i6_minireturnn.tools.dump_dataset CONFIG            keys, first sequences, length statistics
  python -m i6_minireturnn.tools.analyze_batches CONFIG         batches and padding of the batching keys
  python -m i6_minireturnn.tools.average_checkpoints --checkpoints A.pt B.pt --output_path OUT.pt
  python -m i6_minireturnn.tools.export_onnx CONFIG CHECKPOINT OUT.onnx
  python -m i6_minireturnn.tools.bliss_to_ogg_zip CORPUS.xml.gz --output OUT.zip
  python -m i6_minireturnn.tools.plot_training out/learning_rates    plots of the scores and learning rates
  RETURNN's names, in this repository: tools/hdf_dump.py, tools/dump-dataset.py, tools/bliss-to-ogg-zip.py,
  tools/torch_avg_checkpoints.py, tools/torch_export_to_onnx.py, and tools/plot_training.py

Docs: README.md (start here); docs/config.md (every key); docs/running.md (tasks, the config surface, checkpoints
and resuming, errors), docs/datasets.md, docs/tools.md, docs/distributed.md (several GPUs), docs/compat.md (the
returnn.* names model files use), docs/jobs.md (Sisyphus jobs), docs/architecture.md (the map of the code)."""
)


def version_text() -> str:
    """The package version and the versions it runs with (no config needed)."""
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # the version still prints where torch is missing
        torch_version = "not installed"
    return f"i6-minireturnn {__version__} (Python {sys.version.split()[0]}, torch {torch_version})"


def init_log(config: Config) -> None:
    """``log_verbosity`` (1-5) and ``log`` (file or list of files) besides stdout."""
    verbosity = config.int("log_verbosity")
    log_files = [str(f) for f in config.list("log") if f]
    log.initialize(verbosity=verbosity, log_files=log_files)


def print_greeting(config: Config, argv: Sequence[str], device: str) -> None:
    """Who and where we are, for the log."""
    import torch

    print(f"i6-minireturnn {__version__} starting up, pid {os.getpid()}, host {socket.gethostname()}", file=log.v3)
    print(
        f"Python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, device {device}", file=log.v3
    )
    if device.startswith("cuda"):
        print(f"CUDA device: {torch.cuda.get_device_name(torch.device(device))}", file=log.v3)
    print(f"Config files: {', '.join(config.files)}; command line: {list(argv)}", file=log.v4)


def create_engine(config: Config):
    """The engine, or the config's ``CustomEngine`` class."""
    from .engine.engine import Engine

    engine_class = config.typed_value("CustomEngine") or Engine
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        raise ConfigError("CustomEngine must be a subclass of returnn.torch.engine.Engine")
    if engine_class is not Engine:
        print(f"Using custom engine {engine_class.__name__}", file=log.v3)
    return engine_class(config=config)


def execute_task(config: Config, engine) -> None:
    """Runs ``task`` (train | eval | forward | compute_priors | initialize_model | nop)."""
    task = config.value("task")
    if task == "train":
        engine.init_train()
        engine.train()
    elif task == "eval":
        engine.init_eval()
        engine.eval_model()
    elif task == "forward":
        engine.init_forward()
        engine.forward()
    elif task == "compute_priors":
        # RETURNN's task, as i6_core's ReturnnComputePriorJobV2 runs it (Mini-RETURNN dropped it)
        engine.init_compute_priors()
        engine.compute_priors()
    elif task == "initialize_model":
        engine.init_train()
        engine.save_model()
    elif task == "nop":
        print("Task: no operation", file=log.v2)
    elif task == "search":
        raise ConfigError(f"Task {task!r} does not exist in Mini-RETURNN: use task 'forward' with a forward_step")
    else:
        raise ConfigError(f"Unknown task {task!r}; valid: train, eval, forward, compute_priors, initialize_model, nop")


def run(argv: Sequence[str]) -> None:
    """Loads the config and runs its task; raises on error."""
    files, overrides = split_args(argv)
    if not files:
        raise ConfigError("No config file given.\n" + USAGE)
    compat.install()  # before the config runs: it may import returnn.* names
    config = load_config(files, overrides)
    compat.check_step_functions(config)
    set_global_config(config)
    init_log(config)
    from .engine.device import resolve_device

    print_greeting(config, argv, resolve_device(config))
    config.check_misspelt_keys()
    check_unsupported_keys(config)
    validate_config(config)
    start = time.monotonic()
    engine = create_engine(config)
    completed = False
    try:
        execute_task(config, engine)
        completed = True
    finally:
        engine.close(completed=completed)  # the model prefix is free for the next run, also in the same process
    unread = config.unread_keys()
    if unread:
        print(f"Note: config keys nothing read: {', '.join(unread)}", file=log.v4)
    print(f"Finished in {time.monotonic() - start:.1f}s", file=log.v3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the command line; returns the exit code. As a process's entry (`argv` None) of a run on several
    processes it ends the process itself (:func:`_exit_without_finalization`)."""
    code = _main(sys.argv[1:] if argv is None else list(argv))
    # sys.modules, not an import: --help and single-process runs need not import torch.distributed for this
    distributed = sys.modules.get(f"{__package__}.engine.distributed")
    if argv is None and distributed is not None and distributed.joined_process_group():
        _exit_without_finalization(code)
    return code


def _exit_without_finalization(code: int) -> NoReturn:
    """Ends a process that was a rank of a process group: first the exit handlers (atexit) and the flushes, with the
    interpreter alive, then the process, skipping the interpreter's finalization. DistributedDataParallel keeps gloo's
    worker threads alive after ``destroy_process_group``; one that releases a tensor's last reference while the
    interpreter finalizes needs the GIL and ends the process with SIGABRT ("terminate called without an active
    exception") after a run that had finished."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone (a pipe whose reader ended): nothing more to say there
            pass
    os._exit(code)


def _main(argv: List[str]) -> int:
    if not argv:
        print(USAGE + "\n\nNo config file given; --help lists tasks, keys, tools and docs.", file=sys.stderr)
        return 2
    option = _help_or_version(argv)
    if option is not None:
        print(HELP if option == "help" else version_text())
        return 0
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) then fails the write with a message, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with stack_dumps():  # SIGUSR1 (clusters' time-limit warning) prints the threads' stacks; the run goes on
            run(argv)
    except StopRequested as stop:
        _report(str(stop))
        return stop.exit_code
    except UserError as exc:
        _report(f"ERROR: {exc}")
        return 1
    except KeyboardInterrupt:
        _report("Interrupted")
        return 130
    except Exception:
        _report("ERROR: unexpected exception\n" + traceback.format_exc())
        return 1
    finally:
        compat.uninstall()
        set_global_config(None)
        log.close_files()
    return 0


def _help_or_version(argv: Sequence[str]) -> Optional[str]:
    """Which of --help / --version the command line asks for, if any: -h / --help where a config file or a ``++key``
    may stand (not as the value of an override); --version as the first argument (``--version 2`` after a config
    file sets the config key ``version``)."""
    if argv and argv[0] == "--version":
        return "version"
    files, overrides = split_args(argv)
    if any(arg in ("-h", "--help") for arg in list(files) + list(overrides[0::2])):
        return "help"
    return None


def _report(message: str) -> None:
    print(message, file=sys.stderr)
    sys.stderr.flush()
    for out in log.outputs[1:]:  # the log files get it too
        out.write(message + "\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
