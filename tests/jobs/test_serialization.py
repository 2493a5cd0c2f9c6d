"""Serializers: hashes equal to i6_experiments' (literal values), written config code that runs, bad paths."""

from __future__ import annotations

import pytest
from sisyphus.hash import short_hash

from jobs import serialization as s

PATH = "i6_minireturnn.data.generating.DummyDataset"

# Literal hashes computed with i6_experiments.common.setups.serialization for the same arguments.
EXPECTED = {
    "Import": (lambda: s.Import(PATH), "t3lDR1gNYbNl"),
    "Import as": (lambda: s.Import(PATH, import_as="get_model"), "7AiOxXQFIZKo"),
    "Import as, ignored": (
        lambda: s.Import(PATH, import_as="get_model", ignore_import_as_for_hash=True),
        "t3lDR1gNYbNl",
    ),
    "Import root": (lambda: s.Import(PATH, unhashed_package_root="i6_minireturnn."), "vRPSLkcnTIxA"),
    "PartialImport": (
        lambda: s.PartialImport(
            code_object_path=PATH,
            unhashed_package_root=None,
            hashed_arguments={"num_seqs": 3, "seq_len": {"data": 5}},
            unhashed_arguments={"debug": True},
            import_as="get_model",
        ),
        "3te6vp3pKpUu",
    ),
    "ExplicitHash": (lambda: s.ExplicitHash("version-2"), "SwFEVEYK3W9w"),
    "Collection": (
        lambda: s.Collection(
            [s.Import(PATH, import_as="get_model"), s.NonhashedCode("x = 1\n"), s.ExplicitHash({"a": 1})]
        ),
        "muATj5Od9VsI",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hash_equals_i6_experiments(name):
    make, expected = EXPECTED[name]
    assert short_hash(make()) == expected


def test_code_from_function_hash():
    from i6_minireturnn.data.collate import collate_batch

    assert short_hash(s.CodeFromFunction("collate", collate_batch)) == "DDlWklbdqGhn"


def test_hash_ignores_unhashed_parts_and_follows_hashed_ones():
    base = s.Collection([s.Import(PATH, import_as="get_model"), s.NonhashedCode("a = 1\n")])
    other_code = s.Collection([s.Import(PATH, import_as="get_model"), s.NonhashedCode("a = 2\n")])
    other_import = s.Collection([s.Import(PATH, import_as="get_data")])
    assert short_hash(base) == short_hash(other_code) != short_hash(other_import)


def test_collection_sets_up_the_import_path_only():
    code = s.Collection([s.Import(PATH, import_as="get_model")]).get()
    assert code.startswith("import sys\nsys.path.insert(0, ")
    assert "import os" not in code
    assert code.endswith("from i6_minireturnn.data.generating import DummyDataset as get_model\n")


def test_bad_import_path_fails_when_building():
    with pytest.raises(ImportError, match="no module 'i6_minireturnn.nowhere'"):
        s.Import("i6_minireturnn.nowhere.Thing")
    with pytest.raises(ImportError, match="defines no 'NoSuchDataset'"):
        s.Import("i6_minireturnn.data.generating.NoSuchDataset")


def test_collection_config_runs_with_the_runtime(tmp_path, monkeypatch):
    from i6_core.returnn.config import ReturnnConfig

    from i6_minireturnn.__main__ import main

    model_module = "tests.runtime.user_setup.epoch_aware_model"
    network = s.Network(f"{model_module}.Model", {"augment_from_epoch": 5}, train_step=f"{model_module}.train_step")
    config = ReturnnConfig(
        config={
            "train": {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5},
            "batch_size": 20,
            "num_epochs": 1,
            "optimizer": {"class": "adam"},
            "model": str(tmp_path / "model"),
        },
        post_config={"device": "cpu", "log_verbosity": 1},
        python_epilog=[s.Collection([network])],
    )
    config.write(str(tmp_path / "returnn.config"))
    monkeypatch.chdir(tmp_path)
    assert main([str(tmp_path / "returnn.config")]) == 0
    assert (tmp_path / "model.001.pt").exists()


def test_cached_path_resolves_on_the_node(tmp_path, monkeypatch):
    import stat

    from i6_core.returnn.config import ReturnnConfig
    from sisyphus import tk

    from i6_minireturnn import cache_manager
    from i6_minireturnn.config import Config
    from jobs.cache import CachedPath

    cache = tmp_path / "node_cache"
    cache.mkdir()
    (tmp_path / "bin").mkdir()
    cf = tmp_path / "bin" / "cf"
    cf.write_text(f'#!/bin/sh\ncp "$1" {cache}/ && echo {cache}/$(basename "$1")\n')
    cf.chmod(cf.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "corpus.hdf").write_bytes(b"data")
    path = tk.Path(str(tmp_path / "corpus.hdf"))
    assert short_hash(CachedPath(path)) == short_hash(path)  # wrapping does not move hashes
    ReturnnConfig(config={"train": {"class": "HDFDataset", "files": [CachedPath(path)]}}).write(str(tmp_path / "c"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(cache_manager, "_resolved", {})
    config = Config()
    config.load_file(str(tmp_path / "c"))
    assert config.typed_value("train")["files"] == [str(cache / "corpus.hdf")]
