"""The per-sample early-exit loop (libs/models/exit_loop.py): exits, compaction and scatter,
the batch-of-one path, patience, and the threshold rule unchanged bit for bit."""
import pytest
import torch

from libs.exits.call import Call, Rule, Threshold
from libs.exits.policy import ThresholdExit
from libs.models import exit_loop
from libs.models.uvit_core import UViTCarry
from tests.helpers.tiny_uvit import set_head_certainty, sharpen_heads, tiny, tiny_t2i


class ScriptedExit(Rule):
    """Row r exits after block ``plan[r]`` (its state is its planned block, compacted with the
    rows); with ``heads`` it asks for the certainty at every test, else never."""

    def __init__(self, plan, heads=True):
        self.plan, self.heads = list(plan), heads

    def init_state(self, batch, device):
        return torch.tensor(self.plan[:batch], device=device)

    def decide(self, block, patience, certainty, state):
        if self.heads:
            certainty()
        return state == block, state


@pytest.mark.parametrize("plan", [[1, 3, 3, 0, 4, 2], [2, 2, 2, 2, 2, 2], [4, 4, 4, 4, 4, 4], [0, 4, 1, 4, 3, 4]])
@pytest.mark.parametrize("heads", [True, False])
def test_rows_exit_as_planned_in_their_original_order(plan, heads):
    """Mixed exits (compaction, then scatter), all rows at once (no compaction), none before the
    last block; the batch loop and the one-row loop agree with the shared head on block k."""
    net = tiny(num_classes=5)
    last = net.num_blocks - 1
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 5, (6,))
    with torch.no_grad():
        preds = net.forward_all_exits(x, t, y).preds
        h, carry = net.embed(x, t, y)
        sample, exit_block, uem_evals, reused = exit_loop.run(net, h, carry, Call(rule=ScriptedExit(plan, heads)))
        assert reused is None  # no reuse cache
        assert exit_block.tolist() == plan
        # A row exiting after block k ran a head after every tested block up to k (the last has none).
        assert uem_evals.tolist() == [min(k + 1, last) if heads else 0 for k in plan]
        for r, k in enumerate(plan):
            torch.testing.assert_close(sample[r], preds[k, r], atol=1e-6, rtol=1e-6)
            h1, carry1 = net.embed(x[r:r + 1], t[r:r + 1], y[r:r + 1])
            one = exit_loop.run(net, h1, carry1, Call(rule=ScriptedExit([k], heads)))
            assert one[1:] == (k, min(k + 1, last) if heads else 0, None)  # Python ints
            torch.testing.assert_close(one[0][0], sample[r], atol=1e-6, rtol=1e-6)


def _old_threshold_loop(net, x, timesteps, cond, tau):
    """The threshold loop exactly as it was before exit policies (regression oracle)."""
    B = x.shape[0]
    h, carry = net.embed(x, timesteps, cond)
    time_emb, skips = carry.time_emb, carry.skips
    active = torch.arange(B)
    passes = torch.zeros(B, dtype=torch.long)
    exit_block = torch.full((B,), net.num_blocks - 1, dtype=torch.long)
    rows, outs = [], []
    half = net.depth // 2
    for i in range(net.num_blocks):
        h = net.run_block(i, h, UViTCarry(skips, time_emb))
        if i == net.num_blocks - 1:
            break
        passed = net.certainty(i, h, time_emb).mean(dim=(1, 2), dtype=torch.float32) > tau
        if i < half:
            passes = passes + passed.long()
            passed = passes >= net.in_block_patience
        if not bool(passed.any()):
            continue
        done = passed.nonzero().squeeze(1)
        rows.append(active[done])
        outs.append(net.output_head(h[done]))
        exit_block[active[done]] = i
        keep = (~passed).nonzero().squeeze(1)
        if keep.numel() == 0:
            h = None
            break
        active, passes, h = active[keep], passes[keep], h[keep]
        time_emb = time_emb[keep]
        skips = [s[keep] for s in skips]
    if h is not None:
        rows.append(active)
        outs.append(net.output_head(h))
    out = torch.cat(outs)
    sample = torch.empty_like(out)
    sample[torch.cat(rows)] = out
    return sample, exit_block, (exit_block + 1).clamp(max=net.num_blocks - 1)


