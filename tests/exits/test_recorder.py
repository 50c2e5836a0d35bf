"""The exit recorder (libs/exits/recorder.py): counts per call and block, heads run, the
one-row host path against the tensor path, summaries and GFLOPs on hand-made counts."""
import pytest
import torch

from libs.exits.policy import FULL, ExitPolicyError, ProfileExit, StaticExit
from libs.exits.recorder import ExitRecorder
from libs.models.flops import NetworkFlops
from tests.helpers.tiny_uvit import tiny

# embed 10, blocks 1, 2, 3, head 0.5, output 4: a row exiting after block k costs 14 + cum[k]
FLOPS = NetworkFlops(embed=10.0, blocks=(1.0, 2.0, 3.0), uem_head=0.5, output_head=4.0)
FLOPS_5 = NetworkFlops(embed=1.0, blocks=(1.0, 2.0, 3.0, 4.0, 5.0), uem_head=0.25, output_head=2.0)


def test_counts_per_call_and_block_across_runs():
    rec = ExitRecorder(num_blocks=3)
    for exits in ([0, 2, 2], [1]):  # two sampling runs (batches of 3 and 1 rows); call indices restart
        rec.start_run()
        rec.record(torch.tensor(exits), torch.tensor([1] * len(exits)))
    rec.record(torch.tensor([2, 2]))  # second call of the second run, no heads given
    assert rec.counts.tolist() == [[1, 1, 2], [0, 0, 2]]
    assert rec.head_evals.item() == 4 and rec.head_evals.dim() == 0


def test_summary_on_hand_made_counts():
    rec = ExitRecorder(num_blocks=3)
    rec.record(torch.tensor([0, 2]), torch.tensor([1, 2]))  # call 0: rows exit after blocks 0 and 2
    rec.record(torch.tensor([1]), torch.tensor([0]))  # call 1: one row after block 1, no head
    s = rec.summary(FLOPS, num_images=2)
    assert s["calls_rows"] == 3
    assert s["mean_blocks"] == pytest.approx((1 + 3 + 2) / 3)
    assert s["layer_ratio"] == pytest.approx(2 / 3)
    assert s["exit_block_per_step"] == pytest.approx([1.0, 1.0])
    # rows: 14 + 1, 14 + 6, 14 + 3 = 52, heads 3 * 0.5: 53.5 FLOPs over 2 images
    assert s["gflops_per_image"] == pytest.approx(53.5 / 2 / 1e9)
    assert s["gflops_per_image"] * 2e9 == pytest.approx(3 * FLOPS.mean_call([0, 2, 1], [1, 2, 0]))
    assert "gflops_per_image" not in rec.summary(None, 2)
    empty = ExitRecorder(num_blocks=3).summary(FLOPS, 0)
    assert empty["calls_rows"] == 0 and empty["gflops_per_image"] == 0.0 and empty["exit_block_per_step"] == []


def test_one_row_path_counts_as_the_tensor_path():
    """One-row calls (Python ints, counted on the host) and batched calls add up the same,
    also when the counts were made under inference mode and read outside it."""
    mixed, tensors = ExitRecorder(num_blocks=5), ExitRecorder(num_blocks=5)
    calls = [[(3, 4)], [(1, 2), (4, 4)], [(0, 0)], [(2, 3)], [(4, 0)]]  # (exit block, heads) per row, per call
    for run in range(3):
        for rec in (mixed, tensors):
            rec.start_run()
        with torch.inference_mode(run == 1):
            for rows in calls:
                exits, heads = (torch.tensor(v) for v in zip(*rows))
                tensors.record(exits, heads)
                if len(rows) == 1:
                    mixed.record_one(*rows[0])
                else:
                    mixed.record(exits, heads)
        assert torch.equal(mixed.counts, tensors.counts)  # also read between runs
    assert mixed.counts.sum() == 3 * 6 and int(mixed.head_evals) == int(tensors.head_evals) == 3 * 13
    assert mixed.summary(FLOPS_5, 3) == tensors.summary(FLOPS_5, 3)


def test_wrap_records_the_network_calls():
    net = tiny()
    rec = ExitRecorder(net.num_blocks)
    with torch.no_grad():
        fn = rec.wrap(net, StaticExit(2))
        rec.start_run()
        fn(torch.randn(3, 3, 8, 8), torch.rand(3) * 999)
        fn(torch.randn(1, 3, 8, 8), torch.rand(1) * 999)  # one row: the host path
        rec.wrap(net, FULL)(torch.randn(2, 3, 8, 8), torch.rand(2) * 999)
    assert rec.counts.tolist() == [[0, 0, 3, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 2]]
    assert int(rec.head_evals) == 0


