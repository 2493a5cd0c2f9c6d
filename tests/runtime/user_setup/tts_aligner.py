"""A speaker-conditioned TTS aligner, written as i6 TTS setups write them.

Training: forward-sum loss (CTC over phoneme positions) between audio frames and phonemes.
Forward: per-sequence log-prob matrices are collected in ``forward_step``; ``forward_finish_hook`` runs the
monotonic alignment search in a fork ``multiprocessing.Pool`` and writes the durations per phoneme into
``durations.hdf`` with ``SimpleHDFWriter(dim=None, ndim=1)``; the speaker id seen per tag goes to
``speakers_seen.json``.

The weights start at the identity (audio frames are one-hot phoneme prototypes plus a small speaker offset), so
the alignment is right from the start and a short training run keeps it.
"""

import json
import multiprocessing

import numpy as np
import torch
from torch import nn

from returnn.datasets.hdf import SimpleHDFWriter

NUM_PHONEMES = 8
NUM_SPEAKERS = 3


class Aligner(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_proj = nn.Linear(NUM_PHONEMES, NUM_PHONEMES, bias=False)
        self.phoneme_emb = nn.Embedding(NUM_PHONEMES, NUM_PHONEMES)
        self.speaker_emb = nn.Embedding(NUM_SPEAKERS, NUM_PHONEMES)
        self.blank_logit = nn.Parameter(torch.tensor(-5.0))
        with torch.no_grad():
            self.audio_proj.weight.copy_(torch.eye(NUM_PHONEMES))
            self.phoneme_emb.weight.copy_(torch.eye(NUM_PHONEMES))
            self.speaker_emb.weight.zero_()

    def forward(self, audio, phonemes, phonemes_len, speakers):
        """:return: log probs [B, T, N] of frame t belonging to phoneme position n (padding positions -inf-ish)"""
        frames = self.audio_proj(audio)  # [B, T, F]
        targets = self.phoneme_emb(phonemes.long()) + self.speaker_emb(speakers.long())[:, None]  # [B, N, F]
        scores = -10.0 * torch.cdist(frames, targets) ** 2  # [B, T, N]
        positions = torch.arange(phonemes.shape[1], device=audio.device)[None, None, :]
        return scores.masked_fill(positions >= phonemes_len[:, None, None], -1e9)


def get_model(epoch, step, **kwargs):
    return Aligner()


def _inputs(data):
    return data["audio_features"].float(), data["phonemes"], data["phonemes:size1"], data["speaker_labels"][:, 0]


def train_step(*, model, data, run_ctx, **kwargs):
    audio, phonemes, phonemes_len, speakers = _inputs(data)
    audio_len = data["audio_features:size1"]
    scores = model(audio, phonemes, phonemes_len, speakers)
    # forward-sum: CTC with class 0 = blank and class n+1 = phoneme position n, each position visited once
    blank = model.blank_logit.expand(scores.shape[0], scores.shape[1], 1)
    log_probs = torch.log_softmax(torch.cat([blank, scores], dim=-1), dim=-1)
    positions = torch.arange(1, phonemes.shape[1] + 1, device=audio.device).expand(phonemes.shape[0], -1)
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1), positions, audio_len, phonemes_len, blank=0, reduction="sum", zero_infinity=True
    )
    run_ctx.mark_as_loss(loss, "forward_sum", inv_norm_factor=audio_len.sum())


def monotonic_durations(scores):
    """Durations [N] of the best monotonic alignment of T frames to N phonemes (each phoneme at least one frame)."""
    num_frames, num_phonemes = scores.shape
    best = np.full((num_frames, num_phonemes), -np.inf)
    came_from_prev = np.zeros((num_frames, num_phonemes), dtype=bool)
    best[0, 0] = scores[0, 0]
    for t in range(1, num_frames):
        stay = best[t - 1]
        advance = np.concatenate([[-np.inf], best[t - 1, :-1]])
        came_from_prev[t] = advance > stay
        best[t] = np.maximum(stay, advance) + scores[t]
    durations = np.zeros(num_phonemes, dtype="int32")
    n = num_phonemes - 1
    for t in range(num_frames - 1, -1, -1):
        durations[n] += 1
        if came_from_prev[t, n]:
            n -= 1
    assert n == 0, "no monotonic path"
    return durations


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.score_matrices = []
    run_ctx.tags = []
    run_ctx.speakers = {}


def forward_step(*, model, data, run_ctx, **kwargs):
    audio, phonemes, phonemes_len, speakers = _inputs(data)
    scores = model(audio, phonemes, phonemes_len, speakers).cpu().numpy()
    for b, tag in enumerate(data["seq_tag"]):
        num_frames = int(data["audio_features:size1"][b])
        run_ctx.score_matrices.append(scores[b, :num_frames, : int(phonemes_len[b])])
        run_ctx.tags.append(tag)
        run_ctx.speakers[tag] = int(speakers[b])


def forward_finish_hook(run_ctx, **kwargs):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        durations = pool.map(monotonic_durations, run_ctx.score_matrices)
    writer = SimpleHDFWriter("durations.hdf", dim=None, ndim=1)
    for tag, dur in zip(run_ctx.tags, durations):
        writer.insert_batch(dur[None, :], np.array([len(dur)]), [tag])
    writer.close()
    with open("speakers_seen.json", "w") as f:
        json.dump(run_ctx.speakers, f)
