"""Loaders sized from the machine (i6_minireturnn/data/loader_count.py): on a GPU, a dataset that decodes audio gets
one loader per usable CPU but two (affinity, cgroup quota, SLURM_CPUS_PER_TASK, shared by the ranks of a node), at
most eight; other datasets, the CPU, and a config that sets num_workers_per_gpu keep their number."""

from __future__ import annotations

import os

import pytest

from i6_minireturnn.config import Config
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.loader_count import MOST_LOADERS, cgroup_cpu_quota, decoding_loaders, usable_cpus
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions

AFFINITY = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _cgroup(tmp_path, v2=None, v1=None):
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return str(root)


def test_cgroup_quota_v2_and_v1(tmp_path):
    assert cgroup_cpu_quota(_cgroup(tmp_path / "a", v2="max 100000")) is None
    assert cgroup_cpu_quota(_cgroup(tmp_path / "b", v2="250000 100000")) == 3  # 2.5 CPUs: rounded up
    assert cgroup_cpu_quota(_cgroup(tmp_path / "c", v1=(400000, 100000))) == 4
    assert cgroup_cpu_quota(_cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_the_fewest_cpus_of_affinity_quota_and_slurm_count(tmp_path):
    free = _cgroup(tmp_path / "free", v2="max 100000")
    assert usable_cpus({}, free) == (AFFINITY, f"affinity {AFFINITY}")
    count, why = usable_cpus({"SLURM_CPUS_PER_TASK": "1"}, _cgroup(tmp_path / "q", v2="200000 100000"))
    assert count == 1 and "cgroup quota 2" in why and "SLURM_CPUS_PER_TASK 1" in why


def test_a_decoding_dataset_gets_the_cpus_but_two_shared_by_the_ranks(tmp_path):
    free = _cgroup(tmp_path / "free", v2="max 100000")
    assert decoding_loaders({"SLURM_CPUS_PER_TASK": "2"}, free)[0] == 1  # never fewer than one
    if AFFINITY >= 16:
        assert decoding_loaders({"SLURM_CPUS_PER_TASK": "16"}, free)[0] == MOST_LOADERS
        count, why = decoding_loaders({"SLURM_CPUS_PER_TASK": "16", "LOCAL_WORLD_SIZE": "4"}, free)
        assert count == 2 and "4 for each of 4 ranks" in why
    quota = _cgroup(tmp_path / "q", v2="600000 100000")
    count, why = decoding_loaders({}, quota)
    assert count == max(1, min(AFFINITY, 6) - 2)
    assert "kept for the training loop" in why


class _DecodingDataset(SyntheticSpeechDataset):
    decodes_audio = True


def _options(keys, device):
    return PipelineOptions.from_config(Config({"batch_size": 400, "max_seqs": 4, **keys}), device=device)


def test_only_a_decoding_dataset_on_a_gpu_with_the_number_unset_gets_the_machines_number(capsys):
    on_gpu = _options({}, "cuda")
    assert on_gpu.decoding_workers == decoding_loaders()[0]
    decoding = _DecodingDataset(num_seqs=8, name="train_audio")
    batches = EpochBatches(decoding, 1, on_gpu)
    assert batches.options.num_workers == decoding_loaders()[0]
    if on_gpu.decoding_workers != on_gpu.num_workers:
        assert "Data loaders for dataset 'train_audio'" in capsys.readouterr().out
    assert EpochBatches(SyntheticSpeechDataset(num_seqs=8), 1, on_gpu).options.num_workers == 1  # reads arrays
    assert EpochBatches(decoding, 1, _options({}, "cpu")).options.num_workers == 1  # on the CPU: as before
    set_by_config = _options({"num_workers_per_gpu": 3}, "cuda")
    assert EpochBatches(decoding, 1, set_by_config).options.num_workers == 3


@pytest.mark.parametrize("workers", [1, 3])
def test_the_batches_do_not_depend_on_the_number(workers):
    dataset = _DecodingDataset(num_seqs=24)
    options = _options({"num_workers_per_gpu": workers}, "cpu")
    reference = [b["seq_tag"] for b in EpochBatches(dataset, 1, _options({"num_workers_per_gpu": 1}, "cpu"))]
    assert [b["seq_tag"] for b in EpochBatches(dataset, 1, options)] == reference
