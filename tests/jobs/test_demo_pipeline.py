"""The demo pipeline with the real Sisyphus manager (local engine), and a killed training that resumes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
_NOT_COPIED = {".git", "work", "output", "alias", "demo_output", "__pycache__", ".pytest_cache", "i6_core"}


def _user_setup(tmp_path: Path) -> Path:
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


def _sis_manager(folder: Path, recipe: str, timeout: int = 600, answer: Optional[str] = None) -> str:
    """`sis manager -r RECIPE` as the README says: the console script of this environment, from the setup's root,
    no PYTHONPATH help, no input (or the `answer` a user types at Sisyphus' prompt). Returns the manager's output
    (its exit status is 0 even when jobs fail)."""
    sis = Path(sys.executable).parent / "sis"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(sis if sis.exists() else shutil.which("sis")), "manager", "-r", recipe],
        cwd=folder, input=answer, stdin=None if answer else subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip
    return done.stdout + done.stderr


def _failed_jobs(folder: Path) -> list:
    """Job folders with an error marker: Sisyphus writes `error.<task>.<n>` where a task failed."""
    return sorted({str(p.parent.relative_to(folder / "work")) for p in (folder / "work").rglob("error.*")})


def test_demo_pipeline_runs_to_the_end_and_a_rerun_starts_nothing(tmp_path):
    folder = _user_setup(tmp_path)
    first = _sis_manager(folder, "recipe/demo.py")
    assert not _failed_jobs(folder), first[-3000:]
    assert "All output calculated" in first and "Traceback" not in first, first[-3000:]
    for name in ("dev.hdf", "dev_log_probs.hdf", "learning_rates", "score_and_error.png"):
        assert (folder / "output" / "demo" / name).exists(), name
    from i6_minireturnn.data.hdf import HDFDataset

    dumped = HDFDataset(files=[str(folder / "output/demo/dev_log_probs.hdf")], use_cache_manager=False)
    dumped.init_seq_order(1)
    assert dumped.num_seqs == 100 and dumped.get_data_dim("data") == 11
    # With everything done Sisyphus asks what to do (at a terminal, too): the user cancels.
    second = _sis_manager(folder, "recipe/demo.py", timeout=120, answer="c\n")
    assert "All calculations are done" in second and "Submit to queue" not in second and "Traceback" not in second


def test_jobs_import_in_a_separate_setup_after_pip_install(tmp_path):
    # A user's own Sisyphus setup elsewhere: its own settings.py and recipe folder; `jobs` comes from the installed
    # package (pip install -e of this repository), not from the working directory.
    folder = tmp_path / "my_setup"
    (folder / "recipe" / "my_exp").mkdir(parents=True)
    (folder / "work").mkdir()
    i6_core = importlib.util.find_spec("i6_core").submodule_search_locations[0]
    (folder / "recipe" / "i6_core").symlink_to(Path(i6_core).resolve(), target_is_directory=True)
    (folder / "settings.py").write_text(
        "WAIT_PERIOD_JOB_FS_SYNC = 1\nWAIT_PERIOD_BETWEEN_CHECKS = 1\nWAIT_PERIOD_MTIME_OF_INPUTS = 1\n\n\n"
        "def engine():\n    from sisyphus.localengine import LocalEngine\n\n    return LocalEngine(cpu=2)\n"
    )
    (folder / "recipe" / "my_exp" / "__init__.py").write_text("")
    (folder / "recipe" / "my_exp" / "data.py").write_text(
        "from sisyphus import tk\n\nfrom jobs import HdfDumpJob\n\n\n"
        "def py():\n"
        "    data = {'class': 'SyntheticSpeechDataset', 'num_seqs': 5, 'feature_dim': 4, 'num_classes': 3}\n"
        "    tk.register_output('toy.hdf', HdfDumpJob(data, cpu_rqmt=1, mem_rqmt=1, time_rqmt=1).out_hdf)\n"
    )
    output = _sis_manager(folder, "recipe/my_exp/data.py", timeout=300)
    assert not _failed_jobs(folder) and "All output calculated" in output, output[-3000:]
    assert (folder / "output" / "toy.hdf").stat().st_size > 0


def test_a_failing_job_is_visible_in_the_job_folder_and_the_manager_log(tmp_path):
    folder = _user_setup(tmp_path)
    (folder / "recipe" / "broken.py").write_text(
        "from i6_core.returnn.config import ReturnnConfig\n"
        "from sisyphus import tk\n\n"
        "from jobs import MiniReturnnTrainingJob\n\n\n"
        "def py():\n"
        "    config = ReturnnConfig({'train': {'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3,\n"
        "                                      'num_seqs': 4}, 'learning_rat': 0.1})\n"
        "    job = MiniReturnnTrainingJob(config, num_epochs=1, device='cpu', cpu_rqmt=1, mem_rqmt=1, time_rqmt=1)\n"
        "    tk.register_output('broken/learning_rates', job.out_learning_rates)\n"
    )
    output = _sis_manager(folder, "recipe/broken.py", timeout=300)
    failed = _failed_jobs(folder)
    assert len(failed) == 1 and failed[0].startswith("jobs/training/MiniReturnnTrainingJob."), failed
    assert "error" in output.lower() and "All output calculated" not in output
    log = (folder / "work" / failed[0] / "log.run.1").read_text()
    assert "learning_rat" in log and "learning_rate" in log  # the typo and the key it was meant to be
    assert not (folder / "output" / "broken" / "learning_rates").exists()


def test_killed_training_resumes_and_finishes(tmp_path, monkeypatch):
    from i6_core.returnn.config import ReturnnConfig
    from sisyphus import global_settings

    from jobs import MiniReturnnTrainingJob

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    code = (
        "import torch\n"
        "def get_model(epoch, step, **kwargs):\n    return torch.nn.Linear(16, 10)\n"
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    run_ctx.mark_as_loss(model(data['data']).pow(2).mean(), 'l2')\n"
    )
    config = ReturnnConfig(
        config={
            "train": {"class": "SyntheticSpeechDataset", "num_seqs": 3000, "seed": 7},
            "batch_size": 2000,
            "optimizer": {"class": "adam"},
        },
        python_epilog=[code],
    )
    job = MiniReturnnTrainingJob(config, num_epochs=4, device="cpu")
    base = Path(job._sis_path())
    (base / "work").mkdir(parents=True)
    (base / "output" / "models").mkdir(parents=True)
    monkeypatch.chdir(base / "work")
    job.create_files()
    process = subprocess.Popen([str(base / "work" / "rnn.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = base / "output" / "models" / "epoch.001.pt"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)  # preempted in the middle of epoch 2
    process.wait()
    assert first.exists() and not (base / "output" / "models" / "epoch.004.pt").exists()
    job.run()  # Sisyphus restarts the run task: it continues and finishes
    assert all(Path(str(c)).exists() for c in job.out_checkpoints.values())
    assert "Resuming training after stored epoch" in (base / "work" / "returnn.log").read_text()