def test_threshold_rule_is_unchanged_bit_for_bit():
    net = tiny(num_classes=11, sharp=True)
    torch.manual_seed(3)
    x, t, y = torch.randn(16, 3, 8, 8), torch.rand(16) * 999, torch.randint(0, 11, (16,))
    spread = 0
    with torch.no_grad():
        certainties = net.forward_all_exits(x, t, y).certainties.mean(dim=(2, 3, 4)).flatten().sort().values
        for tau in [0.0, 0.999] + (certainties[::4] - 1e-6).clamp(0, 0.99).tolist():
            ref, ref_exit, ref_uem = _old_threshold_loop(net, x, t, y, tau)
            for out in (net.forward_early_exit(x, t, y, exit_threshold=tau),
                        net.forward_early_exit(x, t, y, exit_policy=ThresholdExit(tau))):
                assert torch.equal(out.sample, ref) and torch.equal(out.exit_block, ref_exit)
                assert torch.equal(out.uem_evals, ref_uem)
            assert torch.equal(net(x, t, y, exit_threshold=tau), ref)
            spread = max(spread, len(set(ref_exit.tolist())))
    assert spread >= 3  # some threshold mixes exits within the batch


def lazy_head_count(passing, exit_block, in_blocks, patience):
    """Heads a batch of one evaluates (closed form of the lazy patience rule): every block from
    ``patience - 1`` up to the exit block (the last block has no test), plus the heads of the
    in-blocks before ``patience - 1`` once some later in-block up to the exit has passed."""
    num_tests = len(passing)  # blocks 0 .. num_blocks - 2 have a test
    tested = [k for k in range(min(exit_block, num_tests - 1) + 1) if not (k < in_blocks and k < patience - 1)]
    later_in_pass = any(passing[k] for k in range(patience - 1, min(exit_block + 1, in_blocks)))
    return len(tested) + (min(patience - 1, in_blocks) if later_in_pass else 0)


def test_batch_of_one_is_unchanged_bit_for_bit():
    """The batch-of-one path (Python decisions, no compaction) against the previous loop: the
    same samples and exits bit for bit; the in-blocks' heads are evaluated lazily."""
    for net, cond in ((tiny(num_classes=11, sharp=True), torch.randint(0, 11, (8,))),
                      (tiny_t2i(sharp=True), torch.randn(8, 5, 16))):
        torch.manual_seed(4)
        x, t = torch.randn(8, 3, 8, 8), torch.rand(8) * 999
        with torch.no_grad():
            means = net.forward_all_exits(x, t, cond).certainties.mean(dim=(2, 3, 4))  # (N, B)
            certainties = means.flatten().sort().values
            exits, fewer = set(), 0
            for tau in [0.0, 0.999] + (certainties[::5] - 1e-6).clamp(0, 0.99).tolist():
                for i in range(8):
                    one = (x[i:i + 1], t[i:i + 1], cond[i:i + 1])
                    ref, ref_exit, ref_uem = _old_threshold_loop(net, *one, tau)
                    out = net.forward_early_exit(*one, exit_threshold=tau)
                    assert torch.equal(out.sample, ref) and torch.equal(out.exit_block, ref_exit)
                    passing = (means[:-1, i] > tau).tolist()
                    expected = lazy_head_count(passing, ref_exit.item(), net.depth // 2, net.exit_patience(0))
                    assert out.uem_evals.tolist() == [expected] and expected <= ref_uem.item()
                    exits.add(ref_exit.item())
                    fewer += expected < ref_uem.item()
        assert len(exits) >= 3
        assert (fewer > 0) == (net.exit_patience(0) > 1)  # the text model has no patience: no head deferred


def test_the_batch_form_at_one_row_decides_as_the_one_row_form():
    """``one_row=False`` runs a batch of one through the tensor decisions: the same sample and
    exit as the batch-of-one form (which may run fewer heads: the lazy patience)."""
    net = tiny(num_classes=11, sharp=True)
    torch.manual_seed(6)
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 11, (6,))
    with torch.no_grad():
        for tau in (0.3, 0.5, 0.6):
            for i in range(6):
                h, carry = net.embed(x[i:i + 1], t[i:i + 1], y[i:i + 1])
                fast = exit_loop.run(net, h, carry, Call(rule=Threshold(tau)))
                h, carry = net.embed(x[i:i + 1], t[i:i + 1], y[i:i + 1])
                batch = exit_loop.run(net, h, carry, Call(rule=Threshold(tau)), one_row=False)
                assert torch.equal(fast[0], batch[0]) and batch[1].tolist() == [fast[1]]
                assert fast[2] <= batch[2].item()


