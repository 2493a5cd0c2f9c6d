"""Vocabularies (RETURNN vocab files, BPE, SentencePiece, characters, bytes) and the text datasets."""

from __future__ import annotations

import gzip
import pickle

import pytest

from i6_minireturnn.data.registry import init_dataset
from i6_minireturnn.data.vocabulary import BytePairEncoding, Vocabulary, create_vocab
from i6_minireturnn.errors import DataError


def test_vocab_file_forms_and_round_trip(tmp_path):
    (tmp_path / "v.txt").write_text("{'<s>': 0, 'hello': 1, 'world': 2, '<unk>': 3}\n")
    with open(tmp_path / "v.pkl", "wb") as f:
        pickle.dump({"<s>": 0, "hello": 1, "world": 2, "<unk>": 3}, f)
    for name in ("v.txt", "v.pkl"):
        vocab = Vocabulary(str(tmp_path / name), unknown_label="<unk>", bos_label="<s>")
        assert vocab.get_seq("hello there world") == [1, 3, 2]
        assert vocab.get_seq_labels([1, 2]) == "hello world"
        assert vocab.labels == ["<s>", "hello", "world", "<unk>"] and vocab.bos_label_id == 0
    (tmp_path / "bad.txt").write_text("hello 1\nworld 2\n")
    with pytest.raises(DataError, match="bad.txt.*neither a Python dict literal nor a pickle"):
        Vocabulary(str(tmp_path / "bad.txt"))
    with pytest.raises(KeyError):
        Vocabulary(str(tmp_path / "v.txt"), unknown_label=None).get_seq("unseen")


def test_bpe_segmentation(tmp_path):
    (tmp_path / "codes").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    (tmp_path / "vocab").write_text("{'lo@@': 0, 'w@@': 1, 'er': 2, 'low': 3, 'UNK': 4}")
    bpe = create_vocab({"vocab_file": str(tmp_path / "vocab"), "bpe_file": str(tmp_path / "codes")})
    assert isinstance(bpe, BytePairEncoding)
    assert bpe.segment_word("lower") == ["lo@@", "w@@", "er"] and bpe.segment_word("low") == ["low"]
    assert bpe.get_seq("low lower") == [3, 0, 1, 2]
    assert bpe.get_seq("xyz") == [4, 4, 4]  # unknown subwords


def test_sentencepiece_round_trip(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the cat sat on the mat", "a dog ate the bone", "cats and dogs"] * 30))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "m"), vocab_size=30, model_type="bpe", minloglevel=2
    )
    vocab = create_vocab({"model_file": str(tmp_path / "m.model")})
    ids = vocab.get_seq("the cat ate")
    assert all(0 <= i < vocab.num_labels for i in ids) and vocab.get_seq_labels(ids) == "the cat ate"


def test_characters_and_bytes(tmp_path):
    (tmp_path / "chars").write_text("{'a': 0, 'b': 1, ' ': 2, '@': 3}")
    chars = create_vocab({"class": "CharacterTargets", "vocab_file": str(tmp_path / "chars")})
    assert chars.get_seq("ab c") == [0, 1, 2, 3] and chars.get_seq_labels([1, 0]) == "ba"
    utf8 = create_vocab({"class": "Utf8ByteTargets"})
    assert utf8.get_seq("ä") == [0xC3, 0xA4] and utf8.get_seq_labels(utf8.get_seq("größe")) == "größe"


def test_lm_dataset_symbols_and_vocab(tmp_path):
    with gzip.open(tmp_path / "corpus.gz", "wt") as f:
        f.write("a b c\nc a\n")
    (tmp_path / "symbols").write_text("a\nb\n[END]\n[UNKNOWN]\n")
    dataset = init_dataset(
        {
            "class": "LmDataset",
            "corpus_file": str(tmp_path / "corpus.gz"),
            "orth_symbols_file": str(tmp_path / "symbols"),
            "word_based": True,
            "auto_replace_unknown_symbol": True,  # RETURNN: unknown words are an error unless this is set
        }
    )
    dataset.init_seq_order(1)
    assert [dataset.get_seq(i)["data"].tolist() for i in range(2)] == [[0, 1, 3, 2], [3, 0, 2]]
    assert dataset.get_data_dim("data") == 4 and dataset.get_seq_length(0) == {"data": 4}
    (tmp_path / "v").write_text("{'a': 0, 'b': 1, 'c': 2}")
    dataset = init_dataset(
        {
            "class": "LmDataset",
            "corpus_file": [str(tmp_path / "corpus.gz")],
            "orth_vocab": {"vocab_file": str(tmp_path / "v"), "unknown_label": None},
        }
    )
    dataset.init_seq_order(1)
    assert dataset.get_seq(1)["data"].tolist() == [2, 0]


def test_translation_dataset(tmp_path):
    (tmp_path / "source.train").write_text("hallo welt\nwelt\n")
    (tmp_path / "target.train").write_text("hello world\nworld\n")
    for side, words in (("source", ["hallo", "welt", "</S>"]), ("target", ["hello", "world", "</S>"])):
        with open(tmp_path / f"{side}.vocab.pkl", "wb") as f:
            pickle.dump({w: i for i, w in enumerate(words)}, f)
    dataset = init_dataset(
        {"class": "TranslationDataset", "path": str(tmp_path), "file_postfix": "train", "source_postfix": " </S>"}
    )
    dataset.init_seq_order(1)
    seq = dataset.get_seq(0)
    assert seq["data"].tolist() == [0, 1, 2] and seq["classes"].tolist() == [0, 1] and seq["seq_tag"] == "line-0"
    (tmp_path / "target.train").write_text("hello world\n")
    with pytest.raises(DataError, match="2 source lines but 1 target lines"):
        init_dataset({"class": "TranslationDataset", "path": str(tmp_path), "file_postfix": "train"})
