"""What every job does to run the runtime: refuse config keys the job sets itself, write the config with a version
note, and start the package next to ``jobs/`` (PYTHONPATH, Python executable, thread counts, torchrun)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from i6_minireturnn.data.loader_count import CPU_PROCESS_CPUS, GPU_PROCESS_CPUS

from .distributed import ProcessLayout, Rendezvous, ShellExpr, torchrun_arguments

if TYPE_CHECKING:
    from i6_core.returnn.config import ReturnnConfig
    from sisyphus import tk

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATE_FILE = "learning_rates"


def refuse_job_controlled_keys(returnn_config: ReturnnConfig, controlled: Mapping[str, str], job_name: str) -> None:
    """A ValueError for the first key of `controlled` that the config or post_config sets: the job sets it itself,
    and the message (``controlled[key]``) says what to use instead."""
    post_config = returnn_config.post_config or {}
    for key, instead in controlled.items():
        if returnn_config.config.get(key) is not None or post_config.get(key) is not None:
            raise ValueError(f"returnn_config sets {key!r}, which {job_name} controls: {instead}")


def python_executable(python_exe: Optional[tk.Path]) -> str:
    """The Python that runs the runtime: the job's `python_exe`, else the one running Sisyphus."""
    return python_exe.get_path() if python_exe is not None else sys.executable


def write_runtime_config(
    returnn_config: ReturnnConfig,
    path: str,
    *,
    check_task: Optional[str] = None,
    check_dataset: Optional[str] = None,
    python_exe: Optional[tk.Path] = None,
) -> None:
    """Writes the config the runtime reads, with the version note of :func:`annotate_config`, then checks it
    (:func:`check_written_config`) for `check_task` or, for the dataset tools, for its dataset `check_dataset`."""
    returnn_config.write(path)
    annotate_config(path)
    check_written_config(path, check_task=check_task, check_dataset=check_dataset, python_exe=python_exe)


def check_written_config(
    path: str,
    *,
    check_task: Optional[str] = None,
    check_dataset: Optional[str] = None,
    python_exe: Optional[tk.Path] = None,
) -> None:
    """Checks a written config for `check_task` (what the runtime's task needs) or `check_dataset` (that dataset) with
    the node's Python (`python_exe`, see :func:`python_executable`) and environment, so that a config the runtime
    would refuse fails here, before the run is queued (:mod:`jobs.config_check`). Neither given: no check."""
    what = ["--task", check_task] if check_task is not None else ["--dataset", check_dataset] if check_dataset else []
    if what:
        from .config_check import check_runtime_config

        check_runtime_config(path, python=python_executable(python_exe), env=runtime_env(1), what=what)


def runtime_command(
    python: str, config_file: str, layout: Optional[ProcessLayout] = None, rendezvous: Optional[Rendezvous] = None
) -> List[str]:
    """``python -m i6_minireturnn CONFIG``, or through torch.distributed.run for several processes (`layout`); several
    nodes need this node's `rendezvous`."""
    command = ["-m", "i6_minireturnn", config_file]
    if layout is not None and layout.distributed:
        return [python, "-m", "torch.distributed.run", *torchrun_arguments(layout, rendezvous), *command]
    return [python, *command]


# The exit status Sisyphus' worker reads as "killed for its memory" (the shell's 128 + SIGKILL, as SGE reports an
# out-of-memory kill): it marks the task interrupted with out_of_memory, and the manager resubmits it with more memory.
KILLED_FOR_MEMORY_STATUS = 128 + signal.SIGKILL


def run_runtime(command: Sequence[str], env: Mapping[str, str]) -> None:
    """Runs the runtime's `command` and raises CalledProcessError where it fails. A runtime killed by SIGKILL (the
    kernel's out-of-memory killer picks the largest process, the runtime, and the worker lives on) is reported with
    exit status 137, so that Sisyphus resubmits the task with more memory instead of giving up on it as failed."""
    status = subprocess.call(list(command), env=dict(env))
    if status == -signal.SIGKILL:
        print(f"The runtime was killed (SIGKILL), most likely for its memory: exit status {KILLED_FOR_MEMORY_STATUS}")
        raise subprocess.CalledProcessError(KILLED_FOR_MEMORY_STATUS, list(command))
    if status != 0:
        raise subprocess.CalledProcessError(status, list(command))


def shell_command(command: Sequence[str]) -> str:
    """The command as one shell line; :class:`~jobs.distributed.ShellExpr` arguments are written as they are."""
    return " ".join(c if isinstance(c, ShellExpr) else shlex.quote(c) for c in command)


def default_cpu_rqmt(device: str) -> int:
    """CPU cores a runtime process asks for where the job's ``cpu_rqmt`` is not given: on a GPU, enough for the most
    loader threads the runtime gives a dataset that decodes audio (:mod:`i6_minireturnn.data.loader_count`) and the
    training loop; on the CPU, 2."""
    return GPU_PROCESS_CPUS if device == "gpu" else CPU_PROCESS_CPUS


def runtime_env(cpus: int) -> Dict[str, str]:
    """The environment of the runtime process: this package first on PYTHONPATH, threads from the cpu rqmt."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = str(max(cpus, 1))
    env["MKL_NUM_THREADS"] = str(max(cpus, 1))
    return env


def runtime_version() -> str:
    """Version and git commit of the package the job launches (for logs; never hashed)."""
    from i6_minireturnn import __version__

    try:
        commit = subprocess.run(
            ["git", "-C", PACKAGE_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"i6-minireturnn {__version__}, commit {commit}, at {PACKAGE_ROOT}"


def annotate_config(path: str) -> None:
    """Adds the runtime version as a comment after the first line (the config's hash is computed elsewhere)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n", 1)
    note = f"# written for {runtime_version()}"
    text = lines[0] + "\n" + note + "\n" + (lines[1] if len(lines) > 1 else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(note[2:])
