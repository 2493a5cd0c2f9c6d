"""Command line: ``python -m i6_minireturnn CONFIG... [++key value] [--key value]``."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import Optional, Sequence

from . import __version__, compat
from .config import Config, load_config, set_global_config, split_args
from .config_keys import check_unsupported_keys
from .config_validation import validate_config
from .engine.stop_signals import StopRequested
from .errors import ConfigError, UserError
from .log import log

USAGE = """usage: python -m i6_minireturnn CONFIG [CONFIG ...] [++key value | --key value ...]

Runs a RETURNN / Mini-RETURNN style config (task train, eval, forward or compute_priors).
Values given on the command line are parsed as Python literals where possible and override the config files."""


def init_log(config: Config) -> None:
    """``log_verbosity`` (1-5) and ``log`` (file or list of files) besides stdout."""
    verbosity = config.int("log_verbosity", 4)
    log_files = [str(f) for f in config.list("log", []) if f]
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

    engine_class = config.typed_value("CustomEngine", None) or Engine
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        raise ConfigError("CustomEngine must be a subclass of returnn.torch.engine.Engine")
    if engine_class is not Engine:
        print(f"Using custom engine {engine_class.__name__}", file=log.v3)
    return engine_class(config=config)


def execute_task(config: Config, engine) -> None:
    """Runs ``task`` (train | eval | forward | compute_priors | initialize_model | nop)."""
    task = config.value("task", "train")
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
    try:
        execute_task(config, engine)
    finally:
        engine.close()  # the model prefix is free for the next run, also in the same process
    unread = config.unread_keys()
    if unread:
        print(f"Note: config keys nothing read: {', '.join(unread)}", file=log.v4)
    print(f"Finished in {time.monotonic() - start:.1f}s", file=log.v3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit (ulimit -f) then fails the write with a message, not a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
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


def _report(message: str) -> None:
    print(message, file=sys.stderr)
    sys.stderr.flush()
    for out in log.outputs[1:]:  # the log files get it too
        out.write(message + "\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
