"""i6_core's own RETURNN jobs with this repository as ``returnn_root``: training, forward (V2) and prior (V2).

Each job is built as in a Sisyphus pipeline and its tasks are called in order, so ``rnn.py`` runs exactly as
i6_core launches it (its command line, environment, config keys and working directory) and the checks the jobs do
afterwards (hard link of the learning_rates file, plots, moving output files, the prior XML) run on our outputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch
from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.extract_prior import ReturnnComputePriorJobV2
from i6_core.returnn.forward import ReturnnForwardJobV2
from i6_core.returnn.training import GetBestPtCheckpointJob, ReturnnTrainingJob
from sisyphus import Job, global_settings, tk

from i6_minireturnn.data.hdf import HDFDataset
from jobs.checkpoint import PriorJobPtCheckpoint

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10  # SyntheticSpeechDataset's default labels; the models add the CTC blank
FEATURE_DIM = 16
TRAIN = {"class": "SyntheticSpeechDataset", "num_seqs": 50, "seed": 1}
DEV = {"class": "SyntheticSpeechDataset", "num_seqs": 20, "seed": 2}
PRIOR_DATA = {"class": "SyntheticSpeechDataset", "num_seqs": 30, "seed": 3}
NUM_EPOCHS = 3

# The model file as an i6 setup writes it for Mini-RETURNN: get_model, train_step, a forward step with hooks writing
# HDF, and the prior step/hooks of i6 setups (posteriors summed in run_ctx.sum_probs / run_ctx.sum_frames). Each
# job's config picks its forward step and hooks (FORWARD_TO_HDF, PRIOR_STEP, PRIOR_HOOKS).
MODEL_CODE = f"""
import numpy as np
import torch
from returnn.datasets.hdf import SimpleHDFWriter

NUM_CLASSES = {NUM_CLASSES}


class Model(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.layer = torch.nn.Linear({FEATURE_DIM}, NUM_CLASSES + 1)

    def forward(self, features):
        return self.layer(features).log_softmax(-1)


def get_model(*, epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    log_probs = model(data["data"])
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), data["classes"], data["data:size1"], data["classes:size1"],
        blank=NUM_CLASSES, reduction="sum",
    )
    run_ctx.mark_as_loss(loss, "ctc", inv_norm_factor=data["classes:size1"].sum())


def hdf_init_hook(run_ctx, **kwargs):
    run_ctx.writer = SimpleHDFWriter("output.hdf", dim=NUM_CLASSES + 1, ndim=2)


def hdf_step(*, model, data, run_ctx, **kwargs):
    log_probs = model(data["data"])
    run_ctx.writer.insert_batch(log_probs.cpu().numpy(), data["data:size1"].cpu().numpy(), data["seq_tag"])


def hdf_finish_hook(run_ctx, **kwargs):
    run_ctx.writer.close()


def prior_init_hook(run_ctx, **kwargs):
    run_ctx.sum_probs = None
    run_ctx.sum_frames = 0


def prior_step(*, model, data, run_ctx, **kwargs):
    lengths = data["data:size1"]
    probs = model(data["data"]).exp()
    mask = torch.arange(probs.shape[1], device=probs.device)[None, :] < lengths[:, None]
    summed = (probs * mask[:, :, None]).sum(dim=(0, 1))
    run_ctx.sum_frames = run_ctx.sum_frames + lengths.sum()
    run_ctx.sum_probs = summed if run_ctx.sum_probs is None else run_ctx.sum_probs + summed


def prior_finish_hook(run_ctx, **kwargs):
    average = (run_ctx.sum_probs / run_ctx.sum_frames).cpu().numpy()
    np.savetxt("prior.txt", np.log(average), delimiter=" ")
"""
FORWARD_TO_HDF = "forward_init_hook = hdf_init_hook\nforward_step = hdf_step\nforward_finish_hook = hdf_finish_hook"
PRIOR_STEP = "forward_step = prior_step"
PRIOR_HOOKS = "forward_init_hook = prior_init_hook\nforward_finish_hook = prior_finish_hook"


def _returnn_config(config: Dict[str, Any], *extra_code: str) -> ReturnnConfig:
    return ReturnnConfig(config={"backend": "torch", **config}, python_epilog=[MODEL_CODE, *extra_code])


def _common() -> Dict[str, Any]:
    return {"returnn_root": tk.Path(str(REPO)), "returnn_python_exe": tk.Path(sys.executable), "device": "cpu"}


def _prepare(job: Job, monkeypatch) -> Path:
    """Sets the job's folders up as Sisyphus does (work, output, output folders, input links); cwd: its work folder."""
    job._sis_setup_directory()
    monkeypatch.chdir(job._sis_path(global_settings.JOB_WORK_DIR))
    return Path(job._sis_path())


