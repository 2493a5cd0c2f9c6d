"""i6_core's RETURNN jobs with this repository as ``returnn_root``, next to this package's jobs (CPU, generated data).

sis manager -r recipe/i6_core_jobs.py      (from the repository root)

Tones as a Bliss corpus -> BlissToOggZipJob -> ExtractDatasetMeanStddevJob; generated features -> ReturnnDumpHDFJob
-> ReturnnTrainingJob -> GetBestPtCheckpointJob, AverageTorchCheckpointsJob -> ReturnnForwardJobV2,
ReturnnComputePriorJobV2, TorchOnnxExportJob; and GetBestPtCheckpointJob / AverageTorchCheckpointsJob over a
MiniReturnnTrainingJob. An existing setup switches its RETURNN jobs to this runtime by pointing ``returnn_root`` at
this repository; the configs keep the Mini-RETURNN API (``get_model``, ``train_step``, ``forward_step``, hooks).
"""

import os
import sys

from i6_core.returnn.compile import TorchOnnxExportJob
from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.dataset import ExtractDatasetMeanStddevJob
from i6_core.returnn.extract_prior import ReturnnComputePriorJobV2
from i6_core.returnn.forward import ReturnnForwardJobV2
from i6_core.returnn.hdf import ReturnnDumpHDFJob
from i6_core.returnn.oggzip import BlissToOggZipJob
from i6_core.returnn.training import AverageTorchCheckpointsJob, GetBestPtCheckpointJob, ReturnnTrainingJob
from sisyphus import tk
from toy_audio_corpus import SyntheticBlissCorpusJob

from jobs import MiniReturnnTrainingJob
from jobs.checkpoint import PriorJobPtCheckpoint
from jobs.serialization import Collection, Network

# Fixed hashes: the jobs' hashes must not depend on where this repository or the Python lies.
RETURNN_ROOT = tk.Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), hash_overwrite="MINI_RETURNN")
PYTHON = tk.Path(sys.executable, hash_overwrite="PYTHON")
RETURNN = {"returnn_root": RETURNN_ROOT, "returnn_python_exe": PYTHON}

CORPUS = {"class": "SyntheticSpeechDataset", "num_classes": 10, "feature_dim": 16}
MODEL = {"feature_dim": 16, "num_labels": 10}


def network(**steps) -> Collection:
    return Collection([Network("demo_model.CtcModel", MODEL, **steps)])


def hdf(path, ordering="default"):
    return {"class": "HDFDataset", "files": [path], "seq_ordering": ordering}


def audio_pipeline():
    """Bliss corpus -> OggZip -> feature statistics."""
    corpus = SyntheticBlissCorpusJob(num_recordings=6)
    ogg_zip = BlissToOggZipJob(corpus.out_corpus, **RETURNN).out_ogg_zip
    tk.register_output("i6_core_jobs/corpus.ogg.zip", ogg_zip)
    features = {"features": "log_mel_filterbank", "num_feature_filters": 20, "window_len": 0.025, "step_len": 0.01}
    stats = ExtractDatasetMeanStddevJob(
        ReturnnConfig({"train": {"class": "OggZipDataset", "path": ogg_zip, "audio": features, "targets": None}}),
        **RETURNN,
    )
    tk.register_output("i6_core_jobs/feature_mean", stats.out_mean_file)
    tk.register_output("i6_core_jobs/feature_std_dev", stats.out_std_dev_file)


def dumped_corpora():
    """(train, dev) HDF files of generated features, dumped by ReturnnDumpHDFJob with tools/hdf_dump.py."""
    train_hdf = ReturnnDumpHDFJob({**CORPUS, "num_seqs": 300, "seed": 1}, cpu=1, mem=2, time=1, **RETURNN).out_hdf
    dev_hdf = ReturnnDumpHDFJob({**CORPUS, "num_seqs": 50, "seed": 2}, cpu=1, mem=2, time=1, **RETURNN).out_hdf
    tk.register_output("i6_core_jobs/dev.hdf", dev_hdf)
    return train_hdf, dev_hdf


