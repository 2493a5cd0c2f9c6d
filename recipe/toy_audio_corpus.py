"""SyntheticBlissCorpusJob: a small speech-like corpus in Bliss format (audio files + corpus.xml.gz), made from tones,
so that pipelines over i6_core's corpus jobs (e.g. BlissToOggZipJob) run without downloading anything."""

from __future__ import annotations

import gzip
import os
import xml.etree.ElementTree as ET

import numpy as np
from sisyphus import Job, Task

WORDS = ["one", "two", "three", "four", "five"]


class SyntheticBlissCorpusJob(Job):
    """Recordings of 1-3 segments, each segment 1-4 words; a word is a tone of its own pitch (0.2-0.4 s) with noise.
    Every recording is one wav file; the corpus names each segment's start, end, speaker and orthography."""

    def __init__(self, *, num_recordings: int = 6, sample_rate: int = 16000, seed: int = 1):
        """
        :param num_recordings: recordings (audio files) in the corpus
        :param sample_rate: Hz
        :param seed: random seed of the words, durations and noise
        """
        self.num_recordings = num_recordings
        self.sample_rate = sample_rate
        self.seed = seed
        self.out_corpus = self.output_path("corpus.xml.gz")
        self.out_audio = self.output_path("audio", directory=True)

    def tasks(self):
        yield Task("run", mini_task=True)

    def _word_audio(self, rng: np.random.Generator, word: str) -> np.ndarray:
        duration = rng.uniform(0.2, 0.4)
        t = np.arange(int(duration * self.sample_rate)) / self.sample_rate
        pitch = 200.0 * (1 + WORDS.index(word))
        return 0.3 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.shape)

    def run(self):
        import soundfile

        rng = np.random.default_rng(self.seed)
        corpus = ET.Element("corpus", name="toy")
        for speaker in ("spk1", "spk2"):
            ET.SubElement(corpus, "speaker-description", name=speaker)
        for rec_idx in range(self.num_recordings):
            name = f"rec{rec_idx + 1}"
            audio_file = os.path.join(self.out_audio.get_path(), f"{name}.wav")
            recording = ET.SubElement(corpus, "recording", name=name, audio=audio_file)
            ET.SubElement(recording, "speaker", name=f"spk{rec_idx % 2 + 1}")
            pieces, start = [], 0.0
            for seg_idx in range(int(rng.integers(1, 4))):
                words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=int(rng.integers(1, 5)))]
                audio = np.concatenate([self._word_audio(rng, w) for w in words])
                pieces += [audio, np.zeros(self.sample_rate // 10)]  # 0.1 s pause between segments
                end = start + len(audio) / self.sample_rate
                segment = ET.SubElement(
                    recording, "segment", name=str(seg_idx + 1), start=f"{start:.4f}", end=f"{end:.4f}"
                )
                ET.SubElement(segment, "orth").text = " ".join(words)
                start = end + 0.1
            soundfile.write(audio_file, np.concatenate(pieces).astype(np.float32), self.sample_rate, subtype="PCM_16")
        ET.indent(corpus)
        with gzip.open(self.out_corpus.get_path(), "wt", encoding="utf-8") as f:
            f.write('<?xml version="1.0" encoding="utf8"?>\n' + ET.tostring(corpus, encoding="unicode") + "\n")
