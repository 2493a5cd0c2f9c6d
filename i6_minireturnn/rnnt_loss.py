"""RNN-T (transducer) loss in plain PyTorch, for model files: ``from i6_minireturnn.rnnt_loss import rnnt_loss``.

The same loss as ``torchaudio.functional.rnnt_loss`` (its arguments, its defaults), without torchaudio, which has no
build for every torch. The log-softmax over the vocabulary and its gradient are one custom autograd step
that keeps no full-size tensor beyond the logits; the forward variables (alpha) are summed along the anti-diagonals of
the (frame, label position) lattice, each diagonal one vectorised log-space step, and autograd derives their gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["rnnt_loss"]

# Stands for log(0) in the lattice: finite, so that autograd through logaddexp never computes 0 * inf = NaN for cells
# outside a sequence's lengths; adding it a few thousand times stays far from float32's limit.
_LOG_ZERO = -1e30


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = -1,
    clamp: float = -1,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
) -> torch.Tensor:
    """The transducer loss, -log p(targets | frames) summed over all alignments, per sequence then reduced.

    :param logits: joiner output [B, T, U+1, V] (float32, float64, float16 or bfloat16; computed in float32, or float64
        for float64 logits). Frames from ``logit_lengths`` and label positions beyond ``target_lengths`` are ignored,
        whatever they hold.
    :param targets: label ids [B, U] (int32 or int64); entries beyond a sequence's target length are ignored.
    :param logit_lengths: frames per sequence [B], each at least 1 and at most T.
    :param target_lengths: labels per sequence [B], each at most U.
    :param blank: index of blank in V; negative counts from the end (-1: the last).
    :param clamp: only -1 (no clamping) is supported; clip the gradient norm instead (config key gradient_clip_norm).
    :param reduction: "mean" (over the batch), "sum", or "none" (the per-sequence losses [B]).
    :param fused_log_softmax: True: the log-softmax over V is done here; False: ``logits`` are log-probabilities.
    :return: the loss, float32 (float64 for float64 logits).
    """
    _check_arguments(logits, targets, logit_lengths, target_lengths, clamp, reduction)
    batch, frames, positions, vocab = logits.shape
    blank = blank + vocab if blank < 0 else blank
    if not 0 <= blank < vocab:
        raise ValueError(f"rnnt_loss: blank index {blank} is outside the vocabulary of size {vocab}")
    device = logits.device
    logit_lengths = logit_lengths.to(device=device, dtype=torch.long)
    target_lengths = target_lengths.to(device=device, dtype=torch.long)
    positions_range = torch.arange(positions, device=device)
    label_in_seq = positions_range[None, :-1] < target_lengths[:, None]  # [B, U]
    # padding in targets may hold any value (-1, say): blank is a valid index to read there
    targets = torch.where(label_in_seq, targets.to(device=device, dtype=torch.long), blank)
    frame_in_seq = torch.arange(frames, device=device)[None, :] < logit_lengths[:, None]  # [B, T]
    cell_in_seq = frame_in_seq[:, :, None] & (positions_range[None, :] <= target_lengths[:, None])[:, None, :]

    blank_scores, label_scores = _BlankAndLabelScores.apply(logits, targets, blank, fused_log_softmax, cell_in_seq)
    blank_scores = torch.where(cell_in_seq, blank_scores, _LOG_ZERO)  # [B, T, U+1]
    label_scores = torch.where(frame_in_seq[:, :, None] & label_in_seq[:, None, :], label_scores, _LOG_ZERO)  # [B,T,U]
    log_alpha = _forward_variables(blank_scores, label_scores)  # [T+U, B, U+1], by diagonal

    batch_range = torch.arange(batch, device=device)
    last_cell = log_alpha[logit_lengths - 1 + target_lengths, batch_range, target_lengths]
    losses = -(last_cell + blank_scores[batch_range, logit_lengths - 1, target_lengths])  # the final blank leaves
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_arguments(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    clamp: float,
    reduction: str,
) -> None:
    """Shapes and types, checked without reading values (which would wait for the device)."""
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"rnnt_loss: logits must be float [B, T, U+1, V], got {logits.dtype} {list(logits.shape)}")
    batch, _, positions, _ = logits.shape
    if targets.dim() != 2 or targets.is_floating_point() or list(targets.shape) != [batch, positions - 1]:
        raise ValueError(
            f"rnnt_loss: targets must be integer [B, U] = {[batch, positions - 1]} for logits {list(logits.shape)},"
            f" got {targets.dtype} {list(targets.shape)}"
        )
    for name, lengths in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.shape[0] != batch:
            raise ValueError(
                f"rnnt_loss: {name} must be integer [B] = [{batch}], got {lengths.dtype} {list(lengths.shape)}"
            )
    if clamp > 0:
        raise ValueError("rnnt_loss: clamp is not supported (only -1); clip the gradient norm instead")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"rnnt_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision sums over a lattice lose too much; float64 stays float64 (gradient checks)
    return torch.float64 if dtype == torch.float64 else torch.float32


class _BlankAndLabelScores(torch.autograd.Function):
    """log p(blank) [B, T, U+1] and log p(next label) [B, T, U] of every lattice cell from the logits.

    Its own backward, because autograd through log_softmax and gather would keep the full-size log-probabilities and
    build full-size gradients for each of them: here the backward builds one full-size tensor, the logits' gradient.
    """

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        blank: int,
        normalize: bool,
        cell_in_seq: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        scores = logits.to(_compute_dtype(logits.dtype))
        index = _label_index(targets, logits.shape[1])
        blank_scores = scores[..., blank].clone()  # a copy: an output must not be a view of an input
        label_scores = scores[:, :, :-1].gather(-1, index).squeeze(-1)
        log_norm: Optional[torch.Tensor] = None
        if normalize:
            log_norm = torch.logsumexp(scores, dim=-1)  # [B, T, U+1]
            blank_scores -= log_norm
            label_scores -= log_norm[:, :, :-1]
        ctx.blank, ctx.normalize = blank, normalize
        ctx.save_for_backward(logits, targets, cell_in_seq, log_norm)
        return blank_scores, label_scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_blank: torch.Tensor, grad_label: torch.Tensor):
        logits, targets, cell_in_seq, log_norm = ctx.saved_tensors
        dtype = _compute_dtype(logits.dtype)
        if ctx.normalize:
            # d log_softmax(x)_k / dx_v = [v == k] - softmax(x)_v: every score read pulls on all V by its probability
            grad = logits.to(dtype) - log_norm[..., None]  # a new tensor, then in place
            grad.exp_()
            pulled = grad_blank.clone()
            pulled[:, :, :-1] += grad_label
            grad.mul_(-pulled[..., None])
        else:
            grad = torch.zeros(logits.shape, dtype=dtype, device=logits.device)
        grad[..., ctx.blank] += grad_blank
        grad[:, :, :-1].scatter_add_(-1, _label_index(targets, logits.shape[1]), grad_label[..., None])
        grad.masked_fill_(~cell_in_seq[..., None], 0.0)  # padding may hold inf or NaN, whose softmax is NaN
        return grad.to(logits.dtype), None, None, None, None


def _label_index(targets: torch.Tensor, frames: int) -> torch.Tensor:
    """Index of each position's next label in V, for gather over [B, T, U, V]: [B, T, U, 1]."""
    return targets[:, None, :, None].expand(-1, frames, -1, 1)


