"""OggZipDataset: RETURNN's zip layout of audio files plus a metadata text, with features and text targets.

A zip ``NAME.zip`` holds ``NAME.txt`` (a Python literal: list of dicts with ``file``, ``duration``, ``text`` and
optionally ``seq_name``) and the audio files under ``NAME/``. Lengths are estimated from ``duration``, so
batches are planned without decoding any audio.
"""

from __future__ import annotations

import ast
import io
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..cache_manager import cached_path
from ..errors import DataError
from .audio_features import AudioFeatureExtractor
from .dataset import DataKey, Dataset, read_tag_list
from .vocabulary import Vocabulary, create_vocab


class OggZipDataset(Dataset):
    """``path`` (zip file or list), ``audio`` (feature options or None), ``targets`` (vocabulary options or None),
    ``segment_file``, ``fixed_random_subset``, ``use_cache_manager`` (and the base options, e.g.
    ``epoch_wise_filter`` with ``max_mean_len`` in seconds)."""

    has_cheap_lengths = True  # frames from the duration in the metadata; targets tokenized and kept

    def __init__(
        self,
        *,
        path: Union[str, Sequence[str]],
        audio: Optional[Dict[str, Any]] = None,
        targets: Union[Dict[str, Any], Vocabulary, None] = None,
        segment_file: Optional[str] = None,
        fixed_random_subset: Union[int, float, None] = None,
        zip_audio_files_have_name_as_prefix: bool = True,
        use_cache_manager: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        paths = [path] if isinstance(path, str) else list(path)
        self.paths = [cached_path(p, enabled=use_cache_manager) for p in paths]
        self.audio = AudioFeatureExtractor(**audio) if audio is not None else None
        self.decodes_audio = self.audio is not None
        self.targets = create_vocab(targets) if targets is not None else None
        self.name_prefix = zip_audio_files_have_name_as_prefix
        self.entries: List[Dict[str, Any]] = []
        for zip_index, zip_path in enumerate(self.paths):
            self.entries.extend(dict(e, _zip=zip_index) for e in self._read_metadata(zip_path))
        if segment_file is not None:
            wanted = set(read_tag_list(segment_file, "segment_file"))
            self.entries = [e for e in self.entries if self._tag(e) in wanted]
        if fixed_random_subset:
            count = fixed_random_subset if fixed_random_subset >= 1 else int(fixed_random_subset * len(self.entries))
            picked = np.random.RandomState(42).permutation(len(self.entries))[: int(count)]
            self.entries = [self.entries[i] for i in sorted(picked)]
        self._zips: Dict[int, zipfile.ZipFile] = {}
        self._pid: Optional[int] = None
        if self.audio is not None:
            dim = self.audio.feature_dim  # with deltas and joined frames
            self.data_keys["data"] = DataKey("data", dim, "float32", shape=(dim,))
        if self.targets is not None:
            self.data_keys["classes"] = DataKey("classes", self.targets.num_labels, "int32", sparse=True)
        self._target_cache: Dict[int, np.ndarray] = {}

    def _read_metadata(self, zip_path: str) -> List[Dict[str, Any]]:
        if not os.path.isfile(zip_path):
            raise DataError(f"OggZip file not found: {zip_path!r}")
        name = os.path.splitext(os.path.basename(zip_path))[0]
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = set(archive.namelist())
                if f"{name}.txt" not in members:
                    # The archive was renamed or is reached through a link of another name (Sisyphus' output/
                    # links): its one top-level metadata file names it.
                    top_level = [m[: -len(".txt")] for m in members if m.endswith(".txt") and "/" not in m]
                    if len(top_level) != 1:
                        raise DataError(f"OggZip {zip_path!r} has no metadata file {name + '.txt'!r}")
                    name = top_level[0]
                raw = archive.read(f"{name}.txt")
        except zipfile.BadZipFile as exc:
            raise DataError(f"OggZip {zip_path!r} is not a readable zip file: {exc}") from None
        try:
            entries = ast.literal_eval(raw.decode("utf-8"))
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"OggZip {zip_path!r}: metadata {name}.txt is no Python list literal: {exc}") from None
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "file" not in entry or "duration" not in entry:
                raise DataError(f"OggZip {zip_path!r}: metadata entry {i} lacks 'file' or 'duration': {entry!r}")
            member = f"{name}/{entry['file']}" if self.name_prefix else entry["file"]
            if self.audio is not None and member not in members:
                raise DataError(f"OggZip {zip_path!r}: audio file {member!r} of sequence {i} is missing in the zip")
            entry["_member"] = member
        return entries

    def _tag(self, entry: Dict[str, Any]) -> str:
        return entry.get("seq_name") or entry["_member"]

    # ---- corpus ----------------------------------------------------------------------------------------------------

    def corpus_size(self) -> int:
        return len(self.entries)

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        return self._tag(self.entries[corpus_idx])

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        lengths = {}
        if self.audio is not None:
            lengths["data"] = self.audio.num_frames(float(self.entries[corpus_idx]["duration"]))
        if self.targets is not None:
            lengths["classes"] = len(self._target(corpus_idx))
        return lengths

    def _filter_length(self, corpus_idx: int) -> float:
        return float(self.entries[corpus_idx]["duration"])  # epoch_wise_filter's max_mean_len is in seconds here

    # ---- loading ---------------------------------------------------------------------------------------------------

    def _archive(self, zip_index: int) -> zipfile.ZipFile:
        if self._pid != os.getpid():  # zip handles do not survive a fork
            self._zips, self._pid = {}, os.getpid()
        if zip_index not in self._zips:
            self._zips[zip_index] = zipfile.ZipFile(self.paths[zip_index])
        return self._zips[zip_index]

    def _target(self, corpus_idx: int) -> np.ndarray:
        if corpus_idx not in self._target_cache:
            text = self.entries[corpus_idx].get("text", "")
            try:
                self._target_cache[corpus_idx] = np.array(self.targets.get_seq(text), dtype="int32")
            except KeyError as exc:
                tag = self.corpus_seq_tag(corpus_idx)
                raise DataError(f"OggZipDataset {self.name!r}, sequence {tag!r}: {exc}") from None
        return self._target_cache[corpus_idx]

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        import soundfile

        entry = self.entries[corpus_idx]
        result = {}
        if self.audio is not None:
            where = f"OggZip {self.paths[entry['_zip']]!r}, sequence {self._tag(entry)!r}"
            try:
                raw = self._archive(entry["_zip"]).read(entry["_member"])
                samples, rate = soundfile.read(io.BytesIO(raw), dtype="float32")
            except Exception as exc:
                raise DataError(f"{where}: cannot read audio {entry['_member']!r}: {exc}") from None
            # the utterance's own numbers, the same whichever loader reads it (made only where something draws)
            random_state = (
                self.seq_random_state(corpus_idx, *self.audio.seed_key) if self.audio.draws_random_numbers else None
            )
            result["data"] = self.audio(
                samples, rate, where=where, seq_name=self._tag(entry), random_state=random_state
            )
        if self.targets is not None:
            result["classes"] = self._target(corpus_idx)
        return result

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_zips={}, _pid=None)
        return state
