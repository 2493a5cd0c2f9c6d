"""Prints sequences and statistics of a dataset (a dataset dict literal or a config's dataset).

python -m i6_minireturnn.tools.dump_dataset SOURCE [--dataset train] [--epoch 1] [--seqs 3]
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.dataset import Dataset
from .dataset_source import load_dataset, run_tool


def describe(dataset: Dataset, *, epoch: int = 1, num_shown: int = 3) -> str:
    """Data keys, the first sequences and length statistics of an epoch (loads every sequence)."""
    dataset.init_seq_order(epoch)
    lines = [f"dataset {dataset.name!r}: {dataset.num_seqs} sequences in epoch {epoch}"]
    for key, info in dataset.data_keys.items():
        kind = f"sparse, {info.dim} classes" if info.sparse else f"dense, frame shape {list(info.shape)}"
        lines.append(f"  key {key!r}: {kind}, dtype {info.dtype}")
    lengths: Dict[str, List[int]] = {key: [] for key in dataset.data_keys}
    for seq_idx in range(dataset.num_seqs):
        seq = dataset.get_seq(seq_idx)
        for key in lengths:
            lengths[key].append(int(seq[key].shape[0]) if seq[key].ndim else 1)
        if seq_idx < num_shown:
            lines.append(f"seq {seq_idx} {seq['seq_tag']!r}:")
            for key in dataset.data_keys:
                value = seq[key]
                if dataset.data_keys[key].sparse:
                    shown = value[:20].tolist()
                    lines.append(f"  {key}: {shown}{' ...' if len(value) > 20 else ''}")
                else:
                    lines.append(f"  {key}: shape {list(value.shape)}, mean {value.mean():.4g}, std {value.std():.4g}")
    for key, values in lengths.items():
        if values:
            array = np.array(values)
            lines.append(
                f"lengths {key!r}: min {array.min()}, mean {array.mean():.1f}, max {array.max()}, total {array.sum()}"
            )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="config file, or a dataset dict as Python literal")
    parser.add_argument("--dataset", default="train")
    parser.add_argument("--epoch", type=int, default=1)
    parser.add_argument("--seqs", type=int, default=3, help="sequences to print")
    args = parser.parse_args(argv)
    return run_tool(
        lambda: print(describe(load_dataset(args.source, args.dataset)[0], epoch=args.epoch, num_shown=args.seqs))
    )


if __name__ == "__main__":
    sys.exit(main())
