"""libs/diffusers_exit/caches.py: spellings, refusals in one line, hooks applied and removed, the
work counter against full depth."""
import pytest
import torch

from libs.diffusers_exit import attach_exits, caches
from libs.run.errors import UserError
from tests.diffusers_exit.tiny_models import inputs, tiny_dit


@pytest.mark.parametrize("item", ["magcache:0.1", "fastercache", "pab:2", "fbc:0", "taylorseer:1.5", "fbc:x"])
def test_unsupported_or_misspelled_caches_are_refused_in_one_line(item):
    with pytest.raises(UserError) as e:
        caches.parse_cache(item, "DiTTransformer2DModel")
    assert "\n" not in str(e.value) and item in str(e.value)


def test_a_class_without_caches_is_refused():
    with pytest.raises(UserError) as e:
        caches.parse_cache("fbc:0.1", "UNet2DModel")
    assert "DiTTransformer2DModel" in str(e.value)


@pytest.mark.parametrize("spec", ["fbc:0.5", "taylorseer:2"])
def test_hooks_come_off_and_the_model_is_itself_again(spec):
    model = tiny_dit()
    net = attach_exits(model)
    x, t, y, _, _ = inputs()
    with torch.no_grad():
        before = model(x, timestep=t, class_labels=y).sample
        with caches.applied(model, caches.parse_cache(spec, "DiTTransformer2DModel")):
            call = caches.cached_call(model, net.cond_name)
            for _ in range(5):
                call(x, t, y)
        assert torch.equal(model(x, timestep=t, class_labels=y).sample, before)


def test_work_counter_at_full_depth_is_the_adapters_count():
    model = tiny_dit()
    net = attach_exits(model)
    x, t, y, _, _ = inputs()
    counter = caches.WorkCounter(model)
    with torch.no_grad():
        model(x, timestep=t, class_labels=y)
    counter.remove()
    fl = net.flops()
    assert counter.gflops_per_image(net.block_pieces(), fl.embed, fl.output_head, 3) == pytest.approx(fl.full / 1e9)


def test_first_block_cache_skips_the_blocks_when_nothing_changes():
    model = tiny_dit()
    net = attach_exits(model)
    x, t, y, _, _ = inputs()
    with torch.no_grad(), caches.applied(model, caches.parse_cache("fbc:0.05", "DiTTransformer2DModel")):
        counter = caches.WorkCounter(model)
        call = caches.cached_call(model, net.cond_name)
        first, second = call(x, t, y), call(x, t, y)  # the same input twice: block 0's residual is unchanged
        counter.remove()
    assert torch.allclose(first, second, atol=1e-5)
    assert counter.rows["attn"] == 3 * (net.num_blocks + 1)  # every block once, then block 0 alone