def training_pipeline(train_hdf, dev_hdf):
    """ReturnnTrainingJob with rnn.py of this repository -> best / averaged checkpoints -> forward, prior, ONNX."""
    train_config = ReturnnConfig(
        config={
            "backend": "torch",
            "train": hdf(train_hdf, "laplace:.100"),
            "dev": hdf(dev_hdf, "sorted"),
            "batch_size": 4000,
            "max_seqs": 64,
            "optimizer": {"class": "adam", "epsilon": 1e-8},
            "learning_rates": [3e-3, 3e-3, 1e-3],
        },
        python_epilog=[network(train_step="demo_model.train_step")],
    )
    train = ReturnnTrainingJob(
        train_config, num_epochs=3, keep_epochs=[2, 3], device="cpu", cpu_rqmt=2, mem_rqmt=4, time_rqmt=1, **RETURNN
    )
    tk.register_output("i6_core_jobs/learning_rates", train.out_learning_rates)

    best = GetBestPtCheckpointJob(train.out_model_dir, train.out_learning_rates, key="dev_loss_ctc", index=0)
    average = AverageTorchCheckpointsJob(checkpoints=[train.out_checkpoints[2], train.out_checkpoints[3]], **RETURNN)
    tk.register_output("i6_core_jobs/average.pt", average.out_checkpoint.path)

    forward_config = ReturnnConfig(
        config={"backend": "torch", "forward_data": hdf(dev_hdf), "batch_size": 8000},
        python_epilog=[
            network(
                forward_step="demo_model.forward_step",
                forward_init_hook="demo_model.forward_init_hook",
                forward_finish_hook="demo_model.forward_finish_hook",
            )
        ],
    )
    forward = ReturnnForwardJobV2(
        model_checkpoint=best.out_checkpoint,
        returnn_config=forward_config,
        output_files=["log_probs.hdf"],
        device="cpu",
        cpu_rqmt=2,
        **RETURNN,
    )
    tk.register_output("i6_core_jobs/dev_log_probs.hdf", forward.out_files["log_probs.hdf"])

    prior_config = ReturnnConfig(
        config={"backend": "torch", "batch_size": 8000}, python_epilog=[network(forward_step="demo_model.prior_step")]
    )
    prior = ReturnnComputePriorJobV2(
        PriorJobPtCheckpoint(average.out_checkpoint.path),
        prior_config,
        prior_data=hdf(train_hdf),
        device="cpu",
        cpu_rqmt=2,
        **RETURNN,
    )
    tk.register_output("i6_core_jobs/prior.txt", prior.out_prior_txt_file)
    tk.register_output("i6_core_jobs/prior.xml", prior.out_prior_xml_file)

    export_config = ReturnnConfig(config={}, python_epilog=[network(), "from demo_model import export\n"])
    onnx = TorchOnnxExportJob(
        returnn_config=export_config,
        checkpoint=average.out_checkpoint,
        input_names=["data", "data:size1"],
        output_names=["log_probs"],
        **RETURNN,
    )
    tk.register_output("i6_core_jobs/model.onnx", onnx.out_onnx_model)


def own_training_pipeline(train_hdf, dev_hdf):
    """GetBestPtCheckpointJob and AverageTorchCheckpointsJob over this package's MiniReturnnTrainingJob."""
    config = ReturnnConfig(
        config={
            "train": hdf(train_hdf, "laplace:.100"),
            "dev": hdf(dev_hdf, "sorted"),
            "batch_size": 4000,
            "max_seqs": 64,
            "optimizer": {"class": "adam", "epsilon": 1e-8},
            "learning_rates": [3e-3, 3e-3, 1e-3, 1e-3],
        },
        python_epilog=[network(train_step="demo_model.train_step")],
    )
    train = MiniReturnnTrainingJob(config, num_epochs=4, keep_epochs=[3], device="cpu", cpu_rqmt=2, time_rqmt=1)
    tk.register_output("i6_core_jobs/own_learning_rates", train.out_learning_rates)
    best = GetBestPtCheckpointJob(train.out_model_dir, train.out_learning_rates, key="dev_loss_ctc", index=0)
    tk.register_output("i6_core_jobs/own_best.pt", best.out_checkpoint.path)
    average = AverageTorchCheckpointsJob(checkpoints=[train.out_checkpoints[3], train.out_checkpoints[4]], **RETURNN)
    tk.register_output("i6_core_jobs/own_average.pt", average.out_checkpoint.path)


def py():
    audio_pipeline()
    corpora = dumped_corpora()
    training_pipeline(*corpora)
    own_training_pipeline(*corpora)
