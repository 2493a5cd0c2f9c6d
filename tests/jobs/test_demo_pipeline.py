"""The demo pipeline with the real Sisyphus manager (local engine), and a killed training that resumes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

from .sis_setup import failed_jobs as _failed_jobs
from .sis_setup import sis_manager as _sis_manager
from .sis_setup import user_setup as _user_setup


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


def _learning_rates(path: Path) -> dict:
    from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

    return {epoch: data.error for epoch, data in read_learning_rate_file(str(path)).items()}


def _models_of(learning_rates_link: Path) -> Path:
    """The model folder of the training job whose learning_rates file the output link points to (in the job's
    output or work folder)."""
    return Path(os.readlink(learning_rates_link)).parent.parent / "output" / "models"


def _model_state(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=False)


def test_i6_core_jobs_with_this_repository_as_returnn_root(tmp_path):
    import numpy as np
    import torch

    folder = _user_setup(tmp_path)
    output = _sis_manager(folder, "recipe/i6_core_jobs.py")
    assert not _failed_jobs(folder), output[-3000:]
    assert "All output calculated" in output and "Traceback" not in output, output[-3000:]
    out = folder / "output" / "i6_core_jobs"

    # BlissToOggZipJob -> OggZipDataset, ExtractDatasetMeanStddevJob over it
    from i6_minireturnn.data.oggzip import OggZipDataset

    ogg = OggZipDataset(path=str(out / "corpus.ogg.zip"), audio={"features": "raw"}, use_cache_manager=False)
    ogg.init_seq_order(1)
    assert ogg.num_seqs >= 6 and all(ogg.get_seq_tag(i).startswith("toy/rec") for i in range(ogg.num_seqs))
    mean, std = np.loadtxt(out / "feature_mean"), np.loadtxt(out / "feature_std_dev")
    assert mean.shape == std.shape == (20,) and np.isfinite(mean).all() and (std > 0).all()

    # ReturnnTrainingJob: learning_rates with dev scores that fall; averaged epochs 2 and 3
    scores = _learning_rates(out / "learning_rates")
    assert sorted(scores) == [1, 2, 3] and scores[3]["dev_loss_ctc"] < scores[1]["dev_loss_ctc"]
    models = _models_of(out / "learning_rates")
    epochs = [_model_state(models / f"epoch.00{e}.pt")["model"] for e in (2, 3)]
    average = _model_state(out / "average.pt")
    assert average["epoch"] == 3
    for name, value in average["model"].items():
        torch.testing.assert_close(value, (epochs[0][name] + epochs[1][name]) / 2)

    # ReturnnForwardJobV2 (best epoch), ReturnnComputePriorJobV2 (averaged model)
    from i6_minireturnn.data.hdf import HDFDataset

    log_probs = HDFDataset(files=[str(out / "dev_log_probs.hdf")], use_cache_manager=False)
    log_probs.init_seq_order(1)
    assert log_probs.num_seqs == 50 and log_probs.get_data_dim("data") == 11
    prior = np.loadtxt(out / "prior.txt")
    assert prior.shape == (11,) and abs(np.exp(prior).sum() - 1) < 1e-4
    assert 'size="11"' in (out / "prior.xml").read_text()

    # TorchOnnxExportJob: the exported averaged model computes what the torch model computes
    from i6_minireturnn import compat

    compat.install()  # the model file imports returnn.* names, as inside the runtime
    try:
        spec = importlib.util.spec_from_file_location("demo_model", folder / "recipe" / "demo_model.py")
        demo_model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo_model)
    finally:
        compat.uninstall()
    model = demo_model.CtcModel(feature_dim=16, num_labels=10).eval()
    model.load_state_dict(average["model"])
    features, lengths = torch.randn(3, 40, 16), torch.tensor([40, 25, 9])
    onnx_file = out / "model.onnx"
    if importlib.util.find_spec("onnxruntime") is not None:  # the onnx extra; CI installs it
        import onnxruntime

        session = onnxruntime.InferenceSession(str(onnx_file))
        (exported,) = session.run(None, {"data": features.numpy(), "data:size1": lengths.numpy()})
        with torch.no_grad():
            expected = model(features, lengths).numpy()
        for i, length in enumerate(lengths.tolist()):
            np.testing.assert_allclose(exported[i, :length], expected[i, :length], atol=1e-4)
    else:
        assert onnx_file.stat().st_size > 1000

    # GetBestPtCheckpointJob and AverageTorchCheckpointsJob over MiniReturnnTrainingJob outputs
    own_scores = _learning_rates(out / "own_learning_rates")
    best_epoch = min(own_scores, key=lambda e: own_scores[e]["dev_loss_ctc"])
    assert _model_state(out / "own_best.pt")["epoch"] == best_epoch
    own_models = _models_of(out / "own_learning_rates")
    own_epochs = [_model_state(own_models / f"epoch.00{e}.pt")["model"] for e in (3, 4)]
    for name, value in _model_state(out / "own_average.pt")["model"].items():
        torch.testing.assert_close(value, (own_epochs[0][name] + own_epochs[1][name]) / 2)


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
    # found by the config check in the create_files mini task, before the run task was queued
    job = folder / "work" / failed[0]
    assert (job / "error.create_files.1").exists() and not (job / "submit_log.run").exists()
    log = (job / "log.create_files.1").read_text()
    assert "learning_rat" in log and "learning_rate" in log  # the typo and the key it was meant to be
    assert not (folder / "output" / "broken" / "learning_rates").exists()


def _has_epoch_entry(learning_rates: Path, epoch: int) -> bool:
    """Whether the learning_rates file marks `epoch` as stored (its entry is written after the epoch's files)."""
    from i6_minireturnn.file_formats import read_learning_rate_file

    try:
        return epoch in read_learning_rate_file(str(learning_rates))
    except OSError:  # not written yet (it is replaced atomically: never seen half-written)
        return False


def test_killed_training_resumes_and_finishes(tmp_path, monkeypatch):
    from i6_core.returnn.config import ReturnnConfig
    from sisyphus import global_settings

    from jobs import MiniReturnnTrainingJob
    from jobs.launch import LEARNING_RATE_FILE

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
    learning_rates = base / "work" / LEARNING_RATE_FILE  # the run's own file (copied into output/ at the end)
    deadline = time.time() + 120
    while not _has_epoch_entry(learning_rates, 1) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # preempted in the middle of epoch 2, after epoch 1 was stored whole
    process.wait()
    assert first.exists() and not (base / "output" / "models" / "epoch.004.pt").exists()
    job.run()  # Sisyphus restarts the run task: it continues and finishes
    assert all(Path(str(c)).exists() for c in job.out_checkpoints.values())
    assert "Resuming training after stored epoch" in (base / "work" / "returnn.log").read_text()
