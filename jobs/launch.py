"""How jobs start the runtime on a node: the package next to ``jobs/`` on PYTHONPATH, thread counts, version note."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATE_FILE = "learning_rates"


def runtime_command(python: str, config_file: str, num_processes: Optional[int] = None) -> List[str]:
    """``python -m i6_minireturnn CONFIG``, or through torch.distributed.run for several processes."""
    if num_processes and num_processes > 1:
        return [
            python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            "-m", "i6_minireturnn", config_file,
        ]  # fmt: skip
    return [python, "-m", "i6_minireturnn", config_file]


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
