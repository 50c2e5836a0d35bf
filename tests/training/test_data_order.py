"""The deterministic, resumable data order (libs/training/data_order.py)."""
import itertools

import pytest
import torch
from torch.utils.data import Dataset

from libs.run.seeds import mix_seed
from libs.training.data_order import SeededItems, StepBatchSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_a_resumed_sampler_continues_the_same_order():
    straight = take(StepBatchSampler(20, 4, seed=7), 12)
    assert take(StepBatchSampler(20, 4, seed=7, start_step=5), 7) == straight[5:]
    assert take(StepBatchSampler(20, 4, seed=8), 12) != straight


def test_each_epoch_is_a_permutation_split_among_processes():
    n, batch, world = 24, 6, 3
    per_rank = [take(StepBatchSampler(n, batch, rank, world, seed=1), 8) for rank in range(world)]
    assert all(len(b) == batch // world for rank in per_rank for b in rank)
    steps = [sum((per_rank[r][s] for r in range(world)), []) for s in range(8)]  # the global batch of each step
    epochs = [[i for b in steps[e * 4:(e + 1) * 4] for i, _ in b] for e in (0, 1)]
    assert all(sorted(e) == list(range(n)) for e in epochs) and epochs[0] != epochs[1]
    seeds = [s for b in steps for _, s in b]
    assert len(set(seeds)) == len(seeds)  # one item seed per (step, position)


def test_the_incomplete_last_batch_is_dropped():
    sampler = StepBatchSampler(10, 4, seed=0)
    first_epoch = [i for b in take(sampler, 2) for i, _ in b]
    assert len(set(first_epoch)) == 8  # two full batches of 10 items, then a new permutation
    assert sampler.indices(3) == StepBatchSampler(10, 4, seed=0).indices(3)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="batch size 10 is not divisible by the number of processes 3"):
        StepBatchSampler(100, 10, 0, 3)
    with pytest.raises(ValueError, match="the dataset has 5 items, fewer than one batch of 8"):
        StepBatchSampler(5, 8)


class Noisy(Dataset):
    """An item with random augmentation drawn from torch's global generator."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return index + torch.rand(())


def test_seeded_items_repeat_their_augmentation_and_leave_the_global_rng_alone():
    items = SeededItems(Noisy())
    assert len(items) == 4
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = items[(2, 11)], items[(2, 11)], items[(2, 12)]
    assert torch.equal(a, b) and not torch.equal(a, c) and 2 <= a < 3
    assert torch.equal(torch.random.get_rng_state(), before)
    # the draw is the item seed's own, as torch.manual_seed(seed) gave it (runs resumed from
    # checkpoints of earlier versions see the same augmentation), also for 63-bit seeds
    seed = mix_seed(7, 0, 1)
    assert seed >= 2 ** 62
    for s in (11, seed):
        assert torch.equal(items[(2, s)], 2 + torch.rand((), generator=torch.Generator().manual_seed(s)))
        torch.manual_seed(s)
        assert torch.equal(items[(1, s)], 1 + torch.rand(()))
