"""The demo pipeline with the real Sisyphus manager (local engine), and a killed training that resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sisyphus", reason="Sisyphus not installed")
pytest.importorskip("i6_core", reason="i6_core not installed")

REPO = Path(__file__).resolve().parents[2]


def _setup(tmp_path: Path) -> Path:
    folder = tmp_path / "setup"
    shutil.copytree(REPO / "recipe", folder / "recipe")
    settings = (
        (REPO / "settings.py")
        .read_text()
        .replace("sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))", f"sys.path.insert(0, {str(REPO)!r})")
    )
    (folder / "settings.py").write_text(settings)
    (folder / "work").mkdir()
    return folder


def _sis(folder: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "sisyphus", "manager", "-r", "recipe/demo.py"],
        cwd=folder, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_demo_pipeline_runs_to_the_end_and_a_rerun_starts_nothing(tmp_path):
    folder = _setup(tmp_path)
    first = _sis(folder)
    assert "All output calculated" in first.stderr + first.stdout, first.stderr[-3000:]
    for name in ("dev.hdf", "dev_log_probs.hdf", "learning_rates", "score_and_error.png"):
        assert (folder / "output" / "demo" / name).exists(), name
    from i6_minireturnn.data.hdf import HDFDataset

    dumped = HDFDataset(files=[str(folder / "output/demo/dev_log_probs.hdf")], use_cache_manager=False)
    dumped.init_seq_order(1)
    assert dumped.num_seqs == 100 and dumped.get_data_dim("data") == 11
    second = _sis(folder, timeout=120)
    assert "Submit to queue" not in second.stderr + second.stdout


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