class GenericThreshold(Rule):
    """The threshold rule as a new rule would be written: decide only (the default decide_one)."""

    def __init__(self, tau):
        self.rule = Threshold(tau)

    def init_state(self, batch, device):
        return self.rule.init_state(batch, device)

    def decide(self, block, patience, certainty, state):
        return self.rule.decide(block, patience, certainty, state)


def test_a_rule_without_its_own_decide_one_runs_at_batch_one():
    net = tiny(num_classes=11, sharp=True)
    torch.manual_seed(5)
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 11, (6,))
    with torch.no_grad():
        for tau in (0.3, 0.5, 0.6):
            batch = net.forward_early_exit(x, t, y, exit_policy=Call(rule=GenericThreshold(tau)))
            for i in range(6):
                one = net.forward_early_exit(x[i:i + 1], t[i:i + 1], y[i:i + 1],
                                             exit_policy=Call(rule=GenericThreshold(tau)))
                ref = net.forward_early_exit(x[i:i + 1], t[i:i + 1], y[i:i + 1], exit_threshold=tau)
                assert torch.equal(one.sample, ref.sample) and torch.equal(one.exit_block, ref.exit_block)
                assert one.exit_block.item() == batch.exit_block[i].item()


def released_exit_reference(net, x, t, tau, cond=None, patience=2):
    """The released rule at batch size 1: shared head + certainty at every block, exit on the
    mean certainty of the batch (= this one sample), patience in the in-blocks."""
    assert x.shape[0] == 1
    out = net.forward_all_exits(x, t, cond)
    half, count = net.depth // 2, 0
    for i in range(net.num_blocks):
        if out.certainties[i].mean() > tau:
            if i < half:
                count += 1
                if count >= patience:
                    return out.preds[i], i
            else:
                return out.preds[i], i
    return out.preds[-1], net.num_blocks - 1


@pytest.mark.parametrize("text", [False, True])
def test_batch_with_mixed_exits_equals_each_sample_alone(text):
    net = tiny_t2i() if text else tiny(num_classes=11)
    sharpen_heads(net)
    torch.manual_seed(1)
    B = 12
    x, t = torch.randn(B, 3, 8, 8), torch.rand(B) * 999
    cond = torch.randn(B, 5, 16) if text else torch.randint(0, 11, (B,))
    with torch.no_grad():
        alone = [net.forward_all_exits(x[i:i + 1], t[i:i + 1], cond[i:i + 1]).certainties.mean(dim=(1, 2, 3, 4))
                 for i in range(B)]
        # Pick the threshold (among the observed certainties) that spreads exits the most.
        candidates = torch.stack(alone).flatten().sort().values[::3]
        tau = max(candidates.tolist(), key=lambda c: len(set(
            net.forward_early_exit(x, t, cond, exit_threshold=c).exit_block.tolist())))
        batch = net.forward_early_exit(x, t, cond, exit_threshold=tau)
        for i in range(B):
            ref, k = released_exit_reference(net, x[i:i + 1], t[i:i + 1], tau, cond[i:i + 1],
                                             patience=1 if text else 2)
            assert batch.exit_block[i].item() == k
            torch.testing.assert_close(batch.sample[i:i + 1], ref, atol=1e-5, rtol=1e-5)
            solo = net(x[i:i + 1], t[i:i + 1], cond[i:i + 1], exit_threshold=tau)
            torch.testing.assert_close(batch.sample[i:i + 1], solo, atol=1e-5, rtol=1e-5)
    assert len(set(batch.exit_block.tolist())) >= 3, batch.exit_block  # the test exercises mixed exits


