"""Bliss XML corpus -> OggZip archive (what :class:`OggZipDataset` reads), RETURNN's ``bliss-to-ogg-zip.py`` interface.

    python tools/bliss-to-ogg-zip.py CORPUS.xml[.gz] --output NAME.zip [--subset_segment_file SEGMENTS]
        [--no_ogg | --no_conversion] [--number_of_channels N]

Every segment (corpus order) becomes one entry of ``NAME.txt`` (a Python list literal, one dict per line with
``text``, ``speaker_name``, ``file``, ``seq_name``, ``duration``) and, unless ``--no_ogg``, one Ogg Vorbis file under
``NAME/``: the segment's samples cut from the recording (at its own sample rate) and encoded with libsndfile
(``soundfile``), no ffmpeg. Audio files are named after the segment (``<corpus>/<recording>/<segment>.ogg``), so the
archives of several segment subsets (i6_core's ``BlissToOggZipJob`` with ``concurrent`` > 1) merge without clashes.

Differences to RETURNN's tool: ``speaker_name`` is inherited from the recording / corpus when the segment has no
``<speaker>`` (RETURNN writes None there); a segment's ``track`` attribute picks that channel; ``end="inf"`` (or no
``end``) means the end of the recording. ffmpeg-only options (``--ffmpeg_acodec``, ``--ffmpeg_resample``) and
``--sprint_cache`` (RASR feature caches) are not supported and stop with an error. The archive appears complete
or not at all (temp file + rename); an existing archive is replaced, not appended to.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..atomic_file import atomic_path
from ..errors import DataError, UserError
from . import program_name

# segments that run past the end of their audio by more than this are reported (shorter overruns are rounding)
OVERRUN_WARNING_SECONDS = 0.01


@dataclass
class BlissSegment:
    """One segment of a Bliss corpus; ``end`` None means up to the end of the recording."""

    name: str  # full name: corpus/[subcorpus/...]/recording/segment, as i6_core's Segment.fullname()
    recording: str  # full name of the recording
    audio: str  # audio file path, resolved
    start: Decimal
    end: Optional[Decimal]
    orth: str
    speaker_name: Optional[str]
    track: Optional[int]
    corpus_file: str  # the XML file that defines the segment (for error messages)


# ---- reading the corpus ----------------------------------------------------------------------------------------------


def _open_maybe_gzip(path: str) -> Any:
    """Binary file object; gzip is detected by content (corpora are often gzipped without a .gz name, or vice versa)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _resolve_audio(audio: str, corpus_file: str) -> str:
    """Absolute paths as they are; relative ones against the working directory (as RETURNN does), else against the
    corpus file's folder (corpora shipped with their audio next to them)."""
    if os.path.isabs(audio) or os.path.exists(audio):
        return audio
    beside_corpus = os.path.join(os.path.dirname(os.path.abspath(corpus_file)), audio)
    return beside_corpus if os.path.exists(beside_corpus) else audio