def _forward_variables(blank_scores: torch.Tensor, label_scores: torch.Tensor) -> torch.Tensor:
    """log alpha of every lattice cell, by anti-diagonal: [T+U, B, U+1], entry [t+u, b, u] = cell (t, u).

    Cell (t, u) is reached from (t-1, u) by a blank and from (t, u-1) by label u-1; both lie on the previous diagonal,
    so each diagonal is one vectorised step (T+U-1 steps in all, instead of T*U).
    """
    batch, frames, positions = blank_scores.shape
    device = blank_scores.device
    diagonals = frames + positions - 1
    # skew the lattice so that diagonal n is row n: cell (n-u, u) sits at [n, :, u]
    frame_of = torch.arange(diagonals, device=device)[:, None] - torch.arange(positions, device=device)[None, :]
    on_lattice = (frame_of >= 0) & (frame_of < frames)  # [N, U+1]
    frame_index = frame_of.clamp(0, frames - 1)
    position_index = torch.arange(positions, device=device).expand(diagonals, -1)
    blank_by_diagonal = _by_diagonal(blank_scores[:, frame_index, position_index], on_lattice)  # [N, B, U+1]
    label_by_diagonal = _by_diagonal(label_scores[:, frame_index[:, :-1], position_index[:, :-1]], on_lattice[:, :-1])

    alpha = torch.full((batch, positions), _LOG_ZERO, dtype=blank_scores.dtype, device=device)
    alpha[:, 0] = 0.0  # the empty prefix at frame 0
    alphas = [alpha]
    unreachable = torch.full((batch, 1), _LOG_ZERO, dtype=blank_scores.dtype, device=device)
    for diagonal in range(diagonals - 1):
        by_blank = alpha + blank_by_diagonal[diagonal]  # (t, u) -> (t+1, u)
        by_label = alpha[:, :-1] + label_by_diagonal[diagonal]  # (t, u) -> (t, u+1)
        alpha = torch.logaddexp(by_blank, torch.cat([unreachable, by_label], dim=1))
        alphas.append(alpha)
    return torch.stack(alphas)


def _by_diagonal(skewed: torch.Tensor, on_lattice: torch.Tensor) -> torch.Tensor:
    """[B, N, K] scores read at skewed places -> [N, B, K], log(0) where the place is off the lattice; one diagonal
    is then a contiguous [B, K] block for the loop."""
    return torch.where(on_lattice[None], skewed, _LOG_ZERO).transpose(0, 1).contiguous()
