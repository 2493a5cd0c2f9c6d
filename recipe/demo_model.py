"""Model code of the demo pipeline, written as Mini-RETURNN model files are: a BLSTM CTC model and its steps."""

import torch
from returnn.datasets.hdf import SimpleHDFWriter
from torch import nn


class CtcModel(nn.Module):
    """Bidirectional LSTM encoder with a CTC output layer."""

    def __init__(self, feature_dim: int, num_labels: int, hidden: int = 64, **kwargs):
        super().__init__()
        self.num_labels = num_labels
        self.lstm = nn.LSTM(feature_dim, hidden, batch_first=True, bidirectional=True)
        self.output = nn.Linear(2 * hidden, num_labels + 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
        encoded, _ = self.lstm(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(encoded, batch_first=True)
        return self.output(encoded).log_softmax(-1)


def train_step(*, model, data, run_ctx, **kwargs):
    log_probs = model(data["data"], data["data:size1"])
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        data["classes"],
        data["data:size1"],
        data["classes:size1"],
        blank=model.num_labels,
        reduction="sum",
    )
    run_ctx.mark_as_loss(loss, "ctc", inv_norm_factor=data["classes:size1"].sum())


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.writer = SimpleHDFWriter("log_probs.hdf", dim=None, ndim=2)


def forward_step(*, model, data, run_ctx, **kwargs):
    log_probs = model(data["data"], data["data:size1"])
    run_ctx.writer.insert_batch(log_probs.cpu().numpy(), data["data:size1"].cpu().numpy(), data["seq_tag"])


def forward_finish_hook(run_ctx, **kwargs):
    run_ctx.writer.close()


def prior_step(*, model, data, run_ctx, **kwargs):
    """For task compute_priors (i6_core's ReturnnComputePriorJobV2): the posteriors summed over the real frames."""
    lengths = data["data:size1"]
    probs = model(data["data"], lengths).exp()
    mask = torch.arange(probs.shape[1], device=probs.device)[None, :] < lengths.to(probs.device)[:, None]
    summed = (probs * mask[:, :, None]).sum(dim=(0, 1))
    run_ctx.sum_probs = summed if run_ctx.sum_probs is None else run_ctx.sum_probs + summed
    run_ctx.sum_frames = run_ctx.sum_frames + lengths.sum()


def export(*, model, f, **kwargs):
    """For tools/torch_export_to_onnx.py (i6_core's TorchOnnxExportJob): features and lengths in, log-probs out."""
    features = torch.randn(1, 50, model.lstm.input_size)
    lengths = torch.tensor([50])
    torch.onnx.export(
        model,
        (features, lengths),
        f,
        input_names=["data", "data:size1"],
        output_names=["log_probs"],
        dynamic_axes={
            "data": {0: "batch", 1: "time"},
            "data:size1": {0: "batch"},
            "log_probs": {0: "batch", 1: "time"},
        },
    )