def _time(value: Optional[str], what: str, where: str) -> Optional[Decimal]:
    """A start/end attribute as exact decimal (segment times are written in decimal); None for missing or inf."""
    if value is None or value.strip().lower() in ("inf", "+inf"):
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise DataError(f"{where}: {what}={value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise DataError(f"{where}: {what}={value!r} must be a finite time >= 0 in seconds")
    return number


def iter_bliss(path: str) -> Iterator[BlissSegment]:
    """All segments of a Bliss corpus file (plain or gzipped XML; ``<include file=...>`` followed), in file order."""
    if not os.path.isfile(path):
        raise DataError(f"Bliss corpus not found: {path!r}")
    yield from _iter_corpus_file(path, prefix=None, speakers=[None], seen=set())


def _iter_corpus_file(
    path: str, *, prefix: Optional[List[str]], speakers: List[Optional[str]], seen: Set[str]
) -> Iterator[BlissSegment]:
    """Segments of one corpus file. `prefix` is None for the main file; for an included file it is the name path of
    the section that includes it, and the included file's own root name is dropped (its content is inserted there).
    `speakers` holds the speaker names set by the enclosing sections, innermost last."""
    real = os.path.realpath(path)
    if real in seen:
        raise DataError(f"Bliss corpus {path!r} includes itself (directly or indirectly)")
    seen = seen | {real}
    names: List[str] = list(prefix or [])
    speakers = list(speakers)
    elems: List[Any] = []  # open elements, to drop finished ones from their parent (memory stays flat)
    # per open element: whether it pushed a name / a speaker scope (the root of an included file only the latter)
    sections: List[Tuple[bool, bool]] = []
    recording: Optional[Tuple[str, str]] = None  # (full name, resolved audio path)
    segment_count = 0
    segment: Optional[Dict[str, str]] = None  # attributes of the open <segment>
    segment_speaker: Optional[str] = None
    in_description = 0  # depth inside <speaker-description>: free-form speaker attributes, no corpus structure
    try:
        with _open_maybe_gzip(path) as stream:
            for event, elem in ElementTree.iterparse(stream, events=("start", "end")):
                tag = elem.tag
                if event == "start":
                    pushed = (False, False)
                    if not elems:
                        if tag != "corpus":
                            raise DataError(f"{path!r} is not a Bliss corpus: root element is <{tag}>, not <corpus>")
                        if prefix is None:
                            names.append(_required(elem, "name", path))
                        pushed = (prefix is None, True)
                    elif in_description or tag == "speaker-description":
                        in_description += 1
                    elif tag in ("subcorpus", "recording"):
                        names.append(_required(elem, "name", path))
                        pushed = (True, True)
                        if tag == "recording":
                            audio = _resolve_audio(_required(elem, "audio", path), path)
                            recording, segment_count = ("/".join(names), audio), 0
                    elif tag == "segment":
                        if recording is None:
                            raise DataError(f"Bliss corpus {path!r}: <segment> outside of a <recording>")
                        segment_count += 1
                        segment, segment_speaker = dict(elem.attrib), None
                    elif tag == "speaker":
                        if segment is not None:
                            segment_speaker = _required(elem, "name", path)
                        else:  # the speaker of the enclosing corpus, subcorpus or recording
                            speakers[-1] = _required(elem, "name", path)
                    if pushed[1]:
                        speakers.append(speakers[-1])
                    sections.append(pushed)
                    elems.append(elem)
                    continue
                # event == "end"
                elems.pop()
                if in_description:
                    in_description -= 1
                elif tag == "segment" and segment is not None:
                    yield _make_segment(path, recording, segment, segment_count, elem, segment_speaker, speakers)
                    segment = None
                elif tag == "include":
                    included = os.path.join(os.path.dirname(path), _required(elem, "file", path))
                    if not os.path.isfile(included):
                        raise DataError(f"Bliss corpus {path!r}: included file not found: {included!r}")
                    yield from _iter_corpus_file(included, prefix=names, speakers=speakers, seen=seen)
                elif tag == "recording":
                    recording = None
                pushed_name, pushed_speaker = sections.pop()
                if pushed_name:
                    names.pop()
                if pushed_speaker:
                    speakers.pop()
                if elems and tag in ("segment", "recording", "subcorpus", "speaker-description", "include"):
                    elems[-1].remove(elem)  # done with it: large corpora have hundreds of thousands of segments
    except ElementTree.ParseError as exc:
        raise DataError(f"Bliss corpus {path!r} is not well-formed XML: {exc}") from None
    except (OSError, EOFError) as exc:  # truncated gzip, unreadable file
        raise DataError(f"Cannot read Bliss corpus {path!r}: {exc}") from None


def _required(elem: Any, attribute: str, path: str) -> str:
    value = elem.attrib.get(attribute)
    if value is None:
        raise DataError(f"Bliss corpus {path!r}: <{elem.tag}> without the {attribute!r} attribute")
    return value


def _make_segment(
    path: str,
    recording: Optional[Tuple[str, str]],
    attrs: Dict[str, str],
    index: int,
    elem: Any,
    segment_speaker: Optional[str],
    speakers: List[Optional[str]],
) -> BlissSegment:
    assert recording is not None
    recording_name, audio = recording
    name = f"{recording_name}/{attrs.get('name', str(index))}"  # unnamed segments count from 1, as in i6_core
    where = f"Bliss corpus {path!r}, segment {name!r}"
    start = _time(attrs.get("start", "0"), "start", where)
    if start is None:
        raise DataError(f"{where}: start={attrs['start']!r} is not a finite time")
    end = _time(attrs.get("end"), "end", where)
    if end is not None and end <= start:
        raise DataError(f"{where}: end {end} is not after start {start}")
    track = None
    if "track" in attrs:
        try:
            track = int(attrs["track"])
        except ValueError:
            raise DataError(f"{where}: track={attrs['track']!r} is not an integer") from None
    orth_elem = elem.find("orth")
    # itertext: orths may hold markup such as <noise/> between words; whitespace (line breaks too) collapses
    orth = " ".join("".join(orth_elem.itertext()).split()) if orth_elem is not None else ""
    return BlissSegment(
        name=name,
        recording=recording_name,
        audio=audio,
        start=start,
        end=end,
        orth=orth,
        speaker_name=segment_speaker or speakers[-1],
        track=track,
        corpus_file=path,
    )


# ---- selecting segments ----------------------------------------------------------------------------------------------


def read_segment_list(path: str) -> List[str]:
    """Segment names, one per line (plain or gzipped); blank lines are skipped."""
    if not os.path.isfile(path):
        raise DataError(f"Segment file not found: {path!r}")
    with _open_maybe_gzip(path) as f:
        names = [line.strip() for line in f.read().decode("utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"Segment file {path!r} lists no segments")
    return names


def select_segments(corpus: str, subset_segment_file: Optional[str] = None) -> List[BlissSegment]:
    """The corpus's segments, restricted to those named in `subset_segment_file`; every named one must exist."""
    wanted = set(read_segment_list(subset_segment_file)) if subset_segment_file else None
    segments = [s for s in iter_bliss(corpus) if wanted is None or s.name in wanted]
    if wanted is not None:
        missing = sorted(wanted - {s.name for s in segments})
        if missing:
            raise DataError(
                f"Segment file {subset_segment_file!r}: {len(missing)} segment(s) not in Bliss corpus {corpus!r}, "
                f"e.g. {missing[:3]}"
            )
    if not segments:
        raise DataError(f"Bliss corpus {corpus!r} has no segments")
    return segments


def archive_member_name(segment_name: str) -> str:
    """Path of a segment's audio inside ``NAME/``: its full name with path-unsafe components neutralised."""
    parts = []
    for part in segment_name.split("/"):
        part = part.replace("\\", "_").replace("\0", "_")
        parts.append("_" if part in ("", ".") else "__" if part == ".." else part)
    return "/".join(parts) + ".ogg"


# ---- audio -----------------------------------------------------------------------------------------------------------


class AudioSource:
    """Keeps the current recording open: segments come grouped by recording, so each file is opened once."""

    def __init__(self) -> None:
        self.path: Optional[str] = None
        self.file: Any = None

    @staticmethod
    def check_exists(segment: BlissSegment) -> None:
        if not os.path.isfile(segment.audio):
            raise DataError(
                f"Bliss corpus {segment.corpus_file!r}, recording {segment.recording!r}: "
                f"audio file not found: {segment.audio!r}"
            )

    def get(self, segment: BlissSegment) -> Any:
        import soundfile

        if segment.audio != self.path:
            self.close()
            self.check_exists(segment)
            try:
                self.file = soundfile.SoundFile(segment.audio)
            except Exception as exc:  # libsndfile's errors are RuntimeError / LibsndfileError
                raise DataError(f"Cannot read audio file {segment.audio!r} (segment {segment.name!r}): {exc}") from None
            self.path = segment.audio
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.path, self.file = None, None


def _sample_index(seconds: Decimal, rate: int) -> int:
    return int((seconds * rate).to_integral_value(rounding=ROUND_HALF_EVEN))


def segment_samples(source: Any, segment: BlissSegment) -> Tuple[int, int, float]:
    """(first sample, end sample, seconds the segment's end lies beyond the audio) of `segment` in `source`."""
    rate, total = source.samplerate, source.frames
    begin = _sample_index(segment.start, rate)
    stop = total if segment.end is None else _sample_index(segment.end, rate)
    if begin >= total:
        raise DataError(
            f"segment {segment.name!r} ({segment.audio!r}): starts at {segment.start}s, "
            f"but the audio is only {total / rate:.3f}s long"
        )
    return begin, min(stop, total), max(0, stop - total) / rate


def cut_segment(source: Any, segment: BlissSegment, number_of_channels: int = 0) -> Tuple[np.ndarray, int, float]:
    """(samples [time] or [time, channels], sample rate, seconds the segment's end lies beyond the audio)."""
    where = f"segment {segment.name!r} ({segment.audio!r})"
    begin, stop, overrun = segment_samples(source, segment)
    try:
        source.seek(begin)
        samples = source.read(stop - begin, dtype="float32", always_2d=True)
    except Exception as exc:
        raise DataError(f"{where}: cannot read samples {begin}..{stop}: {exc}") from None
    if segment.track is not None:
        if not 0 <= segment.track < samples.shape[1]:
            raise DataError(f"{where}: track {segment.track}, but the audio has {samples.shape[1]} channel(s)")
        samples = samples[:, segment.track : segment.track + 1]
    if number_of_channels == 1:
        samples = samples.mean(axis=1, keepdims=True)
    elif number_of_channels and number_of_channels != samples.shape[1]:
        raise UserError(
            f"--number_of_channels {number_of_channels}: {where} has {samples.shape[1]} channel(s); "
            "only a mixdown to 1 channel (or keeping the channels) is supported"
        )
    return (samples[:, 0] if samples.shape[1] == 1 else samples), source.samplerate, overrun


def encode_ogg(samples: np.ndarray, rate: int) -> bytes:
    """Ogg Vorbis bytes of `samples` (libsndfile keeps the exact number of samples)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


# ---- writing the archive ---------------------------------------------------------------------------------------------


def metadata_line(entry: Dict[str, Any]) -> str:
    """One metadata entry on one line ending with a comma: i6_core's merge of sub-archives copies the lines between
    the ``[`` and ``]`` lines, so the list must keep exactly this shape."""
    return repr(entry) + ",\n"


def segment_audio(
    segment: BlissSegment, source: AudioSource, *, no_ogg: bool, no_conversion: bool, number_of_channels: int, out: Any
) -> Tuple[Optional[bytes], float]:
    """(the segment's Ogg file, None with `no_ogg`; its duration for the metadata). The duration is the nominal
    end - start (as RETURNN writes it) where the segment lies inside its audio, else the length actually taken."""
    nominal = float(segment.end - segment.start) if segment.end is not None else None
    if no_ogg:
        source.check_exists(segment)  # as RETURNN's tool does; decoded only where the length is needed
        if nominal is not None:
            return None, nominal
        audio = source.get(segment)
        begin, stop, _ = segment_samples(audio, segment)
        return None, round((stop - begin) / audio.samplerate, 6)
    if no_conversion:
        data, frames, rate = _copy_ogg(segment, source.get(segment))
        return data, nominal if nominal is not None else round(frames / rate, 6)
    samples, rate, overrun = cut_segment(source.get(segment), segment, number_of_channels)
    if overrun > OVERRUN_WARNING_SECONDS:
        print(f"WARNING: segment {segment.name!r} ends {overrun:.3f}s after its audio {segment.audio!r}", file=out)
    duration = nominal if nominal is not None and not overrun else round(len(samples) / rate, 6)
    return encode_ogg(samples, rate), duration


def convert(
    segments: Sequence[BlissSegment],
    output: str,
    *,
    no_ogg: bool = False,
    no_conversion: bool = False,
    number_of_channels: int = 0,
    out: Any = None,
) -> float:
    """Writes the OggZip archive `output` (``NAME.zip``) for `segments`; returns the total duration in seconds."""
    out = out or sys.stdout
    name, ext = os.path.splitext(os.path.basename(output))
    if ext != ".zip" or not name:
        raise UserError(f"--output must name a .zip file (NAME.zip holds NAME.txt and NAME/), got {output!r}")
    lines, folders, members, total_duration = ["[\n"], {name + "/"}, set(), 0.0
    source = AudioSource()
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        try:
            for segment in segments:
                member = archive_member_name(segment.name)
                if member in members:
                    raise DataError(f"Bliss corpus {segment.corpus_file!r}: segment name {segment.name!r} occurs twice")
                members.add(member)
                data, duration = segment_audio(
                    segment,
                    source,
                    no_ogg=no_ogg,
                    no_conversion=no_conversion,
                    number_of_channels=number_of_channels,
                    out=out,
                )
                if data is not None:  # Ogg is compressed already: storing it saves time and loses nothing
                    archive.writestr(f"{name}/{member}", data, compress_type=zipfile.ZIP_STORED)
                entry = {
                    "text": segment.orth,
                    "speaker_name": segment.speaker_name,
                    "file": member,
                    "seq_name": segment.name,
                    "duration": duration,
                }
                lines.append(metadata_line(entry))
                total_duration += duration
                parts = member.split("/")
                folders.update(f"{name}/{'/'.join(parts[: i + 1])}/" for i in range(len(parts) - 1))
        finally:
            source.close()
        # folder entries, as zip tools write them: i6_core's merge step moves NAME/, so it must exist even without audio
        for folder in sorted(folders):
            archive.writestr(folder, b"")
        archive.writestr(f"{name}.txt", "".join(lines + ["]\n"]))
    return total_duration


def _copy_ogg(segment: BlissSegment, audio: Any) -> Tuple[bytes, int, int]:
    """--no_conversion: the recording is this segment's Ogg file already; copy its bytes unchanged."""
    where = f"--no_conversion: segment {segment.name!r}"
    if audio.format != "OGG":
        raise DataError(f"{where}: audio {segment.audio!r} is {audio.format}, not Ogg; drop --no_conversion")
    if segment.start:
        raise DataError(
            f"{where} starts at {segment.start}s; without conversion only whole files (start 0) can be taken, "
            "drop --no_conversion to cut the segment"
        )
    with open(segment.audio, "rb") as f:
        return f.read(), audio.frames, audio.samplerate


# ---- command line ----------------------------------------------------------------------------------------------------


def _hms(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def build_parser() -> argparse.ArgumentParser:
    """RETURNN's ``bliss-to-ogg-zip.py`` arguments."""
    parser = argparse.ArgumentParser(
        prog=program_name(__file__, "bliss-to-ogg-zip.py"), description=__doc__.split("\n")[0]
    )
    parser.add_argument("bliss_filename", help="Bliss XML corpus (.xml or .xml.gz)")
    parser.add_argument("--output", required=True, help="output NAME.zip (empty: dry run, nothing written)")
    parser.add_argument("--subset_segment_file", help="only these segments (full names, one per line)")
    parser.add_argument("--no_ogg", action="store_true", help="metadata only, no audio files")
    parser.add_argument("--no_conversion", action="store_true", help="audio files are the segments' Ogg files: copy")
    parser.add_argument("--number_of_channels", type=int, default=0, help="1: mix down to mono (0: keep)")
    parser.add_argument("--no_cleanup", action="store_true", help="accepted; no temp folder is used")
    parser.add_argument("--ffmpeg_loglevel", default="info", help="accepted; no ffmpeg is run")
    # options of RETURNN's tool that need ffmpeg or RASR caches: rejected with a reason (see check_unsupported)
    parser.add_argument("--sprint_cache", help="not supported (RASR feature cache synchronisation)")
    parser.add_argument("--raw_sample_rate", type=int, help="only used with --sprint_cache")
    parser.add_argument("--feat_sample_rate", type=int, help="only used with --sprint_cache")
    parser.add_argument("--ffmpeg_acodec", help="not supported (no ffmpeg)")
    parser.add_argument("--ffmpeg_resample", type=int, default=0, help="not supported (no ffmpeg)")
    return parser


def check_unsupported(args: argparse.Namespace) -> None:
    """Options whose effect we cannot reproduce stop the run instead of being ignored."""
    if args.sprint_cache:
        raise UserError(
            f"--sprint_cache {args.sprint_cache}: synchronising audio to a RASR feature cache is not supported by "
            "i6-minireturnn (no RASR cache reader); convert without it, or use RETURNN's tool"
        )
    if args.ffmpeg_acodec:
        raise UserError(
            f"--ffmpeg_acodec {args.ffmpeg_acodec}: no ffmpeg is used here; audio is decoded with libsndfile "
            "(soundfile), which picks the codec itself. Drop the option, or use RETURNN's tool"
        )
    if args.ffmpeg_resample:
        raise UserError(
            f"--ffmpeg_resample {args.ffmpeg_resample}: resampling is not supported; segments keep their recording's "
            "sample rate (OggZipDataset's audio options can check it)"
        )
    if args.number_of_channels < 0:
        raise UserError(f"--number_of_channels must be >= 0, got {args.number_of_channels}")
    if args.no_conversion and args.number_of_channels:
        raise UserError("--number_of_channels needs conversion; it cannot be combined with --no_conversion")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry (RETURNN's arguments); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as exc:  # input problems: one line naming the cause, no traceback
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    """The conversion the command line asks for (no torch import: the tool only needs numpy and soundfile)."""
    check_unsupported(args)
    if args.raw_sample_rate or args.feat_sample_rate:
        # RETURNN's tool uses them only for the RASR cache synchronisation, so without it they change nothing
        print("Note: --raw_sample_rate / --feat_sample_rate only matter with --sprint_cache; not used")
    segments = select_segments(args.bliss_filename, args.subset_segment_file)
    print(f"Bliss corpus {args.bliss_filename}: {len(segments)} segments")
    print(f"Recordings: {len({s.recording for s in segments})}")
    if not args.output:
        missing = sorted({s.audio for s in segments if not os.path.isfile(s.audio)})
        if missing:
            raise DataError(f"Bliss corpus {args.bliss_filename!r}: audio file(s) not found: {missing[:3]}")
        print("Dry run (empty --output): nothing written")
        return
    duration = convert(
        segments,
        args.output,
        no_ogg=args.no_ogg,
        no_conversion=args.no_conversion,
        number_of_channels=args.number_of_channels,
    )
    print(f"Total duration: {duration:.2f} s ({_hms(duration)}), {sum(len(s.orth) for s in segments)} characters")
    print(f"Wrote {len(segments)} sequences to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
