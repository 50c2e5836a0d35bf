"""Deterministic, resumable data order, a function of (seed, step): the global batch of step s
(1-based) is a slice of epoch e = (s - 1) // batches_per_epoch's permutation drawn from
``seed + e``, each process taking its share; augmentation in ``__getitem__`` is seeded per item
from (seed, step, position). A resumed run sees exactly the batches of an uninterrupted one."""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Dataset, Sampler

from libs.run.seeds import mix_seed


class StepBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yields, for steps start_step+1, start_step+2, ..., this process's list of
    (dataset index, item seed) pairs. Infinite; incomplete last batches of an epoch are dropped."""

    def __init__(self, num_items: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the number of processes {world_size}")
        if num_items < global_batch:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {global_batch}")
        self.n, self.batch, self.rank, self.world = num_items, global_batch, rank, world_size
        self.seed, self.start_step = seed, start_step
        self.per_epoch = num_items // global_batch
        self.local = global_batch // world_size

    def indices(self, step: int) -> List[Tuple[int, int]]:
        epoch, pos = divmod(step - 1, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        lo = pos * self.batch + self.rank * self.local
        idx = perm[lo: lo + self.local].tolist()
        return [(i, mix_seed(self.seed, step, self.rank * self.local + j)) for j, i in enumerate(idx)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step = self.start_step
        while True:
            step += 1
            yield self.indices(step)

    def __len__(self):  # infinite; DataLoader only needs this for its length hint
        return 2 ** 62


class SeededItems(Dataset):
    """Wrap a dataset so that item (index, seed) runs ``dataset[index]`` with torch's global CPU
    generator seeded by ``seed`` (state restored afterwards): augmentation must draw on the CPU
    (an accelerator's generator is neither seeded nor restored here)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only, the one fork_rng restores (torch.manual_seed would also
            # seed every accelerator's, formatting the call stack each time CUDA is not started)
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]
