"""tools/bliss-to-ogg-zip.py as i6_core's BlissToOggZipJob runs it: the archive loads in OggZipDataset with the
corpus's tags, texts, speakers, durations and audio; subsets, --no_ogg, --no_conversion; bad input is named."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

from i6_minireturnn.data.oggzip import OggZipDataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "bliss-to-ogg-zip.py"
RATE = 16000


def _tone(seconds, freq, seed):
    t = np.arange(int(round(seconds * RATE))) / RATE
    noise = np.random.RandomState(seed).standard_normal(len(t)) * 0.01
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype("float32")


CORPUS = """<?xml version="1.0" encoding="utf-8"?>
<corpus name="toy">
  <speaker-description name="anna"><gender>female</gender></speaker-description>
  <speaker name="corpus-speaker"/>
  <recording name="rec-a" audio="audio/a.wav">
    <segment name="first" start="0.0" end="0.75">
      <speaker name="anna"/>
      <orth>  hello
         world </orth>
    </segment>
    <segment start="0.75" end="1.9">
      <orth>second one</orth>
    </segment>
  </recording>
  <subcorpus name="sub">
    <recording name="rec-b" audio="{b_audio}">
      <speaker name="bert"/>
      <segment name="x" start="0.25" end="inf" track="1">
        <orth>third &amp; last</orth>
      </segment>
    </recording>
  </subcorpus>
