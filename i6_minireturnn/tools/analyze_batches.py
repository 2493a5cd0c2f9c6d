"""Batch statistics of a config's dataset: number of batches, sequences and frames per batch, padding ratio.

    python -m i6_minireturnn.tools.analyze_batches CONFIG [--dataset train] [--epoch 1]

Uses the config's batching keys (batch_size, max_seqs, min/max_seq_length, chunking_options). Where the dataset
knows its lengths nothing is loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..config import Config
from ..data.chunking import chunk_lengths
from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches, PipelineOptions
from . import program_name
from .dataset_source import load_dataset, run_tool


def analyze(dataset: Dataset, options: PipelineOptions, *, epoch: int = 1) -> Dict[str, float]:
    """Figures of one epoch's batches."""
    batches = EpochBatches(dataset, epoch, options)
    sizes: List[int] = []
    real: Dict[str, int] = {}
    padded: Dict[str, int] = {}
    if batches.plan is not None:  # planned: lengths without loading
        for batch in batches.plan:
            sizes.append(len(batch))
            lengths = [chunk_lengths(dataset.get_seq_length(item.seq_idx), item.span) for item in batch]
            for key in dataset.data_keys:
                values = [lengths_[key] for lengths_ in lengths]
                real[key] = real.get(key, 0) + sum(values)
                padded[key] = padded.get(key, 0) + max(values) * len(values)
    else:
        for batch in batches:
            sizes.append(len(batch["seq_tag"]))
            for key in dataset.data_keys:
                values = batch[f"{key}:size1"].tolist()
                real[key] = real.get(key, 0) + sum(values)
                padded[key] = padded.get(key, 0) + max(values) * len(values)
    figures: Dict[str, float] = {
        "batches": len(sizes),
        "sequences": sum(sizes),
        "seqs_per_batch_min": min(sizes),
        "seqs_per_batch_mean": float(np.mean(sizes)),
        "seqs_per_batch_max": max(sizes),
    }
    for key in dataset.data_keys:
        figures[f"{key}_frames"] = real[key]
        figures[f"{key}_padding_ratio"] = 1.0 - real[key] / padded[key] if padded[key] else 0.0
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(prog=program_name(__file__), description=__doc__.split("\n")[0])
    parser.add_argument("config", help="config file, or a dataset dict as Python literal")
    parser.add_argument("--dataset", default="train", help="config key of the dataset (default: train)")
    parser.add_argument("--epoch", type=int, default=1, help="epoch whose batches are analysed (default: 1)")
    args = parser.parse_args(argv)

    def action() -> None:
        dataset, config = load_dataset(args.config, args.dataset)
        options = PipelineOptions.from_config(config or Config(), device="cpu")
        options.num_workers = 0
        for name, value in analyze(dataset, options, epoch=args.epoch).items():
            print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
