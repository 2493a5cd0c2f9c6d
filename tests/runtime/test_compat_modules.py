"""The smaller ``returnn.*`` modules (``returnn.util.basic``, ``returnn.datasets.basic``, dataset-family modules)
work when a model file imports them and the config runs through the command line."""

from __future__ import annotations

import json
import os
import pickle
import stat
import sys
import textwrap

import pytest
import torch

from i6_minireturnn import cache_manager

from .conftest import write_config

# A model file in the style of i6 setups: imports at module level, cf() on a file before use, a NumbersDict
# accumulating the step losses; it records what it saw in seen.json.
MODEL_FILE = """
import json

import torch
from torch import nn

from returnn.datasets.audio import OggZipDataset
from returnn.datasets.basic import Dataset, get_dataset_class, init_dataset
from returnn.datasets.generating import DummyDataset
from returnn.datasets.lm import LmDataset
from returnn.datasets.meta import MetaDataset
from returnn.torch.context import get_run_ctx
from returnn.util import NumbersDict as UtilNumbersDict
from returnn.util.basic import (
    NotSpecified,
    NumbersDict,
    cf,
    hms,
    human_bytes_size,
    model_epoch_from_filename,
    prod,
)

SEEN = {"losses": NumbersDict(), "steps": 0}


class Model(nn.Module):
    def __init__(self, lexicon=NotSpecified):
        super().__init__()
        self.lexicon = None if lexicon is NotSpecified else cf(lexicon)
        self.linear = nn.Linear(2, 3)

    def forward(self, x):
        return self.linear(x.float()).permute(0, 2, 1)


def get_model(epoch, step, **kwargs):
    dataset = init_dataset(
        {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 8},
        extra_kwargs={"num_seqs": 3},
        default_kwargs={"seq_len": 4, "num_seqs": 100},
    )
    dataset.init_seq_order(epoch=1)
    SEEN.update(
        lexicon=Model("lexicon.txt").lexicon,
        default_lexicon=Model().lexicon,
        dataset_is_base=isinstance(dataset, Dataset),
        dataset_num_seqs=dataset.num_seqs,
        dataset_seq_len=int(dataset.get_seq_length(0)["data"]),
        same_as_init_dataset=init_dataset(dataset) is dataset,
        class_lookup=get_dataset_class("DummyDataset") is DummyDataset,
        unknown_class=get_dataset_class("NoSuchDataset"),
        families=all(issubclass(cls, Dataset) for cls in (OggZipDataset, LmDataset, MetaDataset, DummyDataset)),
        same_numbers_dict=NumbersDict is UtilNumbersDict,
        hms=hms(3723),
        bytes=human_bytes_size(3 * 1024 * 1024),
        epoch_from_name=model_epoch_from_filename("out/model.012.pt"),
        prod=prod([2, 3, 4]),
    )
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long())
    run_ctx.mark_as_loss(name="ce", loss=loss)
    SEEN["losses"] += NumbersDict({"ce": float(loss.detach()), "one": 1.0})
    SEEN["steps"] += 1
    mean = SEEN["losses"] / SEEN["steps"]
    SEEN["mean"] = dict(mean)
    SEEN["epoch"] = get_run_ctx().epoch
    with open("seen.json", "w") as out:
        json.dump({k: v for k, v in SEEN.items() if k != "losses"}, out)
"""


def _config(tmp_path, extra: str = ""):
    (tmp_path / "compat_model.py").write_text(textwrap.dedent(MODEL_FILE).lstrip())
    (tmp_path / "lexicon.txt").write_text("a\nb\n")
    return write_config(
        tmp_path,
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nfrom compat_model import get_model, train_step\n"
        "num_epochs = 1\n" + extra,
    )


def _seen(tmp_path):
    return json.loads((tmp_path / "seen.json").read_text())


