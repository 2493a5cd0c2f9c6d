"""tools/dump-dataset.py as i6_core's ExtractDatasetMeanStddevJob runs it (stats files against numpy), and the other
RETURNN dump-dataset options over our datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("h5py")

from i6_minireturnn.data.hdf_writer import SimpleHDFWriter  # noqa: E402
from i6_minireturnn.tools.dump_dataset import main_returnn  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "dump-dataset.py"
JOB_ARGS = ["--endseq", "-1", "--type", "null", "--stats", "--dump_stats", "stats"]  # then --key <data_key>

# What i6_core's ReturnnConfig.write produces for ReturnnConfig({"train": ...}) (header, pprint'ed keys, epilogue)
CONFIG = """#!rnn.py




train = {dataset}
dev = {{'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 4, 'seq_len': 5}}
config = {{}}

locals().update(**config)


"""


def write_hdf(path, seed=0):
    """Sequences of 3 features with a large offset (a naive sum of squares would lose the variance) and labels."""
    rng = np.random.RandomState(seed)
    seqs = []
    writer = SimpleHDFWriter(str(path), dim=3, ndim=2, extra_type={"classes": (5, 1, "int32")})
    for i, frames in enumerate([7, 1, 12, 4, 9]):
        data = (1000.0 + rng.standard_normal((frames, 3)) * [1.0, 0.01, 5.0]).astype("float32")
        labels = rng.randint(0, 5, size=frames + 1).astype("int32")
        writer.insert_batch(data[None], [frames], [f"seq-{i}"], extra={"classes": labels[None]})
        seqs.append((data, labels))
    writer.close()
    return seqs


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seqs = write_hdf(tmp_path / "feats.hdf")
    dataset = f"{{'class': 'HDFDataset', 'files': [{str(tmp_path / 'feats.hdf')!r}], 'use_cache_manager': False}}"
    (tmp_path / "returnn.config").write_text(CONFIG.format(dataset=dataset))
    return tmp_path, seqs


def read_lines(path):
    """As ExtractDatasetMeanStddevJob reads the files: one float per line."""
    with open(path) as f:
        return [float(line) for line in f]


def job_totals(means, std_devs):
    """ExtractDatasetMeanStddevJob's iterative total mean / std-dev over the per-feature values."""
    total_mean = total_var = 0.0
    for i, (mean, std_dev) in enumerate(zip(means, std_devs)):
        var = std_dev**2
        adjusted = (total_mean - mean) ** 2 * i / (i + 1)
        total_var = (total_var * i + var + adjusted) / (i + 1)
        total_mean = (total_mean * i + mean) / (i + 1)
    return total_mean, np.sqrt(total_var)


def test_job_command_line_writes_mean_and_std_dev(setup):
    folder, seqs = setup
    command = [sys.executable, str(TOOL), "returnn.config", *JOB_ARGS, "--key", "data"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    frames = np.concatenate([data for data, _ in seqs]).astype(np.float64)
    means, std_devs = read_lines(folder / "stats.mean.txt"), read_lines(folder / "stats.std_dev.txt")
    np.testing.assert_allclose(means, frames.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std_devs, frames.std(axis=0), rtol=1e-9)  # population std-dev, as RETURNN
    np.testing.assert_allclose(read_lines(folder / "stats.min.txt"), frames.min(axis=0))
    np.testing.assert_allclose(read_lines(folder / "stats.max.txt"), frames.max(axis=0))
    info = eval((folder / "stats.info.txt").read_text())  # RETURNN's format: a dict literal with a trailing comma
    assert info == {"num_seqs": 5, "total_data_len": len(frames)}
    total_mean, total_std = job_totals(means, std_devs)  # equal frame counts per feature: the global figures
    assert total_mean == pytest.approx(frames.mean(), rel=1e-12)
    assert total_std == pytest.approx(frames.std(), rel=1e-9)


def test_sparse_key_and_sequence_range(setup, capsys):
    folder, seqs = setup
    # --key classes (the job's data_key), only sequences 1..3 (inclusive, as RETURNN)
    code = main_returnn(
        ["returnn.config", "--startseq", "1", "--endseq", "3", "--type", "null", "--key", "classes"]
        + ["--dump_stats", "cls"]
    )
    assert code == 0, capsys.readouterr().err
    labels = np.concatenate([labels for _, labels in seqs[1:4]]).astype(np.float64)
    assert read_lines(folder / "cls.mean.txt") == pytest.approx([labels.mean()], rel=1e-12)
    assert read_lines(folder / "cls.std_dev.txt") == pytest.approx([labels.std()], rel=1e-9)
    assert "3 seqs" in capsys.readouterr().out


def test_dataset_forms_and_dump_types(setup, capsys):
    folder, seqs = setup
    hdf = str(folder / "feats.hdf")
    # an HDF file directly, the first two sequences' tags and lengths to files
    assert main_returnn([hdf, "--endseq", "1", "--type", "dump_tag", "--dump_prefix", "out."]) == 0
    assert (folder / "out.seq-tags.txt").read_text() == "seq-0\nseq-1\n"
    assert main_returnn([hdf, "--type", "dump_seq_len", "--dump_prefix", "out.", "--endseq", "-1"]) == 0
    assert eval((folder / "out.seq-lens.txt").read_text()) == {f"seq-{i}": len(d) for i, (d, _) in enumerate(seqs)}
    # a dataset dict literal; default --type stdout, chosen tags
    capsys.readouterr()
    source = "{'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 4, 'seq_len': 3}"
    assert main_returnn([source, "--seqtags", "seq-2,seq-0", "--key", "classes"]) == 0
    out = capsys.readouterr().out
    assert "seq 0/2 tag: seq-2" in out and "seq 1/2 tag: seq-0" in out and "classes: [" in out
    # --dataset picks another config key; --get_num_seqs; length filter
    assert main_returnn(["returnn.config", "--dataset", "dev", "--get_num_seqs"]) == 0
    assert "num_seqs: 4" in capsys.readouterr().out
    assert main_returnn(["returnn.config", "--type", "print_tag", "--max_seq_length", "{'data': 8}"]) == 0
    out = capsys.readouterr().out
    assert (
        "tag 'seq-2' filtered out: len(data) = 12 > 8" in out
        and "seq 3/5 tag: seq-3" in out
        and "seq-4' filtered out" in out
    )
    # numpy dumps
    assert (
        main_returnn([hdf, "--type", "numpy", "--endseq", "0", "--dump_prefix", "np.", "--dump_postfix", ".txt"]) == 0
    )
    np.testing.assert_allclose(np.loadtxt(folder / "np.0.data.txt"), seqs[0][0], rtol=1e-6)
    np.testing.assert_array_equal(np.loadtxt(folder / "np.0.targets.classes.txt"), seqs[0][1])


def test_errors_exit_1_and_name_the_cause(setup, capsys):
    folder, _ = setup

    def error(*args):
        assert main_returnn(list(args)) == 1
        return capsys.readouterr().err

    assert "'missing.config'" in error("missing.config", *JOB_ARGS)
    assert "--key 'nope'" in error("returnn.config", *JOB_ARGS, "--key", "nope")
    assert "no dataset 'test'" in error("returnn.config", "--dataset", "test")
    assert "--type plot is not supported" in error("returnn.config", "--type", "plot")
    assert "nothing to write" in error("returnn.config", "--startseq", "9", "--endseq", "-1", "--dump_stats", "x")
    assert not list(folder.glob("stats.*")) and not list(folder.glob("x.*"))
    result = subprocess.run(
        [sys.executable, str(TOOL), "missing.config", *JOB_ARGS], cwd=folder, capture_output=True, text=True
    )
    assert result.returncode == 1 and "missing.config" in result.stderr and "Traceback" not in result.stderr