def test_exit_at_block_k_equals_shared_head_on_block_k():
    net = tiny()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    for k in range(1, net.num_blocks):
        cert = [0.01] * net.num_blocks
        cert[k] = 0.99
        if k < net.depth // 2:
            cert[0] = 0.99  # patience: the second passing in-block is k
        set_head_certainty(net, cert)
        with torch.no_grad():
            o = net.forward_early_exit(x, t, exit_threshold=0.5)
            allx = net.forward_all_exits(x, t)
        assert o.exit_block.tolist() == [k, k]
        torch.testing.assert_close(o.sample, allx.preds[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("passing,image_exit,text_exit", [
    ([1, 1, 1, 1, 1, 1, 1], 1, 0),       # image model waits for the second in-block
    ([1, 0, 1, 0, 0, 0, 0], 2, 0),       # in-block passes need not be consecutive
    ([1, 0, 0, 1, 0, 0, 0], 3, 0),       # one in-block pass, then the mid block exits at once
    ([0, 0, 1, 0, 0, 0, 0], 6, 2),       # a single in-block pass never exits the image model
    ([0, 0, 0, 0, 1, 0, 0], 4, 4),       # out-blocks exit at the first pass
    ([0, 0, 0, 0, 0, 0, 1], 6, 6),       # the last block has no exit test
    ([0, 0, 0, 0, 0, 0, 0], 6, 6),
])
def test_patience_semantics(passing, image_exit, text_exit):
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2) * 999
    for net, cond, expected in ((tiny(depth=6), None, image_exit),
                                (tiny_t2i(depth=6), torch.randn(2, 5, 16), text_exit)):
        set_head_certainty(net, [0.9 if p else 0.1 for p in passing])
        with torch.no_grad():
            o = net.forward_early_exit(x, t, cond, exit_threshold=0.5)
        assert o.exit_block.tolist() == [expected] * 2
        assert o.uem_evals.tolist() == [min(expected + 1, net.num_blocks - 1)] * 2


def test_threshold_is_compared_strictly_and_validated():
    net = set_head_certainty(tiny(), [0.5] * 5)
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        assert net.forward_early_exit(x, t, exit_threshold=0.5).exit_block.item() == net.num_blocks - 1
        assert net.forward_early_exit(x, t, exit_threshold=0.49).exit_block.item() == 1
        for bad in (-0.1, float("nan")):
            with pytest.raises(ValueError, match=r"exit policy 'threshold:(-0.1|nan)': the threshold is out of range"):
                net(x, t, exit_threshold=bad)


# ------------------------------------------------------------------ reuse (libs/exits/reuse.py)
from libs.exits.policy import FULL  # noqa: E402
from libs.exits.recorder import ExitRecorder  # noqa: E402
from libs.exits.sampling_run import SamplingRun  # noqa: E402
from libs.exits.reuse import ComputePlan, DeepCache, PhaseSplit, ReuseCache, ReuseCall  # noqa: E402


def sampling_calls(net, policy, x, y, calls=4, recorder=None):
    """``calls`` network calls of one sampling run through the recorder (a new cache)."""
    rec = recorder or ExitRecorder(net.num_blocks)
    rec.start_run()
    fn = SamplingRun(net, policy, rec)
    with torch.no_grad():
        return [fn(x, torch.full((x.shape[0],), 900.0 - 150 * c), y) for c in range(calls)], rec


def _inputs(B=6):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 3, 8, 8, generator=g), torch.randint(0, 5, (B,), generator=g)


