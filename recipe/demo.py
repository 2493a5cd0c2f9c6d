"""Demo pipeline: generated corpus -> HDF, 3 training epochs on CPU, best epoch, forward to HDF, dataset dump.

sis manager -r recipe/demo.py      (from the repository root)
"""

from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.training import GetBestPtCheckpointJob
from sisyphus import tk

from jobs import HdfDumpJob, MiniReturnnForwardJob, MiniReturnnTrainingJob
from jobs.serialization import Collection, Network

CORPUS = {"class": "SyntheticSpeechDataset", "num_classes": 10, "feature_dim": 16}


def py():
    train_hdf = HdfDumpJob({**CORPUS, "num_seqs": 1000, "seed": 1}, cpu_rqmt=1, time_rqmt=1).out_hdf
    dev_hdf = HdfDumpJob({**CORPUS, "num_seqs": 100, "seed": 2}, cpu_rqmt=1, time_rqmt=1).out_hdf
    tk.register_output("demo/dev.hdf", dev_hdf)

    def hdf(path, ordering):
        return {"class": "HDFDataset", "files": [path], "seq_ordering": ordering}

    network = Network(
        "demo_model.CtcModel",
        {"feature_dim": 16, "num_labels": 10},
        train_step="demo_model.train_step",
        forward_step="demo_model.forward_step",
        forward_init_hook="demo_model.forward_init_hook",
        forward_finish_hook="demo_model.forward_finish_hook",
    )
    train_config = ReturnnConfig(
        config={
            "train": hdf(train_hdf, "laplace:.100"),
            "dev": hdf(dev_hdf, "sorted"),
            "batch_size": 4000,
            "max_seqs": 64,
            "optimizer": {"class": "adam", "epsilon": 1e-8},
            "learning_rates": [3e-3, 3e-3, 1e-3],
            "gradient_clip_norm": 5.0,
        },
        python_epilog=[Collection([network])],
    )
    train = MiniReturnnTrainingJob(train_config, num_epochs=3, device="cpu", cpu_rqmt=2, mem_rqmt=4, time_rqmt=1)
    tk.register_output("demo/learning_rates", train.out_learning_rates)
    tk.register_output("demo/score_and_error.png", train.out_plot_se)

    best = GetBestPtCheckpointJob(train.out_model_dir, train.out_learning_rates, key="dev_loss_ctc", index=0)
    forward_config = ReturnnConfig(
        config={"forward": hdf(dev_hdf, "default"), "batch_size": 8000}, python_epilog=[Collection([network])]
    )
    forward = MiniReturnnForwardJob(
        best.out_checkpoint, forward_config, output_files=["log_probs.hdf"], device="cpu", cpu_rqmt=2, time_rqmt=1
    )
    tk.register_output("demo/dev_log_probs.hdf", forward.out_files["log_probs.hdf"])
