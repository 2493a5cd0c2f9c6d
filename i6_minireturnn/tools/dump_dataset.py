"""Prints sequences and statistics of a dataset; two command lines over the same datasets.

Ours (a summary: keys, the first sequences, length statistics)::

    python -m i6_minireturnn.tools.dump_dataset SOURCE [--dataset train] [--epoch 1] [--seqs 3]

RETURNN's ``tools/dump-dataset.py`` (:func:`main_returnn`, run by the root script ``tools/dump-dataset.py``, e.g. by
i6_core's ExtractDatasetMeanStddevJob)::

    python tools/dump-dataset.py CONFIG|DATASET_DICT|FILE.hdf [--dataset KEY] [--epoch 1] [--startseq 0] [--endseq 10]
        [--seqtags TAG,...] [--get_num_seqs] [--type stdout|null|print_tag|dump_tag|dump_seq_len|print_shape|numpy]
        [--key data] [--stats] [--dump_stats PREFIX] [--max_seq_length N|DICT|config] [--min_seq_length ...]
        [--dump_prefix P] [--dump_postfix .txt.gz] [--stdout_limit N] [--verbosity 4]

``--startseq``/``--endseq`` are inclusive (``--endseq -1``: to the end). ``--dump_stats PREFIX`` writes RETURNN's stats
files (see :mod:`.dataset_stats`) over the ``--key`` data of the dumped sequences. ``--type plot``/``interactive`` and
``--stdout_as_bytes`` are not supported and stop with an error.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic_file import atomic_path
from ..config import Config
from ..data.dataset import Dataset
from ..data.registry import init_dataset
from ..errors import ConfigError, DataError, UserError
from . import program_name
from .dataset_source import load_dataset, run_tool
from .dataset_stats import FeatureStats

# --type values of RETURNN's tool that we implement; "plot" and "interactive" need a display / a debug shell
DUMP_TYPES = ("stdout", "null", "print_tag", "dump_tag", "dump_seq_len", "print_shape", "numpy")
LengthLimit = Union[int, Dict[str, int], None]


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
    """Our command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(prog=program_name(__file__), description=__doc__.split("\n")[0])
    parser.add_argument("source", help="config file, or a dataset dict as Python literal")
    parser.add_argument("--dataset", default="train", help="config key of the dataset (default: train)")
    parser.add_argument("--epoch", type=int, default=1, help="epoch of the sequence order (default: 1)")
    parser.add_argument("--seqs", type=int, default=3, help="sequences to print (default: 3)")
    args = parser.parse_args(argv)
    return run_tool(
        lambda: print(describe(load_dataset(args.source, args.dataset)[0], epoch=args.epoch, num_shown=args.seqs))
    )


# ---- RETURNN's command line ------------------------------------------------------------------------------------------


def load_returnn_source(source: str, dataset_key: Optional[str] = None) -> Tuple[Dataset, Optional[Config]]:
    """RETURNN's first argument: a dataset dict literal, an ``.hdf`` file, or a config file (its ``train`` dataset,
    or the one named by ``--dataset``)."""
    is_file = os.path.isfile(source)
    if source.strip().startswith("{") and not is_file:
        if dataset_key:
            raise ConfigError(f"--dataset {dataset_key} names a dataset of a config file, but a dataset dict is given")
        return load_dataset(source.strip(), "dataset")
    if source.endswith(".hdf"):
        if dataset_key:
            raise ConfigError(f"--dataset {dataset_key} names a dataset of a config file, but an HDF file is given")
        if not is_file:
            raise DataError(f"HDF file not found: {source!r}")
        return init_dataset({"class": "HDFDataset", "files": [source], "use_cache_manager": False}, name="hdf"), None
    if not is_file:
        raise ConfigError(f"Config file not found: {source!r} (expected a config file, a dataset dict or an .hdf file)")
    return load_dataset(source, dataset_key or "train")


