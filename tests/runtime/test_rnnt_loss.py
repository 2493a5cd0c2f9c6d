"""The plain-PyTorch RNN-T loss against the definition: every alignment of tiny lattices enumerated and summed, its
gradients against finite differences (float64), variable lengths with garbage padding, reductions, half precision."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from i6_minireturnn.rnnt_loss import rnnt_loss


def loss_by_enumeration(logits: torch.Tensor, labels: list, blank: int) -> float:
    """-log of the summed probability of every alignment of one sequence (logits [T, U+1, V], float64): an alignment
    is T blanks and the U labels in some order that ends with a blank; a blank moves to the next frame, a label to the
    next label position."""
    log_probs = logits.double().log_softmax(-1)
    frames, num_labels = log_probs.shape[0], len(labels)
    total = 0.0
    for label_steps in itertools.combinations(range(frames + num_labels - 1), num_labels):
        t = u = 0
        log_p = 0.0
        for step in range(frames + num_labels):
            if step in label_steps:
                log_p += float(log_probs[t, u, labels[u]])
                u += 1
            else:
                log_p += float(log_probs[t, u, blank])
                t += 1
        assert (t, u) == (frames, num_labels)
        total += math.exp(log_p)
    return -math.log(total)


def random_batch(frame_lengths, label_lengths, vocab: int, blank: int, seed: int = 0, dtype=torch.float64):
    """Logits [B, max T, max U + 1, V] and labels [B, max U] (never blank), lengths as int32 tensors."""
    generator = torch.Generator().manual_seed(seed)
    batch, frames, num_labels = len(frame_lengths), max(frame_lengths), max(label_lengths)
    logits = torch.randn(batch, frames, num_labels + 1, vocab, generator=generator, dtype=dtype)
    labels = torch.randint(0, vocab - 1, (batch, num_labels), generator=generator)
    labels = torch.where(labels >= blank % vocab, labels + 1, labels)  # skip the blank index
    return logits, labels.int(), torch.tensor(frame_lengths).int(), torch.tensor(label_lengths).int()


@pytest.mark.parametrize("frames,num_labels,vocab", [(1, 0, 2), (1, 1, 3), (3, 2, 4), (4, 3, 3), (5, 1, 5), (2, 4, 6)])
@pytest.mark.parametrize("blank", [0, -1])
def test_loss_is_minus_log_of_all_alignments_summed(frames, num_labels, vocab, blank):
    logits, labels, frame_lengths, label_lengths = random_batch([frames], [num_labels], vocab, blank)
    loss = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=blank, reduction="none")
    expected = loss_by_enumeration(logits[0], labels[0].tolist(), blank % vocab)
    assert loss.shape == (1,) and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_sequences_of_a_padded_batch_score_as_alone():
    frame_lengths, label_lengths = [4, 2, 5, 1], [2, 3, 0, 1]
    logits, labels, frame_lengths_t, label_lengths_t = random_batch(frame_lengths, label_lengths, 5, 0, seed=1)
    # padding holds anything: huge values, NaN, labels out of the vocabulary
    for b, (frames, num_labels) in enumerate(zip(frame_lengths, label_lengths)):
        logits[b, frames:] = float("nan")
        logits[b, :, num_labels + 1 :] = 1e6
        labels[b, num_labels:] = -1
    logits.requires_grad_(True)
    losses = rnnt_loss(logits, labels, frame_lengths_t, label_lengths_t, blank=0, reduction="none")
    expected = [
        loss_by_enumeration(logits[b, :frames, : num_labels + 1].detach(), labels[b, :num_labels].tolist(), 0)
        for b, (frames, num_labels) in enumerate(zip(frame_lengths, label_lengths))
    ]
    assert losses.tolist() == pytest.approx(expected, rel=1e-10)

    losses.sum().backward()
    assert torch.isfinite(logits.grad).all()
    for b, (frames, num_labels) in enumerate(zip(frame_lengths, label_lengths)):
        assert (logits.grad[b, frames:] == 0).all() and (logits.grad[b, :, num_labels + 1 :] == 0).all()
        alone = logits[b : b + 1, :frames, : num_labels + 1].detach().clone().requires_grad_(True)
        one = slice(b, b + 1)
        rnnt_loss(alone, labels[one, :num_labels], frame_lengths_t[one], label_lengths_t[one], blank=0).backward()
        torch.testing.assert_close(logits.grad[b, :frames, : num_labels + 1], alone.grad[0])


@pytest.mark.parametrize("fused_log_softmax", [True, False])
def test_gradients_match_finite_differences(fused_log_softmax):
    logits, labels, frame_lengths, label_lengths = random_batch([3, 2, 4], [2, 1, 0], 4, 3, seed=2)
    if not fused_log_softmax:
        logits = logits.log_softmax(-1)  # log-probabilities given from outside
    logits.requires_grad_(True)

    def loss(x):
        return rnnt_loss(x, labels, frame_lengths, label_lengths, blank=3, fused_log_softmax=fused_log_softmax)

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-6, atol=1e-7)


def test_log_probabilities_given_from_outside_score_as_logits():
    logits, labels, frame_lengths, label_lengths = random_batch([3, 4], [2, 3], 5, 0, seed=3)
    fused = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=0, reduction="none")
    outside = rnnt_loss(logits.log_softmax(-1), labels, frame_lengths, label_lengths, 0, fused_log_softmax=False)
    torch.testing.assert_close(outside, fused.mean())


def test_reductions():
    logits, labels, frame_lengths, label_lengths = random_batch([3, 5, 2], [1, 2, 2], 4, 0, seed=4)
    losses = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=0, reduction="none")
    assert losses.shape == (3,)
    torch.testing.assert_close(
        rnnt_loss(logits, labels, frame_lengths, label_lengths, 0, reduction="sum"), losses.sum()
    )
    torch.testing.assert_close(rnnt_loss(logits, labels, frame_lengths, label_lengths, 0), losses.mean())  # the default


def test_no_labels_is_blank_at_every_frame():
    logits, labels, frame_lengths, label_lengths = random_batch([6], [0], 3, 0, seed=5)
    loss = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=0)
    torch.testing.assert_close(loss, -logits[0, :, 0].log_softmax(-1)[:, 0].sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    logits, labels, frame_lengths, label_lengths = random_batch([20, 14], [6, 9], 7, 0, seed=6, dtype=dtype)
    logits.requires_grad_(True)
    loss = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=0)
    loss.backward()
    as_float = logits.detach().float().requires_grad_(True)
    expected = rnnt_loss(as_float, labels, frame_lengths, label_lengths, blank=0)
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits.grad, as_float.grad.to(dtype))


def test_a_template_sized_batch_trains_towards_the_labels():
    """The loss falls when its gradient is followed: the gradient's sign and scale fit the value."""
    logits, labels, frame_lengths, label_lengths = random_batch([30, 24, 18], [8, 5, 7], 11, 10, seed=7)
    logits = logits.float().requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=1.0)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = rnnt_loss(logits, labels, frame_lengths, label_lengths, blank=10, reduction="sum")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"logits": torch.zeros(2, 3, 4)}, "logits must be float"),
        ({"targets": torch.zeros(2, 2, dtype=torch.int32)}, "targets must be integer"),
        ({"targets": torch.zeros(2, 3)}, "targets must be integer"),
        ({"logit_lengths": torch.ones(3, dtype=torch.int32)}, "logit_lengths must be integer"),
        ({"target_lengths": torch.ones(2)}, "target_lengths must be integer"),
        ({"blank": 5}, "blank index 5"),
        ({"clamp": 1.0}, "clamp is not supported"),
        ({"reduction": "avg"}, "reduction must be"),
    ],
)
def test_wrong_arguments_name_the_argument(change, message):
    arguments = {
        "logits": torch.zeros(2, 3, 4, 5),
        "targets": torch.ones(2, 3, dtype=torch.int32),
        "logit_lengths": torch.full((2,), 3, dtype=torch.int32),
        "target_lengths": torch.full((2,), 3, dtype=torch.int32),
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        rnnt_loss(**arguments)
