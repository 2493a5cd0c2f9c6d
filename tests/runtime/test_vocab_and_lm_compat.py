"""RETURNN's vocabulary and LmDataset surface as i6 decoder, model and LM data files use it.

A greedy BPE CTC decoder in the style of i6 setups (``Vocabulary.create_vocab`` in ``forward_init_hook``) and an
LSTM LM trained on ``LmDataset`` with the options i6's LM data helpers write run through the command line.
"""

from __future__ import annotations

import ast
import gzip
import json
import pickle
import textwrap

import pytest

from i6_minireturnn.data.registry import init_dataset
from i6_minireturnn.data.vocabulary import (
    BytePairEncoding,
    CharacterTargets,
    SentencePieces,
    Utf8ByteTargets,
    Vocabulary,
    create_vocab,
)
from i6_minireturnn.errors import ConfigError, DataError

from .conftest import write_config

BPE_VOCAB = {"<s>": 0, "</s>": 1, "<unk>": 2, "hel@@": 3, "lo": 4, "wor@@": 5, "ld": 6, "a": 7}
BPE_CODES = "#version: 0.2\nh e\nhe l\nl o</w>\nw o\nwo r\nl d</w>\n"


def write_bpe(folder):
    """A tiny subword-nmt model: codes and vocab as i6's BPE jobs write them."""
    (folder / "bpe.codes").write_text(BPE_CODES)
    (folder / "bpe.vocab").write_text(repr(BPE_VOCAB) + "\n")
    return str(folder / "bpe.vocab"), str(folder / "bpe.codes")


# ---- vocabulary classes ----------------------------------------------------------------------------------------


def test_create_vocab_picks_the_class_as_returnn_does(tmp_path):
    vocab_file, codes = write_bpe(tmp_path)
    plain = Vocabulary.create_vocab(vocab_file=vocab_file, unknown_label=None)
    assert type(plain) is Vocabulary and plain.num_labels == 8 and plain.labels[3] == "hel@@"
    assert plain.unknown_label is None and plain.unknown_label_id is None

    bpe = Vocabulary.create_vocab(vocab_file=vocab_file, bpe_file=codes, unknown_label="<unk>")
    assert isinstance(bpe, BytePairEncoding) and bpe.unknown_label_id == 2
    assert bpe.get_seq("hello world") == [3, 4, 5, 6] and bpe.get_seq("xyz") == [2, 2, 2]
    assert bpe.get_seq_labels(bpe.get_seq("hello world")).replace("@@ ", "") == "hello world"
    assert isinstance(
        Vocabulary.create_vocab(**{"class": "BytePairEncoding", "vocab_file": vocab_file, "bpe_file": codes}),
        BytePairEncoding,
    )

    (tmp_path / "chars").write_text("{'a': 0, 'b': 1, ' ': 2, '@': 3}")
    chars = CharacterTargets.create_vocab(vocab_file=str(tmp_path / "chars"))  # the class called on is the default
    assert isinstance(chars, CharacterTargets) and chars.get_seq("ab x") == [0, 1, 2, 3]
    chars = Vocabulary.create_vocab(**{"class": "CharacterTargets", "vocab_file": str(tmp_path / "chars")})
    assert chars.get_seq_labels([1, 0]) == "ba"

    utf8 = Vocabulary.create_vocab(**{"class": "Utf8ByteTargets"})
    assert isinstance(utf8, Utf8ByteTargets) and utf8.num_labels == 256
    assert utf8.get_seq_labels(utf8.get_seq("Grüße")) == "Grüße"

    with pytest.raises(ConfigError, match="Unknown vocabulary class 'Bpe'"):
        Vocabulary.create_vocab(**{"class": "Bpe", "vocab_file": vocab_file})
    with pytest.raises(ConfigError, match="BytePairEncoding"):
        Vocabulary.create_vocab(vocab_file=vocab_file, bpe_file=codes, bpe_merges=3)
    # the dataset-side helper takes the same options as a dict
    assert isinstance(create_vocab({"vocab_file": vocab_file, "bpe_file": codes}), BytePairEncoding)


