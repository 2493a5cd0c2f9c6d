"""The runtime's plain-PyTorch RNN-T loss (``i6_minireturnn.rnnt_loss``) against ``torchaudio.functional.rnnt_loss``.

Needs torchaudio (the machine's torch build). Prints, for random logits of several sizes with variable lengths (the
first sequence of each batch full length, as torchaudio wants), the largest absolute difference of the per-sequence
losses and of the logits' gradients (of the summed loss) on CPU and on CUDA, for ``fused_log_softmax`` True and False;
then, on CUDA, the time of one forward + backward of each (median over repeats, synchronised) and the peak memory
beyond the logits, for a template-sized batch (B=16, T=60, U=15, V=11) and an i6-sized one (B=16, T=200, U=50,
V=1000).

    python benchmarks/rnnt_loss_vs_torchaudio.py [--repeats 20]

torchaudio needs a torch build of its own: on a machine without a GPU, a separate virtual environment with
torch 2.14.1 (the CUDA build also runs on the CPU) and torchaudio 2.11.1 runs the CPU part
(``PYTHONPATH=. VENV/bin/python benchmarks/rnnt_loss_vs_torchaudio.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Tuple

import torch
import torchaudio
from torchaudio.functional import rnnt_loss as torchaudio_rnnt_loss

from i6_minireturnn.rnnt_loss import rnnt_loss

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def random_batch(batch: int, frames: int, labels: int, vocab: int, device: str, seed: int = 0) -> Batch:
    """Logits [B, T, U+1, V], labels [B, U] (never the blank, the last index), int32 lengths: the first sequence full,
    the others shorter at random."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, labels + 1, vocab, generator=generator)
    targets = torch.randint(0, vocab - 1, (batch, labels), generator=generator, dtype=torch.int32)
    frame_lengths = torch.randint(max(1, labels), frames + 1, (batch,), generator=generator, dtype=torch.int32)
    label_lengths = torch.randint(0, labels + 1, (batch,), generator=generator, dtype=torch.int32)
    frame_lengths[0], label_lengths[0] = frames, labels
    return tuple(tensor.to(device) for tensor in (logits, targets, frame_lengths, label_lengths))


def loss_and_grad(loss_fn: Callable, batch: Batch, fused: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    logits, targets, frame_lengths, label_lengths = batch
    logits = (logits if fused else logits.log_softmax(-1)).detach().requires_grad_(True)
    losses = loss_fn(logits, targets, frame_lengths, label_lengths, blank=-1, reduction="none", fused_log_softmax=fused)
    losses.sum().backward()
    return losses.detach(), logits.grad


def compare(devices: List[str]) -> None:
    print("max |ours - torchaudio|: per-sequence loss (largest loss), logits' gradient (largest gradient)")
    for device in devices:
        for size in [(1, 1, 0, 2), (3, 5, 3, 7), (4, 20, 8, 30), (8, 50, 20, 100), (4, 120, 40, 500)]:
            for fused in (True, False):
                batch = random_batch(*size, device=device, seed=sum(size))
                loss, grad = loss_and_grad(rnnt_loss, batch, fused)
                ref_loss, ref_grad = loss_and_grad(torchaudio_rnnt_loss, batch, fused)
                print(
                    f"  {device:4} B,T,U,V={size!s:18} fused={fused!s:5}  loss {(loss - ref_loss).abs().max():.2e}"
                    f" ({ref_loss.abs().max():.1f})  grad {(grad - ref_grad).abs().max():.2e}"
                    f" ({ref_grad.abs().max():.2f})"
                )
        batch = random_batch(6, 30, 10, 20, device=device, seed=1)
        for reduction in ("mean", "sum"):
            ours = rnnt_loss(*batch, blank=-1, reduction=reduction)
            reference = torchaudio_rnnt_loss(*batch, blank=-1, reduction=reduction)
            print(f"  {device:4} reduction={reduction:4}  |ours - torchaudio| {(ours - reference).abs():.2e}")


def time_cuda(loss_fn: Callable, batch: Batch, repeats: int) -> Tuple[float, float]:
    """Median ms of one forward + backward, and the peak memory in MiB above what the logits take."""
    logits = batch[0].detach().requires_grad_(True)
    times = []
    for i in range(repeats + 3):  # 3 warm-up calls
        logits.grad = None
        torch.cuda.synchronize()
        if i == 3:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss_fn(logits, *batch[1:], blank=-1, reduction="sum").backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[3:]), (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    has_cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name() if has_cuda else "no GPU"
    print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, {card}")
    compare(["cpu", "cuda"] if has_cuda else ["cpu"])
    if not has_cuda:
        return
    print("CUDA, one forward + backward (reduction sum): median ms, peak MiB beyond the logits")
    for size in [(16, 60, 15, 11), (16, 200, 50, 1000)]:
        batch = random_batch(*size, device="cuda")
        logits_mib = batch[0].numel() * 4 / 2**20
        for name, loss_fn in (("ours", rnnt_loss), ("torchaudio", torchaudio_rnnt_loss)):
            ms, mib = time_cuda(loss_fn, batch, args.repeats)
            print(f"  B,T,U,V={size!s:18} {name:10} {ms:8.2f} ms  {mib:8.1f} MiB  (logits {logits_mib:.1f} MiB)")


if __name__ == "__main__":
    main()
