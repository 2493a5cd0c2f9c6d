"""An attention encoder-decoder ASR model with a CTC auxiliary loss, written as i6 setups write them.

BiLSTM encoder, LSTM decoder with additive attention, CE on the decoder (labels + EOS) and CTC on the encoder,
scaled by 0.3. SpecAugment-like time masking starts in epoch 2, read from ``get_run_ctx().epoch`` in ``forward``.
Each train step appends its raw losses, norms and total loss to ``loss_log.jsonl`` so the test can recompute what
the runtime reports.
"""

import json

import torch
from torch import nn

from returnn.torch.context import get_run_ctx

NUM_LABELS = 10  # SyntheticSpeechDataset's default num_classes
EOS = NUM_LABELS  # also BOS for the decoder input, and the CTC blank
FEATURE_DIM = 16
LOG_FILE = "loss_log.jsonl"


def mask_time(features, lengths, max_width=3):
    """Zeroes one random span of up to max_width frames per sequence (SpecAugment's time masking)."""
    features = features.clone()
    for b in range(features.shape[0]):
        width = int(torch.randint(1, max_width + 1, ()))
        start = int(torch.randint(0, max(1, int(lengths[b]) - width), ()))
        features[b, start : start + width] = 0.0
    return features


class Model(nn.Module):
    def __init__(self, hidden=32, specaug_start_epoch=2):
        super().__init__()
        self.specaug_start_epoch = specaug_start_epoch
        self.encoder = nn.LSTM(FEATURE_DIM, hidden, batch_first=True, bidirectional=True)
        self.ctc_out = nn.Linear(2 * hidden, NUM_LABELS + 1)
        self.embedding = nn.Embedding(NUM_LABELS + 1, hidden)
        self.decoder_cell = nn.LSTMCell(hidden + 2 * hidden, hidden)
        self.att_query = nn.Linear(hidden, hidden)
        self.att_key = nn.Linear(2 * hidden, hidden)
        self.att_energy = nn.Linear(hidden, 1)
        self.readout = nn.Linear(hidden + 2 * hidden, NUM_LABELS + 1)
        self.last_masked = False

    def forward(self, features, features_len, labels, labels_len):
        """:return: CTC log probs [B, T, L+1], decoder logits [B, S+1, L+1] (teacher forcing, last step for EOS)"""
        run_ctx = get_run_ctx()
        self.last_masked = self.training and run_ctx.epoch >= self.specaug_start_epoch
        if self.last_masked:
            features = mask_time(features, features_len)
        packed = nn.utils.rnn.pack_padded_sequence(features, features_len.cpu(), batch_first=True, enforce_sorted=False)
        enc, _ = self.encoder(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=features.shape[1])
        ctc_log_probs = torch.log_softmax(self.ctc_out(enc), dim=-1)

        batch, time = enc.shape[:2]
        enc_mask = torch.arange(time, device=enc.device)[None, :] < features_len[:, None]
        keys = self.att_key(enc)
        bos = torch.full((batch, 1), EOS, dtype=torch.long, device=enc.device)
        dec_in = self.embedding(torch.cat([bos, labels.long()], dim=1))  # [B, S+1, H]
        state = (
            enc.new_zeros(batch, self.decoder_cell.hidden_size),
            enc.new_zeros(batch, self.decoder_cell.hidden_size),
        )
        context = enc.new_zeros(batch, enc.shape[-1])
        logits = []
        for i in range(dec_in.shape[1]):
            state = self.decoder_cell(torch.cat([dec_in[:, i], context], dim=-1), state)
            energy = self.att_energy(torch.tanh(keys + self.att_query(state[0])[:, None])).squeeze(-1)
            weights = torch.softmax(energy.masked_fill(~enc_mask, float("-inf")), dim=-1)
            context = torch.einsum("bt,btd->bd", weights, enc)
            logits.append(self.readout(torch.cat([state[0], context], dim=-1)))
        return ctc_log_probs, torch.stack(logits, dim=1)


def get_model(epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    features = data["data"].float()
    features_len = data["data:size1"]
    labels = data["classes"].long()
    labels_len = data["classes:size1"]
    ctc_log_probs, logits = model(features, features_len, labels, labels_len)

    ctc = nn.functional.ctc_loss(
        ctc_log_probs.transpose(0, 1), labels, features_len, labels_len, blank=EOS, reduction="sum", zero_infinity=True
    )
    # decoder targets: labels followed by EOS, padding ignored
    targets = torch.cat([labels, torch.full_like(labels[:, :1], -100)], dim=1)
    targets[torch.arange(labels.shape[0]), labels_len.long()] = EOS
    positions = torch.arange(targets.shape[1], device=targets.device)[None, :]
    targets = targets.masked_fill(positions > labels_len[:, None], -100)
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")

    num_labels = labels_len.sum()
    run_ctx.mark_as_loss(ctc, "ctc", scale=0.3, inv_norm_factor=num_labels)
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=num_labels + labels.shape[0])

    entry = {
        "mode": "train" if model.training else "eval",
        "epoch": run_ctx.epoch,
        "masked": model.last_masked,
        "ctc": ctc.item(),
        "ctc_norm": int(num_labels),
        "ce": ce.item(),
        "ce_norm": int(num_labels) + labels.shape[0],
        "total": run_ctx.total_loss().item(),
    }
    with open(LOG_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")