def test_vocabulary_methods_decoders_call(tmp_path):
    vocab_file, _ = write_bpe(tmp_path)
    vocab = Vocabulary(vocab_file, unknown_label="<unk>", bos_label="<s>", eos_label=1)
    assert vocab.vocab == BPE_VOCAB and vocab.bos_label_id == 0 and vocab.eos_label_id == 1
    assert vocab.label_to_id("lo") == 4 and vocab.label_to_id("nope", default=None) is None
    with pytest.raises(KeyError):
        vocab.label_to_id("nope")  # RETURNN: no silent unknown here, get_seq / get_seq_indices map to unknown
    assert vocab.get_seq_indices(["lo", "nope"]) == [4, 2] and vocab.get_seq("a nope") == [7, 2]
    assert vocab.id_to_label(6) == "ld" and vocab.id_to_label(99, default="?") == "?"
    assert vocab.is_id_valid(7) and not vocab.is_id_valid(8) and not vocab.is_id_valid(-1)
    assert vocab.to_id("wor@@") == 5 and vocab.to_id(3) == 3 and vocab.to_id(None, allow_none=True) is None
    with pytest.raises(KeyError):
        vocab.to_id(42)
    assert "unknown_label='<unk>'" in repr(vocab) and "bos_label='<s>'" in repr(vocab)

    (tmp_path / "lines.vocab").write_text("<blank>\nx\ny\n")  # one label per line, as newer RETURNN reads
    lines = Vocabulary.create_vocab(vocab_file=str(tmp_path / "lines.vocab"), unknown_label=None)
    assert lines.labels == ["<blank>", "x", "y"] and lines.get_seq("y x") == [2, 1]
    assert isinstance(Vocabulary.create_vocab_from_labels(["a", "b"]), CharacterTargets)
    assert type(Vocabulary.create_vocab_from_labels(["hello", "world"])) is Vocabulary
    assert isinstance(Vocabulary.create_vocab_from_labels([chr(i) for i in range(256)]), Utf8ByteTargets)


def test_sentencepieces_via_create_vocab(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "text.txt").write_text("\n".join(["the cat sat on the mat", "a dog ate the bone"] * 40))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "m"), vocab_size=20, minloglevel=2
    )
    vocab = Vocabulary.create_vocab(model_file=str(tmp_path / "m.model"))
    assert isinstance(vocab, SentencePieces) and vocab.unknown_label_id == vocab.sp.unk_id()
    ids = vocab.get_seq("the cat ate")
    assert vocab.get_seq_labels(ids) == "the cat ate" and all(vocab.is_id_valid(i) for i in ids)
    assert isinstance(
        Vocabulary.create_vocab(**{"class": "SentencePieces", "model_file": str(tmp_path / "m.model")}), SentencePieces
    )


# ---- a greedy BPE CTC decoder, run through the command line ----------------------------------------------------

DECODER_FILE = '''
"""Greedy CTC decoding with BPE labels, as i6 setups write their decoder files."""
import torch

from returnn.datasets.util.vocabulary import BytePairEncoding, CharacterTargets, SentencePieces, Utf8ByteTargets
from returnn.datasets.util.vocabulary import Vocabulary


def forward_init_hook(run_ctx, **kwargs):
    vocab = Vocabulary.create_vocab(vocab_file=kwargs["returnn_vocab"], unknown_label=None)
    run_ctx.labels = vocab.labels
    run_ctx.blank_index = len(vocab.labels)  # blank appended after the BPE labels
    run_ctx.recognition_file = open("search_out.py", "wt")
    run_ctx.recognition_file.write("{\\n")


def forward_step(*, model, data, run_ctx, **kwargs):
    logprobs = model(data["data"])
    lengths = data["data:size1"]
    for tag, lp, length in zip(data["seq_tag"], logprobs, lengths):
        indices = torch.unique_consecutive(torch.argmax(lp[:length], dim=-1), dim=0).tolist()
        sequence = [run_ctx.labels[i] for i in indices if i != run_ctx.blank_index]
        text = " ".join(sequence).replace("@@ ", "")
        run_ctx.recognition_file.write("%s: %s,\\n" % (repr(tag), repr(text)))


def forward_finish_hook(run_ctx, **kwargs):
    run_ctx.recognition_file.write("}\\n")
    run_ctx.recognition_file.close()
'''

