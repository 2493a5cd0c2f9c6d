"""A user's Sisyphus setup for job tests: a copy of the repository root with the unmodified settings.py, and the
`sis` console script run from it as the README says."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
RECIPES = Path(__file__).resolve().parent / "recipes"
_NOT_COPIED = {".git", "work", "output", "alias", "demo_output", "__pycache__", ".pytest_cache", "i6_core"}


def user_setup(tmp_path: Path) -> Path:
    """A copy of the repository root as a user has it: unmodified settings.py, i6_core cloned as recipe/i6_core
    (here a link to the i6_core this test environment has), an empty work folder."""
    folder = tmp_path / "setup"
    shutil.copytree(
        REPO, folder, ignore=lambda d, names: [n for n in names if n in _NOT_COPIED or n.startswith(".venv")]
    )
    i6_core = importlib.util.find_spec("i6_core").submodule_search_locations[0]
    (folder / "recipe" / "i6_core").symlink_to(Path(i6_core).resolve(), target_is_directory=True)
    (folder / "work").mkdir()
    return folder


def add_recipes(folder: Path, *names: str) -> None:
    """Copies the test recipes `names` (files in tests/jobs/recipes) and the toy setup they share into the setup's
    recipe folder, where a user's recipes are."""
    for name in ("toy_setup.py", *names):
        shutil.copy(RECIPES / name, folder / "recipe" / name)


def sis_command() -> List[str]:
    """The `sis` console script of this environment."""
    sis = Path(sys.executable).parent / "sis"
    return [str(sis if sis.exists() else shutil.which("sis"))]


def sis_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The user's environment: no PYTHONPATH help; `extra` set on top (e.g. a PATH with a cache manager)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra or {})
    return env


def sis_manager(
    folder: Path,
    recipe: str,
    timeout: int = 600,
    answer: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
) -> str:
    """`sis manager -r RECIPE` as the README says: the console script of this environment, from the setup's root,
    no PYTHONPATH help, no input (or the `answer` a user types at Sisyphus' prompt). Returns the manager's output
    (its exit status is 0 even when jobs fail)."""
    done = subprocess.run(
        [*sis_command(), "manager", "-r", recipe],
        cwd=folder, input=answer, stdin=None if answer else subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout, env=sis_env(env),
    )  # fmt: skip
    return done.stdout + done.stderr


def start_sis_manager(folder: Path, recipe: str, log: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """`sis manager -r RECIPE` in the background, in its own process group (so that a test can kill the manager
    and every worker it started, as a lost node or a preemption does), output into `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [*sis_command(), "manager", "-r", recipe],
            cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=sis_env(env),
            start_new_session=True,
        )  # fmt: skip


def failed_jobs(folder: Path) -> list:
    """Job folders with an error marker: Sisyphus writes `error.<task>.<n>` where a task failed."""
    return sorted({str(p.parent.relative_to(folder / "work")) for p in (folder / "work").rglob("error.*")})


def job_folders(folder: Path, job_class: str) -> List[Path]:
    """The work folders of every job of `job_class` (e.g. "MiniReturnnTrainingJob")."""
    return sorted(p for p in (folder / "work").rglob(f"{job_class}.*") if p.is_dir())


def kill_worker(job_dir: Path, task: str = "run") -> int:
    """SIGKILLs the Sisyphus worker running `task` of the job in `job_dir` and everything it started, as a lost node
    or a preemption does (the manager lives on); returns how many processes were killed."""
    import psutil

    name = job_dir.name  # the worker is started with the job folder's path relative to the setup
    victims = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "worker" in cmdline and task in cmdline and any(name in part for part in cmdline):
            try:
                victims += [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    return len(victims)


def job_file(job_dir: Path, name: str) -> Optional[str]:
    """A file of the job folder (e.g. ``log.run.1``, ``submit_log.run``), also once Sisyphus' cleanup has packed it
    into ``finished.tar.gz``; None where there is none."""
    import tarfile

    if (job_dir / name).exists():
        return (job_dir / name).read_text()
    if (job_dir / "finished.tar.gz").exists():
        with tarfile.open(job_dir / "finished.tar.gz") as archive:
            if name in archive.getnames():
                return archive.extractfile(name).read().decode()
    return None


def submissions(job_dir: Path, task: str = "run") -> List[dict]:
    """The requirements of each submission of `task`, from Sisyphus' ``submit_log.<task>``."""
    import ast

    log = job_file(job_dir, f"submit_log.{task}") or ""
    return [ast.literal_eval(line)[1] for line in log.splitlines() if line.strip()]
