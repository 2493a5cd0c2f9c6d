"""Datasets over datasets: MetaDataset (keys matched by tag), ConcatDataset and CombinedDataset (corpora joined)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from .dataset import CorpusOffsets, DataKey, Dataset, read_tag_list
from .registry import init_dataset
from .seq_order import interleave_order
from .vocabulary import read_literal_file


class MetaDataset(Dataset):
    """``datasets``: {name: dataset dict}; ``data_map``: {key: (name, key in that dataset)}.

    The sequence order comes from ``seq_order_control_dataset`` (its ``seq_ordering`` and ``partition_epoch``);
    the other datasets are read by tag. ``seq_list_file`` restricts the corpus to the listed tags.
    """

    def __init__(
        self,
        *,
        datasets: Dict[str, Any],
        data_map: Dict[str, Tuple[str, str]],
        seq_order_control_dataset: Optional[str] = None,
        seq_list_file: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(datasets, dict) or not datasets:
            raise ConfigError(f"MetaDataset {self.name!r}: 'datasets' must be a non-empty dict")
        self.control_name = seq_order_control_dataset or sorted(datasets)[0]
        if self.control_name not in datasets:
            raise ConfigError(
                f"MetaDataset {self.name!r}: seq_order_control_dataset {self.control_name!r} is not in datasets "
                f"{sorted(datasets)}"
            )
        if seq_list_file:
            datasets = {
                **datasets,
                self.control_name: self._with_tag_filter(datasets[self.control_name], seq_list_file),
            }
        self.datasets = {name: init_dataset(opts, name=f"{self.name}/{name}") for name, opts in datasets.items()}
        self.data_map: Dict[str, Tuple[str, str]] = {}
        for key, target in data_map.items():
            if not (isinstance(target, (tuple, list)) and len(target) == 2):
                raise ConfigError(f"MetaDataset {self.name!r}: data_map[{key!r}] must be (dataset name, data key)")
            name, sub_key = target
            if name not in self.datasets:
                raise ConfigError(
                    f"MetaDataset {self.name!r}: data_map[{key!r}] names unknown dataset {name!r}; "
                    f"datasets: {sorted(self.datasets)}"
                )
            if sub_key not in self.datasets[name].data_keys:
                raise ConfigError(
                    f"MetaDataset {self.name!r}: data_map[{key!r}] names key {sub_key!r}, which dataset {name!r} "
                    f"does not have (it has {sorted(self.datasets[name].data_keys)})"
                )
            self.data_map[key] = (name, sub_key)
            sub = self.datasets[name].data_keys[sub_key]
            self.data_keys[key] = DataKey(key, sub.dim, sub.dtype, sub.sparse, sub.shape)
        self.has_cheap_lengths = all(self.datasets[name].has_cheap_lengths for name, _ in self.data_map.values())
        self.decodes_audio = any(self.datasets[name].decodes_audio for name, _ in self.data_map.values())
        self.control = self.datasets[self.control_name]
        self.seq_list = set(read_tag_list(seq_list_file, "seq_list_file")) if seq_list_file else None
        self._tag_index: Dict[str, Dict[str, int]] = {}

    def _with_tag_filter(self, control_opts: Any, seq_list_file: str) -> Dict[str, Any]:
        """The control dataset's options with ``seq_list_file`` as its tag filter: its ordering then covers exactly
        the listed sequences."""
        if not isinstance(control_opts, dict):
            raise ConfigError(
                f"MetaDataset {self.name!r}: with seq_list_file, the control dataset {self.control_name!r} must be "
                "given as a dataset dict (the list becomes its seq_list_filter_file option)"
            )
        return {**control_opts, "seq_list_filter_file": seq_list_file}

    # the corpus is the control dataset's corpus

    def _index_of(self, name: str) -> Dict[str, int]:
        if name not in self._tag_index:
            self._tag_index[name] = {tag: i for i, tag in enumerate(self.datasets[name].get_all_tags())}
        return self._tag_index[name]

    def check_tags(self) -> None:
        """Every sequence must exist in every dataset: a clear error naming the dataset and missing tags."""
        tags = self.control.get_all_tags()
        if self.seq_list is not None:
            known = set(tags)
            tags = [t for t in tags if t in self.seq_list] + sorted(t for t in self.seq_list if t not in known)
        for name in self.datasets:
            index = self._index_of(name)
            missing = [t for t in tags if t not in index]
            if missing:
                raise DataError(
                    f"MetaDataset {self.name!r}: {len(missing)} sequence(s) missing in dataset {name!r}, "
                    f"e.g. {missing[:3]}"
                )

    def corpus_size(self) -> int:
        return self.control.corpus_size()

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        return self.control.corpus_seq_tag(corpus_idx)

    def init_seq_order(
        self,
        epoch: Optional[int] = None,
        seq_list: Optional[Sequence[str]] = None,
        seq_order: Optional[Sequence[int]] = None,
    ) -> bool:
        """The control dataset's order (its seq_ordering, partition_epoch and filters)."""
        self.check_tags()
        self.set_epoch(epoch or 1)
        if seq_order is not None:
            self._epoch_order = [int(i) for i in seq_order]
            return True
        self.control.init_seq_order(self.epoch, seq_list=seq_list)
        self._epoch_order = [self.control.corpus_index(i) for i in range(self.control.num_seqs)]
        return True

    def set_epoch(self, epoch: int) -> None:
        # the other datasets are read by tag, never ordered: their loading learns the epoch here
        super().set_epoch(epoch)
        for dataset in self.datasets.values():
            dataset.set_epoch(epoch)

    def _sub_index(self, name: str, corpus_idx: int) -> int:
        return self._index_of(name)[self.corpus_seq_tag(corpus_idx)]

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        loaded: Dict[str, Dict[str, np.ndarray]] = {}
        result = {}
        for key, (name, sub_key) in self.data_map.items():
            if name not in loaded:
                loaded[name] = self.datasets[name].load_corpus_seq(self._sub_index(name, corpus_idx))
            result[key] = loaded[name][sub_key]
        return result

    def corpus_seq_lengths(self, corpus_idx: int) -> Optional[Dict[str, int]]:
        if not self.has_cheap_lengths:
            return None
        per_dataset: Dict[str, Dict[str, int]] = {}
        lengths = {}
        for key, (name, sub_key) in self.data_map.items():
            if name not in per_dataset:
                per_dataset[name] = self.datasets[name].corpus_seq_lengths(self._sub_index(name, corpus_idx)) or {}
            lengths[key] = per_dataset[name].get(sub_key, 0)
        return lengths


