"""Torch checkpoints for i6_core jobs that were written for TensorFlow checkpoints."""

from __future__ import annotations

from i6_core.returnn.training import PtCheckpoint
from sisyphus import tk


class PriorJobPtCheckpoint(PtCheckpoint):
    """A :class:`PtCheckpoint` that i6_core's ``ReturnnComputePriorJobV2`` accepts: its ``create_files`` checks that
    ``model_checkpoint.index_path`` exists, an attribute only TF checkpoints have. It hashes as PtCheckpoint does
    (the path alone)."""

    @property
    def index_path(self) -> tk.Path:
        return self.path
