"""The dataset tools: dump_dataset and analyze_batches."""

from __future__ import annotations

from i6_minireturnn.tools import analyze_batches, dump_dataset


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