class _Concatenated(Dataset):
    """Common part: the corpus is the sub-datasets' corpora one after another."""

    def _setup(self, datasets: List[Dataset]) -> None:
        self.parts = datasets
        self._offsets = CorpusOffsets([d.corpus_size() for d in datasets])
        self.has_cheap_lengths = all(d.has_cheap_lengths for d in datasets)
        self.decodes_audio = any(d.decodes_audio for d in datasets)

    def set_epoch(self, epoch: int) -> None:
        # parts are ordered only by some orderings (e.g. ConcatDataset's own); all of them are loaded in this epoch
        super().set_epoch(epoch)
        for part in self.parts:
            part.set_epoch(epoch)

    def _locate(self, corpus_idx: int) -> Tuple[Dataset, int]:
        part, idx = self._offsets.locate(corpus_idx)
        return self.parts[part], idx

    def corpus_size(self) -> int:
        return self._offsets.total

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        dataset, idx = self._locate(corpus_idx)
        return dataset.corpus_seq_tag(idx)


class ConcatDataset(_Concatenated):
    """``datasets``: a list of dataset dicts with the same data keys, read one after another, each in its order."""

    def __init__(self, *, datasets: Sequence[Any], **kwargs: Any):
        super().__init__(**kwargs)
        parts = [init_dataset(opts, name=f"{self.name}/{i}") for i, opts in enumerate(datasets)]
        if not parts:
            raise ConfigError(f"ConcatDataset {self.name!r}: 'datasets' is empty")
        for part in parts[1:]:
            if part.data_keys.keys() != parts[0].data_keys.keys():
                raise ConfigError(
                    f"ConcatDataset {self.name!r}: data keys differ: {sorted(parts[0].data_keys)} vs "
                    f"{sorted(part.data_keys)} ({part.name})"
                )
        self._setup(parts)
        self.data_keys = dict(parts[0].data_keys)

    def init_seq_order(self, epoch=None, seq_list=None, seq_order=None) -> bool:
        if seq_list is not None or seq_order is not None:
            return super().init_seq_order(epoch, seq_list=seq_list, seq_order=seq_order)
        self.set_epoch(epoch or 1)
        order: List[int] = []
        for offset, part in zip(self._offsets.starts, self.parts):
            part.init_seq_order(self.epoch)
            order.extend(offset + part.corpus_index(i) for i in range(part.num_seqs))
        self._epoch_order = order
        return True

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        dataset, idx = self._locate(corpus_idx)
        return dataset.load_corpus_seq(idx)

    def corpus_seq_lengths(self, corpus_idx: int) -> Optional[Dict[str, int]]:
        dataset, idx = self._locate(corpus_idx)
        return dataset.corpus_seq_lengths(idx)