@pytest.mark.parametrize("B", [1, 6])
def test_deepcache_every_call_is_full_depth_bit_for_bit(B):
    """N = 1: every call computes (and caches) every block: the outputs are full depth's."""
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs(B)
    full, _ = sampling_calls(net, FULL, x, y)
    for k in (1, 2):
        got, rec = sampling_calls(net, DeepCache(1, k), x, y)
        assert all(torch.equal(a, b) for a, b in zip(full, got)) and int(rec.reused.sum()) == 0


def test_a_rule_that_never_reuses_equals_the_rules_it_wraps_bit_for_bit():
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs()
    tau = 0.5
    phase = PhaseSplit(0.5, ThresholdExit(tau), DeepCache(1, 1), switch=2, calls=4)
    got, rec = sampling_calls(net, phase, x, y)
    alone_t, rec_t = sampling_calls(net, ThresholdExit(tau), x, y, calls=2)
    full, _ = sampling_calls(net, FULL, x, y)
    assert all(torch.equal(a, b) for a, b in zip(got, alone_t + full[2:]))
    assert torch.equal(rec.counts[:2], rec_t.counts) and int(rec.reused.sum()) == 0
    assert 0 < int(rec.counts[:2, :-1].sum())  # rows did exit early in the threshold phase


def test_deepcache_reuses_the_span_with_fresh_skips():
    """A reusing call equals the network run with the cached tokens standing in for the span."""
    net, (x, y) = tiny(num_classes=5), _inputs()
    got, rec = sampling_calls(net, DeepCache(2, 1), x, y, calls=2)
    t0, t1 = torch.full((6,), 900.0), torch.full((6,), 750.0)
    with torch.no_grad():
        h, carry = net.embed(x, t0, y)
        for i in range(4):
            h = net.run_block(i, h, carry)
        cached = h  # tokens entering the out-block paired with in-block 0 (block 4 of 0..4)
        h, carry = net.embed(x, t1, y)
        h = net.run_block(0, h, carry)
        carry.skips = carry.skips[:1]
        want = net.output_head(net.out_blocks[-1](cached, carry.skips.pop()))
    torch.testing.assert_close(got[1], want, atol=0, rtol=0)
    assert rec.reused[1].tolist() == [0, 6, 6, 6, 0] and rec.reused[0].sum() == 0


class Sequence_(ComputePlan):
    """A plan of any per-call policies (threshold rules and reuse calls mixed), for the tests."""

    def __init__(self, actions):
        super().__init__(1.0, actions, 0.0, 1.0)


def mixed_plan(tau):
    # call 0: threshold (rows that exit before block 3 cache nothing); call 1: reuse, some rows
    # without a cache compute the span; call 2: reuse depth 2 (mid block) with exits before it
    # (compaction) and after; call 3: full
    return Sequence_([Call(rule=Threshold(tau)), ReuseCall(1), ReuseCall(2, Threshold(tau)), Call(),
                      ReuseCall(1, Threshold(tau))])


def test_batch_equals_each_sample_alone_with_reuse_and_exits_mixed():
    net, (x, y) = tiny(num_classes=5, sharp=True), _inputs()
    policy = mixed_plan(0.5)
    got, rec = sampling_calls(net, policy, x, y, calls=5)
    for r in range(6):
        alone, _ = sampling_calls(net, policy, x[r:r + 1], y[r:r + 1], calls=5)
        for c in range(5):
            torch.testing.assert_close(got[c][r:r + 1], alone[c], atol=1e-6, rtol=1e-6)
    reused = rec.reused
    assert 0 < int(reused[1, 1]) < 6  # call 1: some rows reused, the others computed the span
    assert 0 < int(rec.counts[2, :2].sum()) and int(reused[2, 2]) > 0  # call 2: exits before the span, then reuse