def build_returnn_parser() -> argparse.ArgumentParser:
    """RETURNN's ``dump-dataset.py`` arguments."""
    parser = argparse.ArgumentParser(
        prog=program_name(__file__, "dump-dataset.py"),
        description="Dump something from a dataset (RETURNN's dump-dataset).",
    )
    parser.add_argument("returnn_config", help="config file, dataset dict (Python literal) or HDF file")
    parser.add_argument("--dataset", help="config key of the dataset (default: train)")
    parser.add_argument("--epoch", type=int, default=1, help="epoch of the sequence order (default: 1)")
    parser.add_argument("--startseq", type=int, default=0, help="first sequence index (inclusive)")
    parser.add_argument("--endseq", type=int, default=None, help="last sequence index (inclusive), -1: all (10)")
    parser.add_argument("--seqtags", help="comma-separated sequence tags to dump (in this order)")
    parser.add_argument("--get_num_seqs", action="store_true", help="only print the number of sequences")
    parser.add_argument("--type", default="stdout", help=f"one of {', '.join(DUMP_TYPES)} (default: stdout)")
    parser.add_argument("--stdout_limit", type=float, default=None, help="array elements printed in full (inf: all)")
    parser.add_argument("--stdout_as_bytes", action="store_true", help="not supported")
    parser.add_argument("--verbosity", type=int, default=4, help="below 3: no progress/info lines")
    parser.add_argument(
        "--dump_prefix", default="/tmp/returnn.dump-dataset.", help="file name prefix of --type dump_seq files"
    )
    parser.add_argument(
        "--dump_postfix", default=".txt.gz", help="file name suffix of --type dump_seq files (default: .txt.gz)"
    )
    parser.add_argument("--key", default="data", help="data key to dump and to collect stats of (default: data)")
    parser.add_argument("--stats", action="store_true", help="print mean/std-dev stats of --key")
    parser.add_argument("--dump_stats", help="file prefix for the stats files (PREFIX.mean.txt, ...)")
    parser.add_argument("--max_seq_length", help="'config', int or dict per key: longer sequences are skipped")
    parser.add_argument("--min_seq_length", help="'config', int or dict per key: shorter sequences are skipped")
    return parser


def _length_limit(value: Optional[str], option: str, config: Optional[Config]) -> LengthLimit:
    """--max_seq_length / --min_seq_length: 'config' (the config's key of that name), an int or a {key: int} dict."""
    if not value:
        return None
    if value == "config":
        if config is None:
            raise ConfigError(f"--{option} config needs a config file, but a dataset is given directly")
        return config.typed_value(option, None)
    try:
        limit = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        limit = None
    if not isinstance(limit, (int, dict)):
        raise ConfigError(f"--{option} {value!r}: expected 'config', an int or a dict like {{'data': 100}}")
    return limit


def _limit_for(limit: LengthLimit, key: str) -> Optional[int]:
    if limit is None:
        return None
    return limit.get(key) if isinstance(limit, dict) else limit  # an int applies to every key, as in RETURNN


def _filter_reasons(lengths: Dict[str, int], max_len: LengthLimit, min_len: LengthLimit) -> List[str]:
    reasons = []
    for key, length in lengths.items():
        upper, lower = _limit_for(max_len, key), _limit_for(min_len, key)
        if upper is not None and length > upper:
            reasons.append(f"len({key}) = {length} > {upper}")
        if lower is not None and length < lower:
            reasons.append(f"len({key}) = {length} < {lower}")
    return reasons


def _seq_length(value: np.ndarray) -> int:
    return int(value.shape[0]) if value.ndim else 1


def _as_table(value: np.ndarray) -> np.ndarray:
    """numpy.savetxt takes 1-D or 2-D arrays: frames with more axes are flattened."""
    value = np.atleast_1d(value)
    return value.reshape(value.shape[0], -1) if value.ndim > 2 else value


def check_returnn_options(args: argparse.Namespace) -> None:
    """Options we do not implement stop the run with a reason instead of being ignored."""
    if args.type in ("plot", "interactive"):
        raise UserError(
            f"--type {args.type} is not supported by i6-minireturnn's dump-dataset (no display/debug shell)"
        )
    if args.type not in DUMP_TYPES:
        raise UserError(f"--type {args.type!r} unknown; supported: {', '.join(DUMP_TYPES)}")
    if args.stdout_as_bytes:
        raise UserError("--stdout_as_bytes is not supported by i6-minireturnn's dump-dataset")
    if args.startseq < 0:
        raise UserError(f"--startseq must be >= 0, got {args.startseq}")


