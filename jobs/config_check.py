"""The check of a written config in the manager, before the job's run task is queued.

A config that would fail on the node (an import that does not resolve, python_epilog code that raises, a missing step
function or one the runtime cannot call, an unknown dataset class or option, a misspelt key) fails the job's mini task
``create_files`` instead, with the runtime's message naming config file, line and key, in ``log.create_files.1``.

The check is the runtime's own tool (``python -m i6_minireturnn.tools.check_config``), run as the node runs the
runtime: its Python and environment, in the job's work folder. It builds no model, reads no data file and hides the
GPUs (``CUDA_VISIBLE_DEVICES=""``), so it takes seconds. Where the check cannot run here (that Python does not exist
on this machine, it cannot import the runtime, it times out), the job goes on and the node reports what it finds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import List, Mapping, Sequence

from i6_minireturnn.errors import ConfigError

from .launch import PACKAGE_ROOT

CHECK_TOOL = "i6_minireturnn.tools.check_config"
CONFIG_PROBLEM_STATUS = 1  # the tool's exit status for a config the runtime would refuse (its line starts "ERROR: ")
TIMEOUT_S = 600  # config code may do work (e.g. write a vocabulary); a check that takes longer is given up


def check_runtime_config(config_file: str, *, python: str, env: Mapping[str, str], what: Sequence[str]) -> None:
    """Runs the check on `config_file` for `what` (the tool's ``--task TASK`` or ``--dataset KEY``) with `python` in
    `env` (those of the node: see :func:`jobs.launch.python_executable` and :func:`jobs.launch.runtime_env`). Raises
    a :class:`ConfigError` with the tool's line and what to do for a config the runtime would refuse; prints what it
    did otherwise."""
    command = [python, "-m", CHECK_TOOL, config_file, *what]
    if shutil.which(python) is None:
        print(f"Config check skipped: the runtime's Python {python!r} does not exist here (the node checks the config)")
        return
    try:
        done = subprocess.run(
            command, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"Config check skipped: {exc} (the node checks the config)")
        return
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR: ")]
    if done.returncode == CONFIG_PROBLEM_STATUS and errors:
        raise ConfigError(errors[-1][len("ERROR: ") :] + "\n" + fix_text(config_file, what, python))
    if done.returncode != 0:
        print(
            f"Config check could not run (exit status {done.returncode}); the job goes on and the node checks the "
            f"config. Its output:\n{_tail(done.stdout + done.stderr)}"
        )
        return
    print(_tail(done.stdout, lines=1))


def fix_text(config_file: str, what: Sequence[str], python: str) -> str:
    """What to do about a refused config: fix the recipe or the model code, and how to check again by hand."""
    return (
        "The config was checked before its run was queued, and the runtime would stop at this. Fix it in the recipe "
        "(the ReturnnConfig, the serializers, the model code they import) and run the manager again: a changed "
        "config is a new job. A fix outside the hashed config (a model file, the environment) leaves this job in "
        "its error state: clear it with `sis manager -co` (clear errors once). To check by hand, in the job's work "
        f"folder: PYTHONPATH={PACKAGE_ROOT} {python} -m {CHECK_TOOL} {config_file} {' '.join(what)}"
    )


def _tail(text: str, lines: int = 20) -> str:
    """The last `lines` lines of a tool's output."""
    kept: List[str] = text.rstrip().splitlines()[-lines:]
    return os.linesep.join(kept)