</corpus>
"""

# (tag, text, speaker, start, end or None, source key, channel)
EXPECTED = [
    ("toy/rec-a/first", "hello world", "anna", 0.0, 0.75, "a", None),
    ("toy/rec-a/2", "second one", "corpus-speaker", 0.75, 1.9, "a", None),
    ("toy/sub/rec-b/x", "third & last", "bert", 0.25, None, "b", 1),
]


@pytest.fixture
def corpus(tmp_path):
    """A corpus with a mono wav (relative path) and a stereo flac (absolute path); returns (xml path, sources)."""
    (tmp_path / "audio").mkdir()
    sources = {"a": _tone(2.0, 300, 0), "b": np.stack([_tone(1.5, 500, 1), _tone(1.5, 900, 2)], axis=1)}
    soundfile.write(tmp_path / "audio" / "a.wav", sources["a"], RATE)
    soundfile.write(tmp_path / "audio" / "b.flac", sources["b"], RATE, subtype="PCM_24")
    path = tmp_path / "corpus.xml"
    path.write_text(CORPUS.format(b_audio=tmp_path / "audio" / "b.flac"), encoding="utf-8")
    return path, sources


def run_tool(*args, cwd):
    """The root script as a subprocess, as the job runs it; returns (exit code, stdout, stderr)."""
    result = subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    return result.returncode, result.stdout, result.stderr


def _raw_dataset(path, **kwargs):
    return OggZipDataset(
        path=str(path), audio={"features": "raw", "peak_normalization": False}, use_cache_manager=False, **kwargs
    )


def test_job_arguments_give_an_archive_oggzipdataset_reads(corpus, tmp_path):
    xml, sources = corpus
    # BlissToOggZipJob.run with raw/feat sample rates set but no rasr cache: [corpus, --output, out.ogg.zip, ...]
    code, out, err = run_tool(
        xml, "--output", "out.ogg.zip", "--raw_sample_rate", "16000", "--feat_sample_rate", "100", cwd=tmp_path
    )
    assert code == 0, err
    assert "Wrote 3 sequences to out.ogg.zip" in out

    # the metadata list keeps the line shape i6_core's merge of sub-archives relies on
    with zipfile.ZipFile(tmp_path / "out.ogg.zip") as archive:
        lines = archive.read("out.ogg.txt").decode("utf-8").splitlines()
        names = set(archive.namelist())
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 2 + len(EXPECTED)
    assert all(line.startswith("{") and line.endswith("},") for line in lines[1:-1])
    assert "out.ogg/" in names

    dataset = _raw_dataset(tmp_path / "out.ogg.zip")
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == [tag for tag, *_ in EXPECTED]
    for corpus_idx, (tag, text, speaker, start, end, key, channel) in enumerate(EXPECTED):
        entry = dataset.entries[corpus_idx]
        assert (entry["seq_name"], entry["text"], entry["speaker_name"]) == (tag, text, speaker)
        source = sources[key] if channel is None else sources[key][:, channel]
        begin, stop = round(start * RATE), len(source) if end is None else round(end * RATE)
        assert entry["duration"] == pytest.approx((stop - begin) / RATE, abs=1e-9)
        audio = dataset.get_seq(corpus_idx)["data"][:, 0]
        expected = source[begin:stop]
        assert len(audio) == len(expected)  # Ogg Vorbis keeps the exact number of samples
        assert np.sqrt(np.mean((audio - expected) ** 2)) < 0.02  # lossy, but the same signal
        other = sources[key][begin:stop, 1 - channel] if channel is not None else None
        if other is not None:  # the track attribute picked the right channel
            assert np.sqrt(np.mean((audio - other) ** 2)) > 0.2
    assert dataset.get_seq_length(1)["data"] == round(1.15 * RATE)  # planned from the duration, no decoding


def test_gzipped_corpus_subset_and_no_ogg(corpus, tmp_path):
    xml, _ = corpus
    gz = tmp_path / "corpus.xml.gz"
    gz.write_bytes(gzip.compress(xml.read_bytes()))
    segments = tmp_path / "segments.1"
    segments.write_text("toy/sub/rec-b/x\n\ntoy/rec-a/first\n")
    code, _, err = run_tool(gz, "--output", "ogg.1.zip", "--subset_segment_file", segments, "--no_ogg", cwd=tmp_path)
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "ogg.1.zip") as archive:
        assert not [n for n in archive.namelist() if n.endswith(".ogg")]
        assert "ogg.1/" in archive.namelist()  # the folder i6_core's merge step moves, even without audio
    dataset = OggZipDataset(path=str(tmp_path / "ogg.1.zip"), use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == ["toy/rec-a/first", "toy/sub/rec-b/x"]  # corpus order, not list order
    assert [e["duration"] for e in dataset.entries] == [0.75, 1.25]  # end="inf": up to the end of the recording


def test_subset_archives_merge_like_the_concurrent_job(corpus, tmp_path):
    """BlissToOggZipJob with concurrent > 1 merges NAME.txt lines and NAME/ folders of ogg.<i>.zip into one archive."""
    xml, _ = corpus
    merged_entries, merged_files = ["[\n"], {}
    for task, tags in enumerate([["toy/rec-a/first", "toy/sub/rec-b/x"], ["toy/rec-a/2"]], start=1):
        (tmp_path / f"segments.{task}").write_text("\n".join(tags) + "\n")
        code, _, err = run_tool(
            xml, "--output", f"ogg.{task}.zip", "--subset_segment_file", f"segments.{task}", cwd=tmp_path
        )
        assert code == 0, err
        with zipfile.ZipFile(tmp_path / f"ogg.{task}.zip") as archive:
            meta = archive.read(f"ogg.{task}.txt").decode("utf-8")
            merged_entries += [line + "\n" for line in meta.splitlines() if not line.startswith(("[", "]"))]
            for name in archive.namelist():
                if name.startswith(f"ogg.{task}/") and not name.endswith("/"):
                    member = name[len(f"ogg.{task}/") :]
                    assert member not in merged_files  # file names do not clash between sub-archives
                    merged_files[member] = archive.read(name)
    with zipfile.ZipFile(tmp_path / "out.ogg.zip", "w") as archive:
        archive.writestr("out.ogg.txt", "".join(merged_entries) + "]\n")
        for member, data in merged_files.items():
            archive.writestr(f"out.ogg/{member}", data)
    dataset = _raw_dataset(tmp_path / "out.ogg.zip")
    dataset.init_seq_order(1)
    assert sorted(dataset.get_all_tags()) == sorted(tag for tag, *_ in EXPECTED)
    assert all(len(dataset.get_seq(i)["data"]) > 0 for i in range(3))


def test_no_conversion_copies_ogg_files(tmp_path):
    ogg = tmp_path / "utt.ogg"
    soundfile.write(ogg, _tone(0.5, 440, 3), RATE, format="OGG", subtype="VORBIS")
    xml = tmp_path / "c.xml"
    xml.write_text(
        '<corpus name="c"><recording name="r" audio="utt.ogg"><segment name="1" start="0" end="0.5">'
        "<orth>a</orth></segment></recording></corpus>"
    )
    code, _, err = run_tool(xml, "--output", "out.zip", "--no_conversion", cwd=tmp_path)
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.read("out/c/r/1.ogg") == ogg.read_bytes()

    xml.write_text(xml.read_text().replace('start="0"', 'start="0.1"'))
    code, _, err = run_tool(xml, "--output", "out.zip", "--no_conversion", cwd=tmp_path)
    assert code == 1 and "c/r/1" in err and "--no_conversion" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sprint_cache", "feat.cache"], "--sprint_cache feat.cache"),
        (["--ffmpeg_acodec", "pcm_s16le"], "--ffmpeg_acodec pcm_s16le"),
        (["--ffmpeg_resample", "8000"], "--ffmpeg_resample 8000"),
    ],
)
def test_unsupported_options_stop_with_a_reason(corpus, tmp_path, monkeypatch, capsys, extra, message):
    from i6_minireturnn.tools import bliss_to_ogg_zip

    xml, _ = corpus
    monkeypatch.chdir(tmp_path)
    assert bliss_to_ogg_zip.main([str(xml), "--output", "out.zip", *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.zip").exists()


def test_bad_input_is_named(corpus, tmp_path, monkeypatch, capsys):
    from i6_minireturnn.tools import bliss_to_ogg_zip

    xml, _ = corpus
    monkeypatch.chdir(tmp_path)

    def error(*args):
        assert bliss_to_ogg_zip.main([str(a) for a in args]) == 1
        return capsys.readouterr().err

    assert "not found: 'missing.xml'" in error("missing.xml", "--output", "out.zip")
    (tmp_path / "segments").write_text("toy/rec-a/first\ntoy/rec-a/nope\n")
    err = error(xml, "--output", "out.zip", "--subset_segment_file", "segments")
    assert "'segments'" in err and "toy/rec-a/nope" in err
    assert "must name a .zip" in error(xml, "--output", "out.tar")
    broken = tmp_path / "broken.xml"
    broken.write_text('<corpus name="c"><recording name="r" audio="x.wav">')
    err = error(broken, "--output", "out.zip")
    assert "broken.xml" in err and "not well-formed" in err
    os.remove(tmp_path / "audio" / "a.wav")
    assert "audio/a.wav" in error(xml, "--output", "out.zip")
    assert not (tmp_path / "out.zip").exists()  # nothing half-written
    assert not [name for name in os.listdir(tmp_path) if name.startswith("out.zip")]


def test_included_files_are_inserted_where_they_are_included(tmp_path):
    from i6_minireturnn.tools.bliss_to_ogg_zip import iter_bliss

    (tmp_path / "part.xml.gz").write_bytes(
        gzip.compress(
            b'<corpus name="ignored"><recording name="r2" audio="b.wav">'
            b'<segment start="1" end="2"><orth>x <noise/> y</orth></segment></recording></corpus>'
        )
    )
    (tmp_path / "main.xml").write_text(
        '<corpus name="main"><speaker name="s"/><subcorpus name="sub"><include file="part.xml.gz"/></subcorpus>'
        '<recording name="r1" audio="a.wav"><segment name="a" start="0" end="1"/></recording></corpus>'
    )
    (tmp_path / "b.wav").touch()
    segments = list(iter_bliss(str(tmp_path / "main.xml")))
    assert [(s.name, s.orth, s.speaker_name) for s in segments] == [
        ("main/sub/r2/1", "x y", "s"),
        ("main/r1/a", "", "s"),
    ]
    assert segments[0].audio == str(tmp_path / "b.wav")  # relative audio: beside the corpus file (not in the cwd)
