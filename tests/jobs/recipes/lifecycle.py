"""A training's life in a setup: trained, cleaned up by Sisyphus, continued with more epochs, read downstream.

The stages are the recipes a user runs one after the other (`sis manager -r recipe/lifecycle.py`, with the stage in
LIFECYCLE_STAGE): 1 trains 2 epochs; 2 adds another job, so that the manager runs again and its cleaner cleans the
finished training up; 3 continues the training to 4 epochs, trains 4 epochs from scratch for comparison, and runs
i6_core's best-epoch jobs on the cleaned-up training and on the continued one, and a forward job. The configs hold
the model code as returnn_common's README writes it: a bare Network in python_epilog.
"""

import os

from i6_core.returnn.config import ReturnnConfig
from i6_core.returnn.training import GetBestEpochJob, GetBestPtCheckpointJob
from sisyphus import tk
from toy_setup import corpus, ctc_network

from jobs import HdfDumpJob, MiniReturnnForwardJob, MiniReturnnTrainingJob


def py():
    stage = int(os.environ.get("LIFECYCLE_STAGE", "3"))
    train_hdf, dev_hdf = corpus(200, 40)
    network = ctc_network()
    config = ReturnnConfig(
        config={
            "train": {"class": "HDFDataset", "files": [train_hdf], "seq_ordering": "laplace:.20"},
            "dev": {"class": "HDFDataset", "files": [dev_hdf], "seq_ordering": "sorted"},
            "batch_size": 3000,
            "optimizer": {"class": "adam"},
            "learning_rates": [3e-3, 3e-3, 1e-3, 1e-3],
        },
        python_epilog=[network],
    )

    def training(num_epochs, **kwargs):
        return MiniReturnnTrainingJob(
            config, num_epochs=num_epochs, device="cpu", cpu_rqmt=1, mem_rqmt=2, time_rqmt=1, **kwargs
        )

    first = training(2)
    tk.register_output("lifecycle/first/learning_rates", first.out_learning_rates)
    tk.register_output("lifecycle/first/score_and_error.png", first.out_plot_se)
    if stage >= 2:
        more = HdfDumpJob({"class": "SyntheticSpeechDataset", "num_seqs": 40, "seed": 3}, cpu_rqmt=1, time_rqmt=1)
        tk.register_output("lifecycle/more.hdf", more.out_hdf)
    if stage >= 3:
        longer = training(4, continue_from=first)
        tk.register_output("lifecycle/longer/epoch.004.pt", longer.out_checkpoints[4].path)
        tk.register_output("lifecycle/longer/learning_rate.png", longer.out_plot_lr)
        scratch = training(4)  # another job (num_epochs is hashed): the same 4 epochs from the start
        tk.register_output("lifecycle/scratch/epoch.004.pt", scratch.out_checkpoints[4].path)
        best_first = GetBestEpochJob(first.out_model_dir, first.out_learning_rates, key="dev_loss_ctc")
        tk.register_output("lifecycle/first/best_epoch", best_first.out_epoch)
        best = GetBestPtCheckpointJob(longer.out_model_dir, longer.out_learning_rates, key="dev_loss_ctc")
        tk.register_output("lifecycle/longer/best.pt", best.out_checkpoint.path)
        forward_config = ReturnnConfig(
            config={"forward": {"class": "HDFDataset", "files": [dev_hdf]}, "batch_size": 8000},
            python_epilog=[network],
        )
        forward = MiniReturnnForwardJob(
            best.out_checkpoint, forward_config, output_files=["log_probs.hdf"], device="cpu", cpu_rqmt=1
        )
        tk.register_output("lifecycle/longer/dev_log_probs.hdf", forward.out_files["log_probs.hdf"])