class CombinedDataset(_Concatenated):
    """``datasets`` {name: dict} and ``data_map`` {(name, key): output key}: sequences of all datasets in one
    corpus (ordered by this dataset's ``seq_ordering``); keys a sequence's dataset lacks are empty (length 0)."""

    def __init__(self, *, datasets: Dict[str, Any], data_map: Dict[Tuple[str, str], str], **kwargs: Any):
        super().__init__(**kwargs)
        subs = {name: init_dataset(opts, name=f"{self.name}/{name}") for name, opts in datasets.items()}
        self.names = list(subs)
        self._setup([subs[n] for n in self.names])
        self.maps: Dict[str, Dict[str, str]] = {n: {} for n in self.names}
        for (name, key), out in data_map.items():
            if name not in subs or key not in subs[name].data_keys:
                raise ConfigError(f"CombinedDataset {self.name!r}: data_map entry ({name!r}, {key!r}) is unknown")
            sub = subs[name].data_keys[key]
            self.data_keys.setdefault(out, DataKey(out, sub.dim, sub.dtype, sub.sparse, sub.shape))
            self.maps[name][key] = out
        if self.seq_ordering == "interleave" and self.partition_epoch != 1:
            raise ConfigError(
                f"CombinedDataset {self.name!r}: seq_ordering 'interleave' takes no partition_epoch (as in RETURNN); "
                "set partition_epoch on the sub-datasets instead"
            )

    def init_seq_order(self, epoch=None, seq_list=None, seq_order=None) -> bool:
        """``interleave``: each sub-dataset in its own order, mixed evenly (see :func:`interleave_order`); other
        orderings sort the joint corpus as in RETURNN."""
        if self.seq_ordering != "interleave" or seq_list is not None or seq_order is not None:
            return super().init_seq_order(epoch, seq_list=seq_list, seq_order=seq_order)
        self.set_epoch(epoch or 1)
        for part in self.parts:
            part.init_seq_order(self.epoch)
        by_key = sorted(range(len(self.parts)), key=lambda i: self.names[i])  # RETURNN numbers parts by sorted key
        self._epoch_order = [
            self._offsets.starts[by_key[p]] + self.parts[by_key[p]].corpus_index(k)
            for p, k in interleave_order([self.parts[i].num_seqs for i in by_key])
        ]
        return True

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        dataset, idx = self._locate(corpus_idx)
        raw = dataset.load_corpus_seq(idx)
        mapping = self.maps[self.names[self.parts.index(dataset)]]
        result = {out: raw[key] for key, out in mapping.items()}
        for out, info in self.data_keys.items():
            if out not in result:
                result[out] = np.zeros((0,) + tuple(d or 0 for d in info.shape), dtype=info.dtype)
        return result

    def corpus_seq_lengths(self, corpus_idx: int) -> Optional[Dict[str, int]]:
        dataset, idx = self._locate(corpus_idx)
        lengths = dataset.corpus_seq_lengths(idx)
        if lengths is None:
            return None
        mapping = self.maps[self.names[self.parts.index(dataset)]]
        result = {out: lengths.get(key, 0) for key, out in mapping.items()}
        return {out: result.get(out, 0) for out in self.data_keys}