def _read_learning_rates(path: str) -> Dict[int, Dict[str, Any]]:
    # the way i6_core's GetBestEpochJob and ReturnnTrainingJob.plot read it
    def EpochData(learningRate, error):  # noqa: N802,N803 - RETURNN's file format
        return {"learning_rate": learningRate, "error": error}

    with open(path) as f:
        return eval(f.read(), {"EpochData": EpochData, "nan": float("nan"), "inf": float("inf"), "np": np})


def _hdf_seqs(path: str) -> Dict[str, np.ndarray]:
    dataset = HDFDataset(files=[path], use_cache_manager=False)
    dataset.init_seq_order(1)
    return {dataset.get_seq_tag(i): dataset.get_seq(i)["data"] for i in range(dataset.num_seqs)}


def _model(checkpoint: str) -> torch.nn.Module:
    """The config's model class with the checkpoint's parameters, built here without the runtime."""
    namespace: Dict[str, Any] = {}
    exec(MODEL_CODE.replace("from returnn.datasets.hdf import SimpleHDFWriter", ""), namespace)
    model = namespace["Model"]()
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    return model.eval()


def _sequences(opts: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """{tag: features} of a dataset dict, read directly."""
    from i6_minireturnn.data.registry import init_dataset

    dataset = init_dataset(dict(opts), name="reference")
    dataset.init_seq_order(1)
    return {dataset.get_seq_tag(i): dataset.get_seq(i)["data"] for i in range(dataset.num_seqs)}


def _expected_prior(checkpoint: str) -> np.ndarray:
    """The average posterior over all frames of the prior data."""
    model = _model(checkpoint)
    total, frames = np.zeros(NUM_CLASSES + 1), 0
    with torch.no_grad():
        for features in _sequences(PRIOR_DATA).values():
            total += model(torch.from_numpy(features)).exp().sum(0).double().numpy()
            frames += features.shape[0]
    return total / frames


@pytest.fixture(scope="module")
def sis_env(tmp_path_factory):
    """One Sisyphus work folder for the module; jobs are created fresh (not from other tests' job cache)."""
    import sisyphus.job

    folder = tmp_path_factory.mktemp("sis")
    (folder / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(global_settings, "WORK_DIR", str(folder / "work"))
        mp.setattr(global_settings, "TMP_PREFIX", str(folder / "tmp") + "/")  # the forward job's temp folder
        mp.setattr(sisyphus.job, "created_jobs", {})
        mp.chdir(folder)
        yield folder


@pytest.fixture(scope="module")
def trained(sis_env) -> ReturnnTrainingJob:
    """A finished ReturnnTrainingJob (create_files, run, plot), as the other jobs consume it."""
    config = _returnn_config(
        {
            "train": TRAIN,
            "dev": DEV,
            "batch_size": 1000,
            "optimizer": {"class": "adam"},
            "learning_rates": [0.01, 0.005, 0.002],
        }
    )
    job = ReturnnTrainingJob(config, num_epochs=NUM_EPOCHS, keep_epochs=[2, 3], log_verbosity=4, **_common())
    with pytest.MonkeyPatch.context() as mp:
        _prepare(job, mp)
        job.create_files()
        job.run()
        job.plot()
    return job


def test_training_job(trained):
    job = trained
    base = Path(job._sis_path())
    assert sorted(job.out_checkpoints) == [2, 3]
    for epoch, checkpoint in job.out_checkpoints.items():
        assert checkpoint.exists() and job.path_available(checkpoint.path)
        state = torch.load(str(checkpoint), weights_only=False)
        assert state["epoch"] == epoch and state["step"] > 0
        assert set(state["model"]) == {"layer.weight", "layer.bias"}
    data = _read_learning_rates(job.out_learning_rates.get_path())
    assert sorted(data) == [1, 2, 3]
    assert [data[e]["learning_rate"] for e in (1, 2, 3)] == [0.01, 0.005, 0.002]
    for epoch in (1, 2, 3):
        assert set(data[epoch]["error"]) == {"ctc", "dev_loss_ctc"}  # train scores unprefixed, as Mini-RETURNN
        assert all(math.isfinite(v) for v in data[epoch]["error"].values())
    assert data[3]["error"]["dev_loss_ctc"] < data[1]["error"]["dev_loss_ctc"]  # it learns
    # the job's own reading of the file: progress shown by the Sisyphus manager
    assert job._max_available_epoch() == 3 and job.info() == "ep 3/3"
    assert (base / "work" / "learning_rates").samefile(job.out_learning_rates.get_path())  # run()'s hard link
    assert Path(job.out_plot_se.get_path()).stat().st_size > 0
    assert Path(job.out_plot_lr.get_path()).stat().st_size > 0
    assert "epoch 3" in (base / "work" / "returnn.log").read_text()
    # i6_core's best-epoch job reads our learning_rates file and model folder unchanged
    best = GetBestPtCheckpointJob(job.out_model_dir, job.out_learning_rates, key="dev_loss_ctc")
    best._sis_setup_directory()
    best.run()
    assert best.out_epoch.get() == min(data, key=lambda epoch: data[epoch]["error"]["dev_loss_ctc"])
    assert torch.load(str(best.out_checkpoint), weights_only=False)["epoch"] == best.out_epoch.get()


def test_forward_job_v2(trained, monkeypatch):
    checkpoint = trained.out_checkpoints[NUM_EPOCHS]
    job = ReturnnForwardJobV2(
        model_checkpoint=checkpoint,
        returnn_config=_returnn_config({"forward_data": DEV, "batch_size": 1000}, FORWARD_TO_HDF),
        output_files=["output.hdf"],
        **_common(),
    )
    base = _prepare(job, monkeypatch)
    job.create_files()
    job.run()
    seqs = _hdf_seqs(job.out_files["output.hdf"].get_path())
    model = _model(str(checkpoint))
    references = _sequences(DEV)
    assert sorted(seqs) == sorted(references)
    with torch.no_grad():
        for tag, log_probs in seqs.items():
            expected = model(torch.from_numpy(references[tag])).numpy()
            np.testing.assert_allclose(log_probs, expected, rtol=1e-5, atol=1e-6)
    assert "Loading checkpoint" in (base / "work" / "returnn.log").read_text()  # run() copies the logs back


def test_forward_job_v2_dataset_name_and_random_init(sis_env, monkeypatch):
    # forward_data naming another dataset key (RETURNN's "dev"), no checkpoint: allow_random_model_init
    job = ReturnnForwardJobV2(
        model_checkpoint=None,
        returnn_config=_returnn_config({"dev": DEV, "forward_data": "dev", "batch_size": 1000}, FORWARD_TO_HDF),
        output_files=["output.hdf"],
        **_common(),
    )
    _prepare(job, monkeypatch)
    job.create_files()
    job.run()
    assert len(_hdf_seqs(job.out_files["output.hdf"].get_path())) == DEV["num_seqs"]


@pytest.mark.parametrize("hooks", [False, True], ids=["step_only", "with_prior_hooks"])
def test_compute_prior_job_v2(trained, monkeypatch, hooks):
    checkpoint = trained.out_checkpoints[NUM_EPOCHS]
    # the hooks of i6 setups write prior.txt into the working directory, not to output_file: the runtime writes that
    code = [PRIOR_STEP, PRIOR_HOOKS] if hooks else [PRIOR_STEP]
    job = ReturnnComputePriorJobV2(
        model_checkpoint=PriorJobPtCheckpoint(checkpoint.path),
        returnn_config=_returnn_config({"batch_size": 1000}, "\n".join(code)),
        prior_data=PRIOR_DATA,
        **_common(),
    )
    base = _prepare(job, monkeypatch)
    job.create_files()
    job.run()
    job.plot()
    log_prior = np.loadtxt(job.out_prior_txt_file.get_path())
    assert log_prior.shape == (NUM_CLASSES + 1,)
    assert np.exp(log_prior).sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.exp(log_prior), _expected_prior(str(checkpoint)), rtol=1e-4)
    xml = Path(job.out_prior_xml_file.get_path()).read_text()
    assert f'<vector-f32 size="{NUM_CLASSES + 1}">' in xml
    np.testing.assert_allclose([float(v) for v in xml.split(">")[2].split("<")[0].split()], log_prior, rtol=1e-6)
    assert Path(job.out_prior_png_file.get_path()).stat().st_size > 0
    if hooks:  # they ran: their own file holds the same prior
        np.testing.assert_allclose(np.loadtxt(base / "work" / "prior.txt"), log_prior, rtol=1e-6)