def test_wrap_applies_each_steps_rule_of_a_profile():
    net = tiny(num_classes=5, sharp=True)
    blocks = [1, 3, 4, 0, 2]
    policy = ProfileExit(0.9, blocks)
    assert policy.calibration() == "blocks per step 1 3 4 0 2"
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    rec = ExitRecorder(net.num_blocks)
    net_fn = rec.wrap(net, policy)
    with torch.no_grad():
        for step, k in enumerate(blocks):
            t = torch.full((4,), 900.0 - 150 * step)
            assert torch.equal(net_fn(x, t, y), net(x, t, y, exit_policy=StaticExit(k)))
        with pytest.raises(ExitPolicyError, match="calibrated for 5 network calls"):
            net_fn(x, t, y)
    assert rec.summary(None, 4)["exit_block_per_step"] == [float(k) for k in blocks]
    assert int(rec.head_evals) == 0


class _TwoProcesses:
    """An accelerator stand-in whose other process recorded the same counts."""

    num_processes, device = 2, torch.device("cpu")

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor * 2


def test_reduce_sums_over_processes():
    rec = ExitRecorder(num_blocks=3)
    rec.record(torch.tensor([0, 2]), torch.tensor([1, 2]))
    rec.record_one(1, 1)
    rec.reduce(_TwoProcesses())
    assert rec.counts.tolist() == [[2, 0, 2], [0, 2, 0]] and int(rec.head_evals) == 8
    single = type("One", (), {"num_processes": 1})()
    rec.reduce(single)  # one process: nothing to sum
    assert rec.counts.tolist() == [[2, 0, 2], [0, 2, 0]]


