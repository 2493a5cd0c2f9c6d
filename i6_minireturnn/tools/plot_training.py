"""Plots a training's scores and learning rate per epoch from its ``learning_rates`` file.

    python -m i6_minireturnn.tools.plot_training out/learning_rates [--out-dir DIR] [--format svg] [--title NAME]
    python tools/plot_training.py out/learning_rates

Writes ``score_and_error.<format>`` (every score per epoch on a log axis where all are positive, the best epoch by the
dev score marked) and ``learning_rate.<format>`` into the output folder (default: the learning_rates file's folder),
the file names of MiniReturnnTrainingJob's plots, which use these functions. The title defaults to the name of the
folder that holds the learning_rates file. Needs matplotlib (``pip install 'i6-minireturnn[plot]'``); importing this
module does not import torch, so the Sisyphus manager's Python can plot.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import UserError
from ..file_formats import EpochData, read_learning_rate_file
from . import program_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCORES_PLOT = "score_and_error"
LEARNING_RATE_PLOT = "learning_rate"


def _figure() -> Figure:
    """A figure outside pyplot's global state (no display backend needed, nothing to close)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(
            "Plotting needs matplotlib: pip install 'i6-minireturnn[plot]' (or pip install matplotlib)"
        ) from None
    return Figure(figsize=(8, 5), layout="constrained")


def score_series(data: Mapping[int, EpochData]) -> Dict[str, List[Tuple[int, float]]]:
    """(epoch, value) per score name, finite values only, epochs in order."""
    series: Dict[str, List[Tuple[int, float]]] = {}
    for epoch in sorted(data):
        for key, value in data[epoch].error.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((epoch, float(value)))
    return series


def best_epoch_key(keys: Sequence[str]) -> Optional[str]:
    """The score that picks the best epoch: the first dev score (``dev_...``) by name, else the first score of any
    evaluated dataset (``<name>_loss_...``), else None (training scores only)."""
    for prefix_test in (lambda k: k.startswith("dev_"), lambda k: "_loss_" in k):
        candidates = sorted(k for k in keys if prefix_test(k))
        if candidates:
            return candidates[0]
    return None


def best_epoch(data: Mapping[int, EpochData], key: Optional[str] = None) -> Optional[Tuple[str, int, float]]:
    """(score name, epoch, value) of the lowest value of `key` (default: :func:`best_epoch_key`), or None."""
    series = score_series(data)
    key = key or best_epoch_key(list(series))
    if key is None or not series.get(key):
        return None
    epoch, value = min(series[key], key=lambda point: (point[1], point[0]))
    return key, epoch, value


def _epoch_axis(ax: Axes, values: Sequence[float], ylabel: str) -> None:
    """Integer epoch ticks; a log value axis where every value is positive (scores often span decades)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.grid(True, which="major", alpha=0.3)


def plot_scores(data: Mapping[int, EpochData], title: str, *, key: Optional[str] = None) -> Figure:
    """Every score per epoch (evaluated datasets solid, training scores dashed) with the best epoch by `key`
    (default: the first dev score) marked."""
    fig = _figure()
    ax = fig.add_subplot()
    series = score_series(data)
    for name, points in sorted(series.items()):
        style = "-" if "_loss_" in name or name.startswith("dev_") else "--"
        ax.plot([e for e, _ in points], [v for _, v in points], style, marker="o", markersize=3, label=name)
    best = best_epoch(data, key)
    if best is not None:
        name, epoch, value = best
        ax.axvline(epoch, color="gray", linestyle=":", linewidth=1)
        ax.plot([epoch], [value], marker="*", markersize=14, color="black", linestyle="none",
                label=f"best {name}: epoch {epoch} ({value:.4g})")  # fmt: skip
    _epoch_axis(ax, [v for points in series.values() for _, v in points], "score")
    ax.set_title(f"{title}: scores")
    if series:
        ax.legend(fontsize="small")
    return fig


def plot_learning_rates(data: Mapping[int, EpochData], title: str) -> Figure:
    """The learning rate per epoch."""
    fig = _figure()
    ax = fig.add_subplot()
    points = [(e, float(data[e].learning_rate)) for e in sorted(data) if data[e].learning_rate is not None]
    ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=3)
    _epoch_axis(ax, [v for _, v in points], "learning rate")
    ax.set_title(f"{title}: learning rate")
    return fig


def write_plots(
    learning_rates_file: str,
    scores_output: str,
    learning_rate_output: str,
    *,
    title: Optional[str] = None,
    key: Optional[str] = None,
) -> None:
    """Reads `learning_rates_file` and writes both plots; the format follows each output's suffix (png, svg, pdf)."""
    data = read_learning_rate_file(learning_rates_file)
    title = title or default_title(learning_rates_file)
    for figure, output in (
        (plot_scores(data, title, key=key), scores_output),
        (plot_learning_rates(data, title), learning_rate_output),
    ):
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        figure.savefig(output)


def default_title(learning_rates_file: str) -> str:
    """The name of the folder holding the learning_rates file (a run's folder, usually named after its setup)."""
    return os.path.basename(os.path.dirname(os.path.abspath(learning_rates_file))) or learning_rates_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(prog=program_name(__file__), description=__doc__.split("\n")[0])
    parser.add_argument("learning_rates", help="the training's learning_rates file")
    parser.add_argument("--out-dir", help="folder for the plots (default: the learning_rates file's folder)")
    parser.add_argument("--format", default="png", help="png (default), svg or pdf")
    parser.add_argument("--title", help="plot title (default: the learning_rates file's folder name)")
    parser.add_argument("--key", help="score that picks the best epoch (default: the first dev score)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.learning_rates))
    outputs = [os.path.join(out_dir, f"{name}.{args.format}") for name in (SCORES_PLOT, LEARNING_RATE_PLOT)]
    try:
        # first what a user picks a checkpoint by (forward with ++load_epoch N): it needs no matplotlib
        best = best_epoch(read_learning_rate_file(args.learning_rates), args.key)
        if best is not None:
            print(f"Best epoch by {best[0]}: {best[1]} ({best[2]:.6g})")
        write_plots(args.learning_rates, outputs[0], outputs[1], title=args.title, key=args.key)
    except (UserError, OSError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {outputs[0]} and {outputs[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