DECODER_CONFIG = """
#!rnn.py
import functools
import torch
from torch import nn

from bpe_greedy_decoder_for_test import forward_step
from bpe_greedy_decoder_for_test import forward_init_hook as _init_hook, forward_finish_hook

forward_init_hook = functools.partial(_init_hook, returnn_vocab="bpe.vocab")

task = "train"
device = "cpu"
train = {{"class": "StaticDataset", "data": {frames!r}, "output_dim": {{"data": (9, 1)}}}}
forward = train
batch_size = 100
max_seqs = 2
num_workers_per_gpu = 0
num_epochs = 1
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adam"}}
learning_rate = 0.01


class OneHotModel(nn.Module):
    # reads the frame labels as its "acoustic" input, so greedy decoding must give back the text
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, frames):
        return torch.log_softmax(nn.functional.one_hot(frames.long(), 9).float() * self.scale, dim=-1)


def get_model(epoch, step, **kwargs):
    return OneHotModel()


def train_step(*, model, data, run_ctx, **kwargs):
    logprobs = model(data["data"])
    run_ctx.mark_as_loss(name="nll", loss=-logprobs.max(-1).values.sum())
"""


def ctc_frames(label_ids, blank):
    """A CTC frame sequence for labels: each label twice, blanks between and around."""
    frames = [blank]
    for label in label_ids:
        frames += [label, label, blank]
    return frames