def test_model_file_importing_the_small_modules_trains(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(cache_manager, "CACHE_COMMAND", "no-such-cache-manager-command")
    monkeypatch.delitem(sys.modules, "compat_model", raising=False)
    code, _, err = run_cli(_config(tmp_path))
    assert code == 0, err
    seen = _seen(tmp_path)
    assert seen["lexicon"] == "lexicon.txt"  # no cache manager: cf returns the path unchanged
    assert seen["default_lexicon"] is None
    assert seen["dataset_is_base"] and seen["same_as_init_dataset"]
    assert (seen["dataset_num_seqs"], seen["dataset_seq_len"]) == (3, 4)  # extra_kwargs win, defaults fill in
    assert seen["class_lookup"] and seen["unknown_class"] is None and seen["families"]
    assert seen["same_numbers_dict"]
    assert (seen["hms"], seen["bytes"], seen["epoch_from_name"], seen["prod"]) == ("01:02:03", "3.0MB", 12, 24)
    assert seen["steps"] >= 2 and seen["epoch"] == 1
    assert seen["mean"]["one"] == pytest.approx(1.0)  # NumbersDict sum / steps
    assert 0.0 < seen["mean"]["ce"] < 10.0


def test_cf_returns_the_cache_managers_local_copy(tmp_path, run_cli, monkeypatch):
    cache = tmp_path / "node_cache"
    cache.mkdir()
    fake_cf = tmp_path / "fake_cf"
    fake_cf.write_text(f'#!/bin/sh\ncp "$1" {cache}/ && echo {cache}/$(basename "$1")\n')
    fake_cf.chmod(fake_cf.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(cache_manager, "CACHE_COMMAND", str(fake_cf))
    monkeypatch.setattr(cache_manager, "_resolved", {})
    monkeypatch.delitem(sys.modules, "compat_model", raising=False)
    code, _, err = run_cli(_config(tmp_path))
    assert code == 0, err
    assert _seen(tmp_path)["lexicon"] == str(cache / "lexicon.txt")
    assert os.path.exists(cache / "lexicon.txt")


def test_small_module_helpers_directly():
    from i6_minireturnn.compat.returnn.util import basic

    assert basic.hms_fraction(61.25, 2) == "00:01:01.25"
    assert basic.human_size(500) == "500" and basic.human_size(900) == "0.9K" and basic.human_size(1_500_000) == "1.5M"
    assert basic.model_epoch_from_filename("model.pretrain.007") == 7
    assert basic.model_epoch_from_filename("model") is None
    assert issubclass(basic.OptionalNotImplementedError, NotImplementedError)
    assert isinstance(basic.get_login_username(), str)
    total = basic.NumbersDict({"a": 1, "b": 2}) + basic.NumbersDict({"a": 3})
    assert dict(total) == {"a": 4, "b": 2}


def test_config_prolog_cf_lambda_as_lm_corpus_file(tmp_path, run_cli, monkeypatch):
    """LM data helpers write ``from returnn.util.basic import cf`` into the config and ``lambda: cf(...)`` as the
    LmDataset corpus file; the dataset calls it when it loads."""
    monkeypatch.setattr(cache_manager, "CACHE_COMMAND", "no-such-cache-manager-command")
    (tmp_path / "corpus.txt").write_text("a b\nb a a\n")
    (tmp_path / "vocab.txt").write_text("{'<s>': 0, '</s>': 0, '<unk>': 1, 'a': 2, 'b': 3}\n")
    lm_dataset = (
        '{"class": "LmDataset", "corpus_file": lambda: cf("corpus.txt"), "orth_symbols_map_file": "vocab.txt", '
        '"orth_replace_map_file": "", "word_based": True, "seq_end_symbol": "</s>", "unknown_symbol": "<unk>", '
        '"auto_replace_unknown_symbol": True, "add_delayed_seq_data": True, "delayed_seq_data_start_symbol": "<s>"}'
    )
    body = f"""
        from returnn.util.basic import cf
        from returnn.datasets.basic import init_dataset

        dataset = init_dataset({lm_dataset})
        dataset.init_seq_order(epoch=1)
        first = dataset.get_seq(0)
        seen = {{"data": first["data"].tolist(), "delayed": first["delayed"].tolist(), "cf": cf("corpus.txt")}}
        with open("seen.json", "w") as out:
            json.dump(seen, out)
        """
    config = write_config(tmp_path, "import json\n" + textwrap.dedent(body))
    code, _, err = run_cli(config, "++num_epochs", "1")
    assert code == 0, err
    assert _seen(tmp_path) == {"data": [2, 3, 0], "delayed": [0, 2, 3], "cf": "corpus.txt"}


# i6 setups' piecewise-linear learning rate: a dynamic_learning_rate function in the config that builds a
# returnn.util.math.PiecewiseLinear from float_list keys once (cached in the config) and scales the epoch's rate.
PIECEWISE_CONFIG = """
#!rnn.py
import torch

task = "train"
device = "cpu"
train = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 6, "seq_len": 3}
batch_size = 100
max_seqs = 1
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {"class": "sgd"}
learning_rate = 2.0
learning_rate_piecewise_steps = [4, 8]
learning_rate_piecewise_values = [0.0, 1.0, 0.5]


def dynamic_learning_rate(*, global_train_step, learning_rate, **_kwargs):
    from returnn.config import get_global_config
    from returnn.util.math import PiecewiseLinear

    config = get_global_config()
    curve = config.typed_dict.get("_learning_rate_piecewise_cache")
    if curve is None:
        steps = config.float_list("learning_rate_piecewise_steps")
        values = config.float_list("learning_rate_piecewise_values")
        curve = PiecewiseLinear(dict(zip([0] + list(steps), values)))
        config.typed_dict["_learning_rate_piecewise_cache"] = curve
    return curve(global_train_step + 1) * learning_rate


def get_model(epoch, step, **kwargs):
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    return model


def train_step(*, model, data, run_ctx, **kwargs):
    run_ctx.mark_as_loss(model.weight.sum(), "w")  # gradient 1: each step moves the weight by minus its rate
"""


def test_piecewise_linear_schedule_of_i6_setups_sets_every_steps_rate(tmp_path, run_cli):
    (tmp_path / "returnn.config").write_text(PIECEWISE_CONFIG)
    code, _, err = run_cli(tmp_path / "returnn.config")
    assert code == 0, err

    def rate(step):  # the curve through (0, 0), (4, 1), (8, 0.5), flat after, times learning_rate
        x = step + 1
        return 2.0 * (x / 4 if x <= 4 else 1.0 - 0.5 * (x - 4) / 4 if x <= 8 else 0.5)

    for epoch, steps in ((1, range(6)), (2, range(12))):
        weight = torch.load(tmp_path / f"out/model.00{epoch}.pt", weights_only=False)["model"]["weight"]
        assert float(weight) == pytest.approx(-sum(rate(s) for s in steps), rel=1e-6)


def test_piecewise_linear_directly():
    from i6_minireturnn.compat.returnn.util.math import PiecewiseLinear

    curve = PiecewiseLinear({10: 1.0, 0: 0.0, 20: 0.5})
    assert [curve(x) for x in (-5, 0, 5, 10, 15, 20, 99)] == [0.0, 0.0, 0.5, 1.0, 0.75, 0.5, 0.5]
    assert repr(curve) == "PiecewiseLinear({0: 0.0, 10: 1.0, 20: 0.5})"
    assert pickle.loads(pickle.dumps(curve))(12) == pytest.approx(0.9)
    by_name = PiecewiseLinear({0: 1, 4: 3}, kw_name="epoch", ignore_other_kwargs=True)
    assert by_name(epoch=2, global_train_step=7) == 2.0
    with pytest.raises(TypeError, match="keyword argument 'epoch'"):
        by_name(2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        curve(3, step=1)
    with pytest.raises(ValueError, match="non-empty dict"):
        PiecewiseLinear({})
