"""The cache manager contract: ``cf PATH`` prints the local copy; failures fall back to the original path."""

from __future__ import annotations

import os
import stat

from i6_minireturnn import cache_manager


def _install_cf(tmp_path, monkeypatch, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cf"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cache_manager, "_resolved", {})


def test_cf_copy_is_used(tmp_path, monkeypatch):
    cache = tmp_path / "node_cache"
    cache.mkdir()
    _install_cf(tmp_path, monkeypatch, f'cp "$1" {cache}/ && echo {cache}/$(basename "$1")\n')
    source = tmp_path / "data.hdf"
    source.write_bytes(b"x")
    assert cache_manager.cached_path(str(source)) == str(cache / "data.hdf")
    assert (cache / "data.hdf").read_bytes() == b"x"
    assert cache_manager.cached_path(str(source), enabled=False) == str(source)


def test_cf_failure_falls_back_with_warning(tmp_path, monkeypatch, capsys):
    _install_cf(tmp_path, monkeypatch, "echo 'no space left' >&2; exit 3\n")
    assert cache_manager.cached_path("/some/file.hdf") == "/some/file.hdf"
    assert "cache manager failed for /some/file.hdf (no space left)" in capsys.readouterr().out


def test_without_cf_the_path_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cache_manager, "_resolved", {})
    assert cache_manager.cached_path("/x/y.zip") == "/x/y.zip"