def test_greedy_bpe_decoder_through_the_cli(tmp_path, run_cli, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # the decoder file lies beside the config, importable as in a recipe
    _, codes = write_bpe(tmp_path)
    bpe = Vocabulary.create_vocab(vocab_file=str(tmp_path / "bpe.vocab"), bpe_file=codes)
    texts = ["hello world", "a hello", "world a a"]
    frames = [{"data": ctc_frames(bpe.get_seq(text), blank=8)} for text in texts]
    (tmp_path / "bpe_greedy_decoder_for_test.py").write_text(textwrap.dedent(DECODER_FILE).lstrip())
    config = write_config(tmp_path, base=DECODER_CONFIG.format(frames=frames))
    code, _, err = run_cli(config)
    assert code == 0, err
    code, _, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    decoded = ast.literal_eval((tmp_path / "search_out.py").read_text())
    assert decoded == {f"seq-{i}": text for i, text in enumerate(texts)}


# ---- LmDataset with i6's LM data options -------------------------------------------------------------------------

LM_SYMBOLS = ["<s>", "</s>", "<unk>", "the", "cat", "sat", "dog", "color", "red"]
LM_CORPUS = ["the cat sat", "the dog sat", "the colour red", "", "a cat", "the red dog sat"]


def write_lm_data(folder):
    with gzip.open(folder / "corpus.txt.gz", "wt") as f:
        f.write("\n".join(LM_CORPUS) + "\n")
    (folder / "vocab.lm.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(LM_SYMBOLS)))
    (folder / "replace.json").write_text(json.dumps({"colour": "color"}))


def expected_ids(line, unk=2, end=1):
    words = [{"colour": "color"}.get(w, w) for w in line.split()]
    return [LM_SYMBOLS.index(w) if w in LM_SYMBOLS else unk for w in words] + [end]


LM_CONFIG = """
#!rnn.py
import json
import torch
from torch import nn

_cf_cache = {}


def cf(filename):
    "Cache manager, as i6 configs define it (no cache manager here: the file itself)."
    _cf_cache[filename] = filename
    return filename


def get_dataset(corpus, partition_epoch, seq_ordering):
    return {
        "class": "LmDataset",
        "corpus_file": lambda: cf(corpus),
        "orth_symbols_map_file": "vocab.lm.txt",
        "orth_replace_map_file": "replace.json",
        "word_based": True,
        "seq_end_symbol": "</s>",
        "auto_replace_unknown_symbol": True,
        "unknown_symbol": "<unk>",
        "add_delayed_seq_data": True,
        "delayed_seq_data_start_symbol": "<s>",
        "seq_ordering": seq_ordering,
        "partition_epoch": partition_epoch,
    }


train = get_dataset("corpus.txt.gz", 2, "random")
dev = get_dataset("corpus.txt.gz", 1, "sorted")
task = "train"
device = "cpu"
batch_size = 50
max_seqs = 2
num_workers_per_gpu = 0
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {"class": "adam"}
learning_rate = 0.01


class LstmLm(nn.Module):
    def __init__(self, num_labels=9, dim=16):
        super().__init__()
        self.embed = nn.Embedding(num_labels, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, num_labels)

    def forward(self, labels):
        hidden, _ = self.lstm(self.embed(labels))
        return self.out(hidden)


def get_model(epoch, step, **kwargs):
    return LstmLm()


def train_step(*, model, data, run_ctx, **kwargs):
    inputs, targets, lengths = data["delayed"].long(), data["data"].long(), data["data:size1"]
    with open("seen_batches.jsonl", "a") as f:
        for tag, i, t, n in zip(data["seq_tag"], inputs.tolist(), targets.tolist(), lengths.tolist()):
            f.write(json.dumps({"tag": tag, "delayed": i[:n], "data": t[:n], "train": torch.is_grad_enabled()}) + "\\n")
    logits = model(inputs)
    mask = torch.arange(targets.shape[1])[None, :] < lengths[:, None]
    loss = nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
    run_ctx.mark_as_loss(name="ce", loss=loss, inv_norm_factor=mask.sum())
"""


def test_lstm_lm_on_lm_dataset_reads_delayed(tmp_path, run_cli):
    write_lm_data(tmp_path)
    config = write_config(tmp_path, base=LM_CONFIG)
    code, _, err = run_cli(config)
    assert code == 0, err
    assert (tmp_path / "out/model.002.pt").exists()
    seen = [json.loads(line) for line in (tmp_path / "seen_batches.jsonl").read_text().splitlines()]
    lines = [line for line in LM_CORPUS if line]  # empty lines are skipped, as in RETURNN
    train_tags = [s["tag"] for s in seen if s["train"]]
    assert len(train_tags) == len(lines) and any(not s["train"] for s in seen)  # dev ran too
    assert sorted(set(train_tags)) == [f"line-{i}" for i in range(len(lines))]  # the two sub-epochs cover all
    for s in seen:
        data = expected_ids(lines[int(s["tag"][len("line-") :])])
        assert s["data"] == data
        assert s["delayed"] == [0] + data[:-1]  # <s> first, shifted right by one, same length


def test_lm_dataset_options_unit(tmp_path):
    write_lm_data(tmp_path)
    base = {
        "class": "LmDataset",
        "corpus_file": [lambda: str(tmp_path / "corpus.txt.gz")],
        "orth_symbols_map_file": lambda: str(tmp_path / "vocab.lm.txt"),
        "word_based": True,
        "seq_end_symbol": "</s>",
        "unknown_symbol": "<unk>",
        "add_delayed_seq_data": True,
        "delayed_seq_data_start_symbol": "<s>",
    }
    # unknown words: an error by default (RETURNN's error_on_invalid_seq), or dropped lines, or <unk>
    dataset = init_dataset(base)
    dataset.init_seq_order(1)
    assert dataset.get_seq(0)["data"].tolist() == [3, 4, 5, 1]
    with pytest.raises(DataError, match="line-2.*'colour' is not in the symbol map"):
        dataset.get_seq(2)
    dataset = init_dataset({**base, "error_on_invalid_seq": False})
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == ["line-0", "line-1", "line-4"]
    assert dataset.get_seq(2)["delayed"].tolist() == [0, 3, 8, 6, 5]
    assert dataset.get_data_dim("delayed") == 9 and dataset.labels["delayed"][7] == "color"
    dataset = init_dataset({**base, "auto_replace_unknown_symbol": True, "orth_replace_map_file": ""})
    dataset.init_seq_order(1)
    assert dataset.get_seq(2)["data"].tolist() == [3, 2, 8, 1] and dataset.get_seq(3)["data"].tolist() == [2, 4, 1]

    # the symbol map as a dict literal or a pickle
    (tmp_path / "vocab.dict").write_text(repr({s: i for i, s in enumerate(LM_SYMBOLS)}))
    with open(tmp_path / "vocab.pkl", "wb") as f:
        pickle.dump({s: i for i, s in enumerate(LM_SYMBOLS)}, f)
    for name in ("vocab.dict", "vocab.pkl"):
        dataset = init_dataset({**base, "orth_symbols_map_file": str(tmp_path / name), "error_on_invalid_seq": False})
        dataset.init_seq_order(1)
        assert dataset.get_seq(1)["data"].tolist() == [3, 6, 5, 1]

    # clear errors: typos, missing special symbols, options of the other LmDataset modes
    with pytest.raises(ConfigError, match="orth_symbol_map_file.*did you mean 'orth_symbols_map_file'"):
        init_dataset({**base, "orth_symbol_map_file": "x"})
    with pytest.raises(ConfigError, match="delayed_seq_data_start_symbol '<bos>' is not in the vocabulary"):
        init_dataset({**base, "delayed_seq_data_start_symbol": "<bos>"})
    with pytest.raises(ConfigError, match="seq_end_symbol '</S>'"):
        init_dataset({**base, "seq_end_symbol": "</S>"})
    with pytest.raises(ConfigError, match="phone_info"):
        init_dataset({**base, "phone_info": {}})


def test_lm_dataset_characters_and_bliss(tmp_path):
    (tmp_path / "corpus.xml").write_text(
        '<?xml version="1.0" encoding="utf8"?>\n<corpus name="c"><recording name="r">'
        "<segment name='1'><orth> ab [noise]  ba </orth></segment>"
        "<segment name='2'><orth>b(a)</orth></segment></recording></corpus>\n"
    )
    (tmp_path / "chars").write_text("a\nb\n \n[NOISE]\n[END]\n[START]\n<w>\n")
    dataset = init_dataset(
        {
            "class": "LmDataset",
            "corpus_file": str(tmp_path / "corpus.xml"),
            "orth_symbols_file": str(tmp_path / "chars"),
            "add_delayed_seq_data": True,
        }
    )
    dataset.init_seq_order(1)
    # brackets make one upper-cased special symbol, "(){}" are dropped, spaces collapsed; [END] appended by default
    assert dataset.get_seq(0)["data"].tolist() == [0, 1, 2, 3, 2, 1, 0, 4]
    assert dataset.get_seq(1)["data"].tolist() == [1, 0, 4] and dataset.get_seq(1)["delayed"].tolist() == [5, 1, 0]
    dataset = init_dataset(
        {
            "class": "LmDataset",
            "corpus_file": str(tmp_path / "corpus.xml"),
            "orth_symbols_file": str(tmp_path / "chars"),
            "word_end_symbol": "<w>",
        }
    )
    dataset.init_seq_order(1)
    assert dataset.get_seq(1)["data"].tolist() == [1, 0, 6, 4]
    assert dataset.get_seq(0)["data"].tolist()[:4] == [0, 1, 6, 3]
