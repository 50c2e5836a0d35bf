"""Sampled conditions: balanced (default) or random as released, always per-image seeded."""
from types import SimpleNamespace

import pytest
import torch

from configs.digits_uvit_tiny import get_config
from libs.tasks.pixel import PixelTask
from libs.tasks.text import TextTask
from libs.tasks.conditions import sample_captions


def digits_task(conditions=None, seed=None):
    config = get_config()
    if conditions is not None:
        config.sample.conditions = conditions
    if seed is not None:
        config.seed = seed
    return PixelTask(config, load_data=False)


def test_balanced_labels_are_the_default():
    task = digits_task()
    assert task.conditions(range(25), "cpu").tolist() == [i % 10 for i in range(25)]  # 10 digits + null label


def test_random_labels_are_per_image():
    task = digits_task("random")
    whole = task.conditions(range(200), "cpu").tolist()
    assert all(0 <= y < 10 for y in whole) and set(whole) == set(range(10))
    assert whole != [i % 10 for i in range(200)]
    # Image i gets its label whatever the batch (threshold, process count, batch size).
    pieces = task.conditions(range(150, 200), "cpu").tolist() + task.conditions([7, 3], "cpu").tolist()
    assert pieces == whole[150:200] + [whole[7], whole[3]]
    assert digits_task("random").conditions(range(200), "cpu").tolist() == whole
    assert digits_task("random", seed=99).conditions(range(200), "cpu").tolist() != whole


def test_bad_conditions_mode():
    with pytest.raises(ValueError, match="config.sample.conditions='released'.*balanced.*random"):
        digits_task("released")


NUM_CAPTIONS = [1, 5, 2, 3, 4, 5, 1]


def test_balanced_captions():
    assert sample_captions(range(10), NUM_CAPTIONS, "balanced", 0) == [(i % 7, 0) for i in range(10)]


def test_random_captions_shuffle_images_and_draw_captions_per_image():
    pairs = sample_captions(range(70), NUM_CAPTIONS, "random", 1234)
    for p in range(10):  # every pass over the 7 val images is a permutation
        assert sorted(j for j, _ in pairs[7 * p:7 * p + 7]) == list(range(7))
    assert all(0 <= k < NUM_CAPTIONS[j] for j, k in pairs)
    assert [j for j, _ in pairs[:7]] != list(range(7)) or [j for j, _ in pairs[7:14]] != list(range(7))
    assert any(k > 0 for _, k in pairs)
    assert sample_captions([69, 3, 40], NUM_CAPTIONS, "random", 1234) == [pairs[69], pairs[3], pairs[40]]
    assert sample_captions(range(70), NUM_CAPTIONS, "random", 1) != pairs


@pytest.mark.parametrize("mode", ["balanced", "random"])
def test_text_task_conditions_use_the_chosen_captions(mode):
    class Val:
        num_captions = NUM_CAPTIONS

        def __len__(self):
            return len(NUM_CAPTIONS)

        def context(self, j, k):
            return torch.tensor([[float(j), float(k)]])

    task = TextTask.__new__(TextTask)  # only the sampling attributes conditions() reads
    task.dataset, task.condition_mode, task.seed = SimpleNamespace(val=Val()), mode, 5
    out = task.conditions(range(9), "cpu")
    assert [tuple(map(int, c[0])) for c in out] == sample_captions(range(9), NUM_CAPTIONS, mode, 5)


def _released_label_dropout(y, p_uncond, null_label, generator):
    """The label dropout as first written here: one draw of y's shape, the null label where it falls."""
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


def _released_context_dropout(context, empty, p_uncond, generator):
    drop = torch.rand(context.shape[0], device=context.device, generator=generator) < p_uncond
    return torch.where(drop[:, None, None], empty.to(context.device, context.dtype), context)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_condition_dropout_is_one_draw_per_row_for_labels_and_contexts(p):
    from libs.tasks.conditions import drop_condition

    y = torch.arange(64) % 10
    got = drop_condition(y, torch.tensor(10), p, torch.Generator().manual_seed(3))
    assert torch.equal(got, _released_label_dropout(y, p, 10, torch.Generator().manual_seed(3)))
    assert 0 < int((got == 10).sum()) < 64

    ctx, empty = torch.randn(64, 5, 3), torch.randn(5, 3)
    got = drop_condition(ctx, empty, p, torch.Generator().manual_seed(4))
    assert torch.equal(got, _released_context_dropout(ctx, empty, p, torch.Generator().manual_seed(4)))


def test_condition_dropout_off_draws_nothing():
    from libs.tasks.conditions import drop_condition

    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    y = torch.arange(8)
    assert drop_condition(y, torch.tensor(99), 0.0, g) is y
    assert torch.equal(g.get_state(), state)