def test_reused_blocks_are_counted_and_not_charged():
    """Rows that took a span from the cache: the one-row host path and the tensor path count
    the same; blocks computed, blocks reused, their per-step means and GFLOPs follow."""
    mixed, tensors = ExitRecorder(num_blocks=5), ExitRecorder(num_blocks=5)
    calls = [([4, 4], [False, False], None), ([4, 4], [True, False], (1, 4)), ([4], [True], (2, 3))]
    for rec in (mixed, tensors):
        rec.start_run()
    for exits, reused, span in calls:
        tensors.record(torch.tensor(exits), torch.tensor([0] * len(exits)), torch.tensor(reused), span)
        if len(exits) == 1:
            mixed.record_one(exits[0], 0, reused[0], span)
        else:
            mixed.record(torch.tensor(exits), torch.tensor([0] * len(exits)), torch.tensor(reused), span)
    assert torch.equal(mixed.reused, tensors.reused)
    assert tensors.reused.tolist() == [[0] * 5, [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    s = tensors.summary(FLOPS_5, num_images=2)
    assert s["blocks_reused"] == pytest.approx(4 / 5) and s["mean_blocks"] == pytest.approx(5 - 4 / 5)
    assert s["blocks_reused_per_step"] == pytest.approx([0, 1.5, 1]) and \
        s["blocks_computed_per_step"] == pytest.approx([5, 3.5, 4])
    # 5 rows at full depth (1 + 15 + 2 each) less the reused blocks 2 + 3 + 4 and 3
    assert s["gflops_per_image"] * 2e9 == pytest.approx(5 * 18 - 9 - 3)
    assert s["gflops_per_image"] * 2e9 == pytest.approx(
        3 * FLOPS_5.full + FLOPS_5.call(4, reused=(1, 2, 3)) + FLOPS_5.call(4, reused=(2,)))
    plain = ExitRecorder(num_blocks=5)
    plain.record(torch.tensor([4]))
    assert plain.summary(FLOPS_5, 1)["blocks_reused"] == 0 and plain.reused.tolist() == [[0] * 5]


def test_wrap_is_a_sampling_run_recording_here():
    """The recorder only counts: ``wrap`` hands back a ``SamplingRun`` (which owns the run's
    calls, cache and output slicing) that records into it."""
    from libs.exits.reuse import DeepCache
    from libs.exits.sampling_run import SamplingRun

    net = tiny()
    rec = ExitRecorder(net.num_blocks)
    run = rec.wrap(net, DeepCache(2, 1))
    assert isinstance(run, SamplingRun) and run.recorder is rec and run.cache.spans == ((1, 4),)
    assert rec.wrap(net, DeepCache(2, 1)).cache is not run.cache  # a new cache per run
    assert SamplingRun(net, FULL).cache is None


def test_forecast_blocks_are_counted_as_part_of_the_reused():
    """Of the reused rows, those whose cached value was a forecast: the one-row host path and
    the tensor path count the same, rows that did not reuse are never counted."""
    mixed, tensors = ExitRecorder(num_blocks=5), ExitRecorder(num_blocks=5)
    calls = [([4, 4], [True, False], (1, 4), [True, True]), ([4, 4], [True, True], (1, 4), None),
             ([4], [True], (2, 3), [True]), ([4], [False], (2, 3), [True])]
    for exits, reused, span, forecast in calls:
        f = None if forecast is None else torch.tensor(forecast)
        tensors.record(torch.tensor(exits), torch.tensor([0] * len(exits)), torch.tensor(reused), span, f)
        if len(exits) == 1:
            mixed.record_one(exits[0], 0, reused[0], span, forecast=reused[0] and forecast[0])
        else:
            mixed.record(torch.tensor(exits), torch.tensor([0] * len(exits)), torch.tensor(reused), span, f)
    assert torch.equal(mixed.forecast, tensors.forecast) and torch.equal(mixed.reused, tensors.reused)
    assert tensors.forecast.tolist() == [[0, 1, 1, 1, 0], [0] * 5, [0, 0, 1, 0, 0], [0] * 5]
    s = tensors.summary(FLOPS_5, num_images=2)
    assert s["blocks_forecast"] == pytest.approx(4 / 6) and s["blocks_reused"] == pytest.approx(10 / 6)
    assert s["blocks_forecast_per_step"] == pytest.approx([1.5, 0, 1, 0])
    assert mixed.summary(FLOPS_5, 2) == s


def test_per_call_gflops_add_up_to_the_run_without_heads():
    rec = ExitRecorder(num_blocks=5)
    rec.record(torch.tensor([4, 1]), torch.tensor([0, 2]))
    rec.record(torch.tensor([4, 4]), torch.tensor([0, 0]), torch.tensor([True, False]), (1, 4))
    s = rec.summary(FLOPS_5, num_images=2)
    # a row through block 4: 1 + 15 + 2 = 18, through block 1: 1 + 3 + 2 = 6
    # call 0: 18 + 6 = 24; call 1: 18 + 18 - (2 + 3 + 4) = 27; the heads (2 x 0.25) only in the total
    assert [g * 2e9 for g in s["gflops_per_step"]] == pytest.approx([24, 27])
    assert s["gflops_per_image"] * 2e9 == pytest.approx(24 + 27 + 0.5)
    assert s["gflops_pieces"]["embed_output"] * 1e9 == pytest.approx(3) and \
        [b * 1e9 for b in s["gflops_pieces"]["blocks"]] == pytest.approx([1, 2, 3, 4, 5])


def _tiny_dit():
    from tests.models.test_dit import randomise, tiny as tiny_dit

    return randomise(tiny_dit(learn_sigma=False))


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("backbone", ["uvit", "dit"])
def test_a_forecast_run_counts_its_forecasts_per_call(B, backbone):
    """forecast:2:1:1: call 1 reuses the span (1, N-1) from one value (a copy), calls 3 and 5
    from two (forecasts); forecast:2:1:0 and deepcache copy throughout. U-ViT and DiT."""
    from libs.exits.forecast import Forecast
    from libs.exits.reuse import DeepCache

    net = tiny(num_classes=5) if backbone == "uvit" else _tiny_dit()
    x, y = torch.randn(B, 3, 8, 8), torch.randint(0, 5, (B,))
    got = {}
    for policy in (Forecast(2, 1, 1), Forecast(2, 1, 0), DeepCache(2, 1)):
        rec = ExitRecorder(net.num_blocks)
        run = rec.wrap(net, policy)
        with torch.no_grad():
            for c in range(6):
                run(x, torch.full((B,), 900.0 - 120 * c), y)
        got[policy.spec] = rec.summary(None, B)
    span = net.num_blocks - 2
    s = got["forecast:2:1:1"]
    assert s["blocks_reused_per_step"] == [0, span, 0, span, 0, span]
    assert s["blocks_forecast_per_step"] == [0, 0, 0, span, 0, span]
    assert s["blocks_forecast"] == pytest.approx(span / 3) and s["blocks_reused"] == pytest.approx(span / 2)
    for spec in ("forecast:2:1:0", "deepcache:2:1"):
        assert got[spec]["blocks_reused_per_step"] == [0, span, 0, span, 0, span] and got[spec]["blocks_forecast"] == 0
