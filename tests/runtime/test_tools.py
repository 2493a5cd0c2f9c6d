"""The dataset tools: dump_dataset, analyze_batches, and the root script tools/hdf_dump.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from i6_minireturnn.tools import analyze_batches, dump_dataset, hdf_dump


def test_dump_dataset_prints_keys_sequences_and_lengths(capsys):
    code = dump_dataset.main(
        ["{'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 4, 'seq_len': 3}", "--seqs", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "4 sequences" in out and "key 'classes': sparse, 3 classes" in out and "seq 0 'seq-0'" in out
    assert "classes: [0, 1, 2]" in out.replace("  ", " ") or "classes: [0, 1, 2]" in out
    assert "lengths 'data': min 3, mean 3.0, max 3, total 12" in out


def test_analyze_batches_from_config(tmp_path, capsys):
    config = tmp_path / "c.config"
    config.write_text(
        "#!rnn.py\ntrain = {'class': 'StaticDataset', 'data': [{'data': __import__('numpy').zeros((n, 2))} "
        "for n in (2, 4, 4, 8)]}\nbatch_size = 8\nmax_seqs = 2\n"
    )
    assert analyze_batches.main([str(config)]) == 0
    out = capsys.readouterr().out
    # batches: [2, 4] (pad 8 -> real 6), [4] (4), [8] (8): padding 2 of 20
    assert "batches: 3" in out and "data_frames: 18" in out and "data_padding_ratio: 0.1" in out


def test_tools_report_bad_input(capsys):
    assert dump_dataset.main(["{'class': 'NoSuchDataset'}"]) == 1
    assert "Unknown dataset class 'NoSuchDataset'" in capsys.readouterr().err


def _hdf_dump_root(*args, cwd):
    """tools/hdf_dump.py as a subprocess, as i6_core's ReturnnDumpHDFJob runs it."""
    script = Path(__file__).resolve().parents[2] / "tools" / "hdf_dump.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_hdf_dump_root_script_with_the_job_arguments(tmp_path):
    pytest.importorskip("h5py")
    from i6_minireturnn.data.hdf import HDFDataset
    from i6_minireturnn.data.registry import init_dataset

    dataset = {"class": "SyntheticSpeechDataset", "num_seqs": 6, "seq_ordering": "random"}
    # ReturnnDumpHDFJob.write_config for a dict: "#!rnn.py" and "train = <str(dict)>"
    (tmp_path / "dataset.config").write_text(f"#!rnn.py\ntrain = {dataset}\n")
    result = _hdf_dump_root("dataset.config", "tmp.hdf", "--start_seq", 1, "--end_seq", 3, "--epoch", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    source = init_dataset(dataset)
    source.init_seq_order(2)
    dumped = HDFDataset(files=[str(tmp_path / "tmp.hdf")], use_cache_manager=False)
    dumped.init_seq_order(1)
    assert dumped.num_seqs == 3  # start and end inclusive, as RETURNN's HDFDatasetWriter.dump_from_dataset
    for i in range(3):
        a, b = dumped.get_seq(i), source.get_seq(1 + i)
        assert a["seq_tag"] == b["seq_tag"]
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["classes"], b["classes"])

    # a config file given as a path (the job's tk.Path form): its train dataset, every sequence
    assert hdf_dump.main([str(tmp_path / "dataset.config"), str(tmp_path / "all.hdf")]) == 0
    assert HDFDataset(files=[str(tmp_path / "all.hdf")], use_cache_manager=False).get_total_num_seqs() == 6


def test_hdf_dump_errors_exit_1_and_name_the_cause(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert hdf_dump.main(["missing.config", "none.hdf"]) == 1
    assert "'missing.config'" in capsys.readouterr().err
    (tmp_path / "dataset.config").write_text("#!rnn.py\ntrain = {'class': 'SyntheticSpeechDataset', 'num_seqs': 6}\n")
    assert hdf_dump.main(["dataset.config", "none.hdf", "--start_seq", "6"]) == 1
    assert "none in the range 6..last" in capsys.readouterr().err
    assert hdf_dump.main(["dataset.config", "none.hdf", "--start_seq", "3", "--end_seq", "2"]) == 1
    assert "range 3..2 is empty" in capsys.readouterr().err
    assert not (tmp_path / "none.hdf").exists()
