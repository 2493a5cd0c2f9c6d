"""Learning-rate schedules and the learning_rates file format."""

from __future__ import annotations

import pytest

from i6_minireturnn.config import Config
from i6_minireturnn.engine.learning_rate_control import (
    EpochData,
    learning_rate_control_from_config,
    read_learning_rate_file,
)


def control(**keys):
    return learning_rate_control_from_config(Config(keys))


def test_file_text_in_returnn_format(tmp_path):
    lrc = control(learning_rate=0.001, learning_rate_file=str(tmp_path / "lr"))
    lrc.get_learning_rate_for_epoch(1)
    lrc.set_epoch_error(1, {"ctc": 1.5, "dev_loss_ctc": 2.25})
    lrc.get_learning_rate_for_epoch(2)
    lrc.set_epoch_error(2, {"ctc": 1.0, "dev_loss_ctc": float("nan"), "devtrain_loss_ctc": 0.5})
    lrc.save()
    assert (tmp_path / "lr").read_text() == (
        "{\n"
        "1: EpochData(learningRate=0.001, error={'ctc': 1.5, 'dev_loss_ctc': 2.25}),\n"
        "2: EpochData(learningRate=0.001, error={\n"
        "'ctc': 1.0,\n'dev_loss_ctc': float('nan'),\n'devtrain_loss_ctc': 0.5,\n}),\n"
        "}\n"
    )
    data = read_learning_rate_file(str(tmp_path / "lr"))
    assert data[1] == EpochData(0.001, {"ctc": 1.5, "dev_loss_ctc": 2.25})
    assert data[2].error["dev_loss_ctc"] != data[2].error["dev_loss_ctc"]  # nan survives


def test_reads_file_written_by_returnn_style_tools(tmp_path):
    (tmp_path / "lr").write_text(
        "{1: EpochData(learningRate=0.1, error={\n'dev_score': 3.0,\n'train_score': 4.0,\n}),\n"
        "2: EpochData(learningRate=0.05, error={'dev_score': 2.0}),\n3: EpochData(learningRate=0.05, error={}),\n}\n"
    )
    lrc = control(learning_rate=1.0, learning_rate_file=str(tmp_path / "lr"))
    assert [lrc.get_learning_rate_for_epoch(e) for e in (1, 2, 3, 4)] == [0.1, 0.05, 0.05, 0.05]
    assert lrc.get_error_key(1) == "dev_score"


def test_learning_rates_list_last_value_repeats():
    lrc = control(learning_rates=[0.1, 0.2, 0.3])
    assert [lrc.get_learning_rate_for_epoch(e) for e in range(1, 6)] == [0.1, 0.2, 0.3, 0.3, 0.3]


def _feed(lrc, scores):
    rates = []
    for epoch, score in enumerate(scores, 1):
        rates.append(lrc.get_learning_rate_for_epoch(epoch))
        lrc.set_epoch_error(epoch, {"dev_loss_ce": score, "ce": 9.0})
    rates.append(lrc.get_learning_rate_for_epoch(len(scores) + 1))
    return rates


def test_newbob_rel_decays_when_improvement_is_small():
    lrc = control(learning_rate_control="newbob_rel", learning_rate=1.0, newbob_relative_error_threshold=-0.1)
    # 10 -> 5 (rel -1.0: keep), 5 -> 4.9 (rel -0.02 > -0.1: decay), 4.9 -> 2 (keep)
    assert _feed(lrc, [10.0, 5.0, 4.9, 2.0]) == [1.0, 1.0, 1.0, 0.5, 0.5]


def test_newbob_rel_div_by_old_and_min_lr():
    lrc = control(
        learning_rate_control="newbob_rel",
        learning_rate=1.0,
        newbob_relative_error_threshold=-0.5,
        relative_error_div_by_old=True,
        newbob_learning_rate_decay=0.1,
        min_learning_rate=0.05,
    )
    # 10 -> 6: (6-10)/10 = -0.4 > -0.5: decay to 0.1; 6 -> 4: -0.33: decay to 0.01, bounded by 0.05
    assert _feed(lrc, [10.0, 6.0, 4.0]) == [1.0, 1.0, 0.1, 0.05]


def test_newbob_abs():
    lrc = control(learning_rate_control="newbob_abs", learning_rate=0.4, newbob_error_threshold=-1.0)
    # 10 -> 8 (diff -2: keep), 8 -> 7.5 (diff -0.5 > -1: decay by 0.5)
    assert _feed(lrc, [10.0, 8.0, 7.5]) == [0.4, 0.4, 0.4, 0.2]


def test_newbob_multi_epoch_updates_every_interval():
    lrc = control(
        learning_rate_control="newbob_multi_epoch",
        learning_rate=1.0,
        newbob_multi_num_epochs=2,
        newbob_multi_update_interval=2,
        newbob_relative_error_threshold=-0.1,
    )
    rates = _feed(lrc, [10.0, 9.9, 9.8, 9.7])
    # decisions only at epochs 3 and 5 (epoch % 2 == 1); both see a mean relative change of about -0.01
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_min_epochs_per_new_lr():
    lrc = control(
        learning_rate_control="newbob_abs",
        learning_rate=1.0,
        newbob_error_threshold=100.0,  # never decays on its own ...
        newbob_learning_rate_growth=2.0,  # ... but grows
        learning_rate_control_min_num_epochs_per_new_lr=2,
    )
    assert _feed(lrc, [1.0, 1.0, 1.0, 1.0, 1.0]) == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_error_measure_key():
    lrc = control(learning_rate_control="newbob_abs", learning_rate_control_error_measure="ce")
    lrc.set_epoch_error(1, {"dev_loss_ce": 1.0, "ce": 2.0})
    assert lrc.get_error_key(1) == "ce"
    assert control().get_error_key(1) is None


def test_unknown_control_type():
    with pytest.raises(Exception, match="Unknown learning_rate_control 'newbobb'"):
        control(learning_rate_control="newbobb")
