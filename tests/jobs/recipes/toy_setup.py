"""What the job tests' recipes share: a generated speech-like corpus dumped to HDF, and the demo's CTC model."""

from typing import Optional, Tuple

from jobs import HdfDumpJob
from jobs.serialization import Network


def corpus(num_train: int, num_dev: int, *, feature_dim: int = 16, num_classes: int = 10) -> Tuple:
    """The (train, dev) HDF files of a generated corpus."""
    spec = {"class": "SyntheticSpeechDataset", "num_classes": num_classes, "feature_dim": feature_dim}
    train = HdfDumpJob({**spec, "num_seqs": num_train, "seed": 1}, cpu_rqmt=1, time_rqmt=1).out_hdf
    dev = HdfDumpJob({**spec, "num_seqs": num_dev, "seed": 2}, cpu_rqmt=1, time_rqmt=1).out_hdf
    return train, dev


def ctc_network(
    *,
    feature_dim: int = 16,
    num_labels: int = 10,
    hidden: int = 16,
    train_step: str = "demo_model.train_step",
    forward_step: Optional[str] = "demo_model.forward_step",
) -> Network:
    """recipe/demo_model.py's CTC model with its steps and the forward hooks that write log_probs.hdf."""
    return Network(
        "demo_model.CtcModel",
        {"feature_dim": feature_dim, "num_labels": num_labels, "hidden": hidden},
        train_step=train_step,
        forward_step=forward_step,
        forward_init_hook="demo_model.forward_init_hook",
        forward_finish_hook="demo_model.forward_finish_hook",
    )