class ConcatSeqsDataset(Dataset):
    """RETURNN's ConcatSeqsDataset: each line of ``seq_list_file`` (tags joined by ``seq_tag_delim``) becomes one
    sequence, the sub-sequences of ``dataset`` concatenated in time.

    ``seq_len_file`` (a dict literal {tag: length}) gives the lengths used for sorting;
    ``remove_in_between_postfix`` {key: label} drops that trailing label from all but the last part;
    ``repeat_in_between_last_frame_up_to_multiple_of`` {key: n} pads all but the last part to a multiple of n
    frames by repeating its last frame.
    """

    def __init__(
        self,
        *,
        dataset: Dict[str, Any],
        seq_list_file: str,
        seq_len_file: Optional[str] = None,
        seq_tag_delim: str = ";",
        remove_in_between_postfix: Optional[Dict[str, int]] = None,
        repeat_in_between_last_frame_up_to_multiple_of: Optional[Dict[str, int]] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sub = init_dataset(dataset, name=f"{self.name}/dataset")
        self.data_keys = dict(self.sub.data_keys)
        self.lines = read_tag_list(seq_list_file, "seq_list_file")
        self.parts = [line.split(seq_tag_delim) for line in self.lines]
        index = {tag: i for i, tag in enumerate(self.sub.get_all_tags())}
        missing = sorted({t for parts in self.parts for t in parts if t not in index})
        if missing:
            raise DataError(
                f"ConcatSeqsDataset {self.name!r}: {len(missing)} tag(s) not in the dataset, e.g. {missing[:3]}"
            )
        self.part_indices = [[index[t] for t in parts] for parts in self.parts]
        self.seq_lens: Optional[Dict[str, int]] = None
        if seq_len_file is not None:
            self.seq_lens = read_literal_file(seq_len_file, "seq_len_file")
        self.remove_postfix = dict(remove_in_between_postfix or {})
        self.repeat_multiple = dict(repeat_in_between_last_frame_up_to_multiple_of or {})
        self.has_cheap_lengths = self.sub.has_cheap_lengths
        self.decodes_audio = self.sub.decodes_audio

    def corpus_size(self) -> int:
        return len(self.lines)

    def set_epoch(self, epoch: int) -> None:
        # the dataset is read by corpus index, never ordered: its loading learns the epoch here
        super().set_epoch(epoch)
        self.sub.set_epoch(epoch)

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        return self.lines[corpus_idx]

    def _corpus_length_for_sorting(self, corpus_idx: int) -> int:
        if self.seq_lens is not None:
            return sum(int(self.seq_lens.get(t, 0)) for t in self.parts[corpus_idx])
        return super()._corpus_length_for_sorting(corpus_idx)

    def _in_between_sizes(self, key: str, length: int) -> Tuple[int, int]:
        """The in-between rule for a part that is not the last one: (frames kept, length after padding).

        Lengths and loaded data both follow it, so planned batches match the loaded sequences.
        """
        kept = length - 1 if key in self.remove_postfix else length
        multiple = self.repeat_multiple.get(key)
        padded = -(-kept // multiple) * multiple if multiple else kept
        return kept, padded

    def _in_between_part(self, key: str, value: np.ndarray, tag: str) -> np.ndarray:
        """A loaded part that is not the last one, changed by :func:`_in_between_sizes`."""
        if key in self.remove_postfix and (len(value) == 0 or value[-1] != self.remove_postfix[key]):
            raise DataError(
                f"ConcatSeqsDataset {self.name!r}: {tag!r} key {key!r} does not end with the postfix "
                f"{self.remove_postfix[key]!r}"
            )
        kept, padded = self._in_between_sizes(key, len(value))
        value = value[:kept]
        if padded > kept:
            value = np.concatenate([value] + [value[-1:]] * (padded - kept))
        return value

    def corpus_seq_lengths(self, corpus_idx: int) -> Optional[Dict[str, int]]:
        if not self.has_cheap_lengths:
            return None
        parts = [self.sub.corpus_seq_lengths(i) for i in self.part_indices[corpus_idx]]
        lengths = {}
        for key in self.data_keys:
            in_between = sum(self._in_between_sizes(key, part[key])[1] for part in parts[:-1])
            lengths[key] = in_between + parts[-1][key]
        return lengths

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        parts = [self.sub.load_corpus_seq(i) for i in self.part_indices[corpus_idx]]
        tags = self.parts[corpus_idx]
        result = {}
        for key in self.data_keys:
            pieces = [self._in_between_part(key, part[key], tag) for part, tag in zip(parts[:-1], tags)]
            result[key] = np.concatenate(pieces + [parts[-1][key]])
        return result