def dump_returnn(dataset: Dataset, config: Optional[Config], args: argparse.Namespace, out: Any = None) -> int:
    """RETURNN's dump-dataset over `dataset`; returns the number of sequences dumped (filtered ones excluded)."""
    out = out or sys.stdout

    def info(message: str) -> None:
        if args.verbosity >= 3:
            print(message, file=out)

    seq_list = [tag for tag in args.seqtags.split(",") if tag] if args.seqtags else None
    dataset.init_seq_order(args.epoch, seq_list=seq_list)
    keys = dataset.get_data_keys()
    if args.key not in keys:
        raise DataError(f"--key {args.key!r}: dataset {dataset.name!r} has the data keys {keys}")
    num_seqs = dataset.num_seqs
    info(f"Dataset {dataset.name!r}, epoch {args.epoch}: {num_seqs} sequences, data keys {keys}")
    max_len = _length_limit(args.max_seq_length, "max_seq_length", config)
    min_len = _length_limit(args.min_seq_length, "min_seq_length", config)
    if args.get_num_seqs:
        if max_len is not None or min_len is not None:
            raise UserError("--get_num_seqs cannot be combined with --max_seq_length or --min_seq_length")
        print(f"num_seqs: {num_seqs}", file=out)
        return 0

    endseq = args.endseq if args.endseq is not None else (-1 if seq_list else 10)  # RETURNN's defaults
    last = num_seqs - 1 if endseq < 0 else min(endseq, num_seqs - 1)
    stats = FeatureStats() if (args.stats or args.dump_stats) else None
    lengths: Dict[str, List[int]] = {key: [] for key in keys}
    threshold = sys.maxsize if args.stdout_limit == float("inf") else int(args.stdout_limit or 1000)
    dumped = 0
    with contextlib.ExitStack() as stack:
        dump_file = None
        if args.type in ("dump_tag", "dump_seq_len"):
            filename = f"{args.dump_prefix}{'seq-tags' if args.type == 'dump_tag' else 'seq-lens'}.txt"
            dump_file = stack.enter_context(open(stack.enter_context(atomic_path(filename)), "w", encoding="utf-8"))
            info(f"Dumping to {filename}")
            if args.type == "dump_seq_len":
                dump_file.write("{\n")
        for seq_idx in range(args.startseq, last + 1):
            seq = dataset.get_seq(seq_idx)
            tag = seq["seq_tag"]
            seq_lengths = {key: _seq_length(seq[key]) for key in keys}
            for key, length in seq_lengths.items():
                lengths[key].append(length)
            progress = f"seq {seq_idx}/{num_seqs}"
            reasons = _filter_reasons(seq_lengths, max_len, min_len)
            if reasons:
                if args.type != "null":
                    print(f"{progress} tag {tag!r} filtered out: {', '.join(reasons)}", file=out)
                continue
            _dump_seq(args, seq, keys, progress, threshold, dump_file, out)
            if stats is not None:
                try:
                    stats.add(seq[args.key])
                except ValueError as exc:  # frame shape changes between sequences
                    raise DataError(f"Dataset {dataset.name!r}, sequence {tag!r}, key {args.key!r}: {exc}") from None
            dumped += 1
        if dump_file is not None and args.type == "dump_seq_len":
            dump_file.write("}\n")
    more = last + 1 < num_seqs
    info(f"Done: {dumped} sequences dumped{'; more sequences follow in the dataset' if more else ''}")
    for key, values in lengths.items():
        if values:
            array = np.array(values)
            figures = f"min {array.min()}, mean {array.mean():.2f}, max {array.max()}, total {array.sum()}"
            info(f"Seq-length {key!r}: {figures}")
    if stats is not None:
        print(stats.summary(f"Data {args.key!r}"), file=out)
        if args.dump_stats:
            if stats.num_seqs == 0:
                raise DataError(
                    f"--dump_stats {args.dump_stats}: no frames of {args.key!r} in the dumped sequences "
                    f"(indices {args.startseq}..{last} of {num_seqs}); nothing to write"
                )
            for filename in stats.write(args.dump_stats):
                print(f"Wrote {filename}", file=out)
    return dumped


def _dump_seq(
    args: argparse.Namespace,
    seq: Dict[str, Any],
    keys: List[str],
    progress: str,
    threshold: int,
    dump_file: Any,
    out: Any,
) -> None:
    """The per-sequence output of one --type."""
    tag, data = seq["seq_tag"], seq[args.key]
    others = [key for key in keys if key != args.key]  # RETURNN prints the targets after the --key data
    if args.type == "print_tag":
        print(f"{progress} tag: {tag}", file=out)
    elif args.type == "dump_tag":
        print(f"{progress} tag: {tag}", file=out)
        dump_file.write(f"{tag}\n")
    elif args.type == "dump_seq_len":
        print(f"{progress} tag: {tag} {args.key!r} len: {_seq_length(data)}", file=out)
        dump_file.write(f"{tag!r}: {_seq_length(data)!r},\n")
    elif args.type == "stdout":
        print(f"{progress} tag: {tag}", file=out)
        for key in [args.key] + others:
            text = np.array2string(np.asarray(seq[key]), threshold=threshold, max_line_width=120)
            print(f"{progress} {key}: {text}", file=out)
    elif args.type == "print_shape":
        for key in [args.key] + others:
            print(f"{progress} {key} shape: {tuple(seq[key].shape)}", file=out)
    elif args.type == "numpy":
        seq_idx = seq["seq_idx"]
        with atomic_path(f"{args.dump_prefix}{seq_idx}.data{args.dump_postfix}") as tmp:
            np.savetxt(tmp, _as_table(data))
        for key in others:
            value = _as_table(seq[key])
            fmt = "%i" if np.issubdtype(value.dtype, np.integer) else "%.18e"
            with atomic_path(f"{args.dump_prefix}{seq_idx}.targets.{key}{args.dump_postfix}") as tmp:
                np.savetxt(tmp, value, fmt=fmt)


def main_returnn(argv: Optional[Sequence[str]] = None) -> int:
    """RETURNN's ``dump-dataset.py`` command line; returns the exit code."""
    args = build_returnn_parser().parse_args(argv)

    def action() -> None:
        check_returnn_options(args)
        dataset, config = load_returnn_source(args.returnn_config, args.dataset)
        dump_returnn(dataset, config, args)

    try:
        return run_tool(action)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
