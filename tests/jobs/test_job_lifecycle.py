"""A training's life through the real `sis manager` with Sisyphus' cleanup on (settings.py as users have it): outputs
that survive the cleanup, a longer training that continues a finished one, best-epoch jobs downstream."""

from __future__ import annotations

import re
from pathlib import Path

from .sis_setup import REPO, add_recipes, failed_jobs, job_file, job_folders, sis_manager, user_setup


def _run_stage(folder: Path, stage: int) -> str:
    output = sis_manager(folder, "recipe/lifecycle.py", timeout=900, env={"LIFECYCLE_STAGE": str(stage)})
    assert not failed_jobs(folder), output[-4000:]
    assert "All output calculated" in output and "Traceback" not in output, output[-4000:]
    return output


def _trainings(folder: Path) -> dict:
    """{(num_epochs, continues another training): job folder} of the training jobs."""
    found = {}
    for job in job_folders(folder, "MiniReturnnTrainingJob"):
        config = (job / "output" / "returnn.config").read_text()
        num_epochs = int(re.search(r"^num_epochs = (\d+)", config, re.MULTILINE).group(1))
        continues = any("MiniReturnnTrainingJob" in p.name for p in (job / "input").iterdir())
        found[(num_epochs, continues)] = job
    return found


def test_cleanup_longer_training_and_downstream_jobs(tmp_path):
    import torch

    folder = user_setup(tmp_path)
    add_recipes(folder, "lifecycle.py")
    assert "JOB_AUTO_CLEANUP" not in (REPO / "settings.py").read_text().replace("# Sisyphus' job cleanup", "")

    _run_stage(folder, 1)
    first = _trainings(folder)[(2, False)]
    _run_stage(folder, 2)  # the manager runs again: its cleaner cleans the finished jobs up
    assert (first / "finished.tar.gz").exists() and not (first / "work").exists(), sorted(
        p.name for p in first.iterdir()
    )
    learning_rates = first / "output" / "learning_rates"
    assert learning_rates.is_file() and not learning_rates.is_symlink()

    _run_stage(folder, 3)
    out = folder / "output" / "lifecycle"
    # downstream of the cleaned-up training: i6_core's best-epoch job and the plots
    assert int((out / "first" / "best_epoch").read_text()) in (1, 2)
    assert (out / "first" / "score_and_error.png").stat().st_size > 0
    assert (out / "longer" / "learning_rate.png").stat().st_size > 0
    # the longer training trained epochs 3 and 4 only, from the cleaned-up training's epoch 2
    longer = _trainings(folder)[(4, True)]
    for epoch in (1, 2):
        name = f"epoch.00{epoch}.pt"
        assert (longer / "output" / "models" / name).samefile(first / "output" / "models" / name)  # hard links
    from i6_minireturnn.file_formats import read_learning_rate_file

    scores = read_learning_rate_file(str(longer / "output" / "learning_rates"))
    assert sorted(scores) == [1, 2, 3, 4] and all(scores[e].error for e in scores)
    log = job_file(longer, "log.run.1")
    assert "Resuming training after stored epoch 2" in log and "epoch 3: trained" in log and "epoch 4: trained" in log
    assert "epoch 1: trained" not in log and "epoch 2: trained" not in log
    # ... and its epoch 4 is the one a 4-epoch training from the start gets
    continued = torch.load(out / "longer" / "epoch.004.pt", weights_only=False)
    scratch = torch.load(out / "scratch" / "epoch.004.pt", weights_only=False)
    assert continued["epoch"] == scratch["epoch"] == 4 and continued["step"] == scratch["step"]
    for name, value in scratch["model"].items():
        assert torch.equal(continued["model"][name], value), name
    assert (out / "longer" / "best.pt").exists() and (out / "longer" / "dev_log_probs.hdf").stat().st_size > 0
