"""A training and a forward job whose workers a test kills mid-run (as a lost node or a preemption does): Sisyphus
resubmits both, with the same requirements, and both finish. The forward reads epoch 1, so it runs while the
training goes on (a checkpoint is available once written)."""

from i6_core.returnn.config import ReturnnConfig
from sisyphus import tk
from toy_setup import corpus, ctc_network

from jobs import MiniReturnnForwardJob, MiniReturnnTrainingJob
from jobs.serialization import Collection, Import


def py():
    train_hdf, dev_hdf = corpus(600, 40)
    network = ctc_network(hidden=32, train_step="slow_model.train_step", forward_step=None)
    config = ReturnnConfig(
        config={
            "train": {"class": "HDFDataset", "files": [train_hdf], "seq_ordering": "laplace:.20"},
            "batch_size": 3000,
            "optimizer": {"class": "adam"},
            "learning_rate": 1e-3,
        },
        python_epilog=[Collection([network])],
    )
    train = MiniReturnnTrainingJob(config, num_epochs=3, device="cpu", cpu_rqmt=1, mem_rqmt=4, time_rqmt=1)
    tk.register_output("preempted/learning_rates", train.out_learning_rates)
    forward_config = ReturnnConfig(
        config={"forward": {"class": "HDFDataset", "files": [dev_hdf]}, "batch_size": 600},
        python_epilog=[Collection([network, Import("slow_model.forward_step", import_as="forward_step")])],
    )
    forward = MiniReturnnForwardJob(
        train.out_checkpoints[1], forward_config, output_files=["log_probs.hdf"], device="cpu", cpu_rqmt=1, mem_rqmt=4
    )
    tk.register_output("preempted/dev_log_probs.hdf", forward.out_files["log_probs.hdf"])