def test_reuse_after_compaction_takes_each_rows_own_cache():
    """Rows exit before the span (compaction) and the rest reuse: each gets its own row of the
    cache, as the loop's index of active rows says."""
    net, (x, y) = tiny(num_classes=5), _inputs()
    set_head_certainty(net, [0.9, 0.9, 0.1, 0.1, 0.1])  # threshold 0.5: rows exit after block 1 (patience 2)
    plan = Sequence_([Call(), ReuseCall(2, Threshold(0.5))])
    t = torch.full((6,), 800.0)
    cache = ReuseCache(plan.cache_spans(5))
    with torch.no_grad():
        net.forward_early_exit(x, t, y, exit_policy=FULL, reuse_cache=cache)
        stored = cache.fetch((2, 3), None)[0].clone()
        # the rows of a batch whose rows differ; scripted certainty: rows 1, 4 exit after block 1
        rows = torch.tensor([False, True, False, False, True, False])
        policy = ScriptedExit([1 if r else 4 for r in rows.tolist()], heads=False)  # any rule may join a reuse
        out = net.forward_early_exit(x, t, y, exit_policy=ReuseCall(2, policy), reuse_cache=cache)
        assert out.exit_block.tolist() == [4, 1, 4, 4, 1, 4] and out.reused.tolist() == (~rows).tolist()
        for r in (~rows).nonzero().flatten().tolist():  # the reuse took row r's own value
            h, carry = net.embed(x[r:r + 1], t[r:r + 1], y[r:r + 1])
            h = net.run_block(1, net.run_block(0, h, carry), carry)
            h = net.run_block(4, net.run_block(3, stored[r:r + 1], carry), carry)
            torch.testing.assert_close(out.sample[r:r + 1], net.output_head(h), atol=1e-6, rtol=1e-6)


def test_the_cache_never_leaks_across_runs_or_batches():
    """A new run (wrap) starts with an empty cache: its reuse calls compute what a fresh run
    computes, whatever the run before; a cache refuses another batch's rows."""
    net, (x, y) = tiny(num_classes=5), _inputs()
    plan = Sequence_([ReuseCall(1), Call(), ReuseCall(1)])
    fresh, _ = sampling_calls(net, plan, x, y, calls=3)
    full, _ = sampling_calls(net, FULL, x, y, calls=1)
    assert torch.equal(fresh[0], full[0])  # nothing cached yet: the first reuse call computed the span
    rec = ExitRecorder(net.num_blocks)
    sampling_calls(net, plan, torch.randn(6, 3, 8, 8), y, calls=3, recorder=rec)  # another batch, same recorder
    again, rec = sampling_calls(net, plan, x, y, calls=3, recorder=rec)
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))
    cache = ReuseCache([(1, 4)])
    with torch.no_grad():
        net.forward_early_exit(x, torch.full((6,), 500.0), y, exit_policy=FULL, reuse_cache=cache)
        with pytest.raises(ValueError, match="one sampling run of one batch"):
            net.forward_early_exit(x[:3], torch.full((3,), 500.0), y[:3], exit_policy=ReuseCall(1), reuse_cache=cache)
    for forward in (net.forward_early_exit, net):
        with pytest.raises(ValueError, match="with reuse_cache="):
            forward(x, torch.full((6,), 500.0), y, exit_policy=ReuseCall(1))


def test_uvit_refuses_spans_that_break_the_long_skips():
    net, (x, y) = tiny(num_classes=5), _inputs()
    assert net.reuse_problem((1, 4)) is None and net.reuse_problem((2, 3)) is None
    assert "long skips" in net.reuse_problem((1, 3))
    with torch.no_grad(), pytest.raises(ValueError, match="long skips"):
        net.forward_early_exit(x, torch.full((6,), 500.0), y, exit_policy=FULL, reuse_cache=ReuseCache([(0, 2)]))

