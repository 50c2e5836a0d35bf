"""Exit policies: parsing, the network's static / per-step exits, calibration of profile: and
budget:, and the threshold rule unchanged bit for bit."""
import math

import pytest
import torch

from libs import uvit, uvit_t2i
from libs.evaluation.engine import sweep_policies
from libs.exits.policy import (FULL, BudgetExit, ExitPolicy, ExitPolicyError, ProfileExit, StaticExit, ThresholdExit,
                              parse_policies, parse_thresholds_only)
from libs.exits.recorder import ExitRecorder

TINY = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2, qkv_bias=False)


def _sharp(net):
    """Random heads give ~0.5 everywhere; scale them so samples differ."""
    with torch.no_grad():
        for h in net.uem_heads:
            h.proj.weight.mul_(40.0)
            h.proj.bias.normal_(0, 0.5)
    return net


def tiny(num_classes=-1, sharp=True, **kw):
    torch.manual_seed(0)
    net = uvit.UViT(**{**TINY, "num_classes": num_classes, **kw}).eval()
    return _sharp(net) if sharp else net


# ------------------------------------------------------------------ parsing
def test_parse_spellings():
    assert [p.spec for p in parse_policies("0.9")] == ["threshold:0.9"]
    assert parse_policies(0.92) == [ThresholdExit(0.92)]
    got = parse_policies("threshold:0.8, 0.8 ,static:3,profile:0.85,budget:0.7,full,none,1.0,threshold:1")
    assert [p.spec for p in got] == ["threshold:0.8", "static:3", "profile:0.85", "budget:0.7", "full"]
    assert [p.family for p in got] == ["threshold", "static", "profile", "budget", "full"]
    assert parse_policies("budget:1") == [FULL]
    assert parse_policies("STATIC:2") == [StaticExit(2)]
    # the sweep always starts with the full-depth baseline
    assert [p.spec for p in sweep_policies("static:1,0.9")] == ["full", "static:1", "threshold:0.9"]
    assert [p.spec for p in sweep_policies("none")] == ["full"]


@pytest.mark.parametrize("bad, words", [
    ("1.5", ["1.5", "out of range"]), ("-0.1", ["-0.1", "out of range"]), ("abc", ["'abc'", "not a number"]),
    ("", ["no exit policy"]), ("static:-1", ["static:-1", "integer"]), ("static:2.5", ["static:2.5", "integer"]),
    ("budget:0", ["budget:0", "(0, 1]"]), ("budget:1.2", ["budget:1.2"]), ("profile:1", ["profile:1", "[0, 1)"]),
    ("cosine:0.3", ["cosine:0.3", "unknown exit policy"]), ("threshold:x", ["threshold:x", "not a number"]),
    ("0.9,static:oops", ["static:oops"]), ("nan", ["NaN"]),
])
def test_parse_errors_name_the_bad_item(bad, words):
    with pytest.raises(ExitPolicyError) as e:
        parse_policies(bad)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_exit_threshold_flag_takes_thresholds_only():
    assert [p.spec for p in parse_thresholds_only("0.8,0.9,none")] == ["threshold:0.8", "threshold:0.9", "full"]
    with pytest.raises(ExitPolicyError, match="--exit_policy"):
        parse_thresholds_only("static:3")


def test_check_against_the_network():
    with pytest.raises(ExitPolicyError, match=r"5 blocks \(0..4\)"):
        StaticExit(5).check(5)
    StaticExit(4).check(5)
    for p in (ThresholdExit(0.9), BudgetExit(0.5), ProfileExit(0.9)):
        with pytest.raises(ExitPolicyError, match="uncertainty heads"):
            p.check(5, has_heads=False)
    StaticExit(2).check(5, has_heads=False)
    for p in (ProfileExit(0.9), BudgetExit(0.5)):
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            p.for_call(0)


# ------------------------------------------------------------------ the network under each rule
def test_static_exit_equals_shared_head_on_block_k_and_runs_no_head():
    net = tiny(num_classes=5)
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 5, (6,))
    with torch.no_grad():
        preds = net.forward_all_exits(x, t, y).preds
        calls = []
        hooks = [h.register_forward_hook(lambda *a: calls.append(1)) for h in net.uem_heads]
        for k in range(net.num_blocks):
            out = net.forward_early_exit(x, t, y, exit_policy=StaticExit(k))
            torch.testing.assert_close(out.sample, preds[k], atol=1e-6, rtol=1e-6)
            assert out.exit_block.tolist() == [k] * 6 and out.uem_evals.tolist() == [0] * 6
            assert torch.equal(net(x, t, y, exit_policy=StaticExit(k)), out.sample)
        for h in hooks:
            h.remove()
    assert calls == []  # no uncertainty head ran
    with torch.no_grad():
        assert torch.equal(net(x, t, y, exit_policy=StaticExit(net.num_blocks - 1)), net(x, t, y))


def _old_threshold_loop(net, x, timesteps, cond, tau):
    """The threshold loop exactly as it was before exit policies (regression oracle)."""
    B = x.shape[0]
    h, time_emb = net._embed(x, timesteps, cond)
    active = torch.arange(B)
    passes = torch.zeros(B, dtype=torch.long)
    exit_block = torch.full((B,), net.num_blocks - 1, dtype=torch.long)
    rows, outs, skips = [], [], []
    half = net.depth // 2
    for i in range(net.num_blocks):
        h = net._run_block(i, h, skips)
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
    net = tiny(num_classes=11)
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


def _lazy_head_count(passing, exit_block, in_blocks, patience):
    """Heads a batch of one evaluates (closed form of the lazy patience rule): every block from
    ``patience - 1`` up to the exit block (the last block has no test), plus the heads of the
    in-blocks before ``patience - 1`` once some later in-block up to the exit has passed."""
    num_tests = len(passing)  # blocks 0 .. num_blocks - 2 have a test
    tested = [k for k in range(min(exit_block, num_tests - 1) + 1) if not (k < in_blocks and k < patience - 1)]
    later_in_pass = any(passing[k] for k in range(patience - 1, min(exit_block + 1, in_blocks)))
    return len(tested) + (min(patience - 1, in_blocks) if later_in_pass else 0)


def test_batch_of_one_is_unchanged_bit_for_bit():
    """The batch-of-one fast path (Python decisions, no compaction) against the previous loop:
    the same samples and exits bit for bit; the in-blocks' heads are evaluated lazily."""
    for net, cond in ((tiny(num_classes=11), torch.randint(0, 11, (8,))),
                      (_sharp(tiny_t2i()), torch.randn(8, 5, 16))):
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
                    expected = _lazy_head_count(passing, ref_exit.item(), net.depth // 2, net.exit_patience(0))
                    assert out.uem_evals.tolist() == [expected] and expected <= ref_uem.item()
                    exits.add(ref_exit.item())
                    fewer += expected < ref_uem.item()
        assert len(exits) >= 3
        assert (fewer > 0) == (net.exit_patience(0) > 1)  # the text model has no patience: no head deferred


@pytest.mark.parametrize("patience", [2, 3])
def test_lazy_patience_exits_as_eager(patience):
    """Every pass pattern over 7 tests (3 patience in-blocks): the lazy one-row rule exits
    after the same block as the eager batch rule, with the closed-form count of heads."""
    rule, in_blocks = ThresholdExit(0.5), 3
    for bits in range(2 ** 7):
        passing = [bool(bits >> k & 1) for k in range(7)]
        state, eager_exit, eager_heads = rule.init_state(1, "cpu"), 7, 0
        for k in range(7):
            eager_heads += 1
            exits, state = rule.decide(k, patience if k < in_blocks else 1,
                                       lambda: torch.tensor([0.9 if passing[k] else 0.1]), state)
            if exits is not None and bool(exits[0]):
                eager_exit = k
                break
        asked = []

        def certainty(block=None):
            asked.append(k if block is None else block)
            assert asked[-1] <= k and (block is None or block < in_blocks)
            return 0.9 if passing[asked[-1]] else 0.1

        state, lazy_exit = None, 7
        for k in range(7):
            exits, state = rule.decide_one(k, patience if k < in_blocks else 1, certainty, state)
            if exits:
                lazy_exit = k
                break
        assert lazy_exit == eager_exit, passing
        assert len(asked) == len(set(asked)), "a head evaluated twice"
        assert len(asked) == _lazy_head_count(passing, lazy_exit, in_blocks, patience) <= eager_heads


def test_mean_certainty_is_the_certainty_maps_mean_bitwise():
    nets = ((tiny(num_classes=11), "label"), (tiny(uem_time_aware=True), None), (_sharp(tiny_t2i()), "text"))
    for net, kind in nets:
        for b in (1, 5):
            x, t = torch.randn(b, 3, 8, 8), torch.rand(b) * 999
            cond = {"label": torch.randint(0, 11, (b,)), "text": torch.randn(b, 5, 16), None: None}[kind]
            with torch.no_grad():
                h, temb = net._embed(x, t, cond)
                for i, head in enumerate(net.uem_heads):
                    h = net._run_block(i, h, []) if i < net.depth // 2 else h
                    ref = net.certainty(i, h, temb).mean(dim=(1, 2), dtype=torch.float32)
                    assert torch.equal(head.mean_certainty(h, net.num_extras, temb), ref)
                    if b == 1:
                        assert head.mean_certainty_one(h, net.num_extras, temb) == ref.item()


@pytest.mark.parametrize("tau", [0.85, 0.9, 0.3, 0.0])
def test_decide_one_decides_as_decide(tau):
    """Python decisions compare as the float32 tensors do (float32(0.85) > 0.85)."""
    t32 = torch.tensor(tau, dtype=torch.float32)
    values = [t32, torch.nextafter(t32, torch.tensor(0.0)), torch.nextafter(t32, torch.tensor(1.0))]
    for rule in (ThresholdExit(tau), _Generic(tau)):
        for c in values:
            for block, patience in ((0, 2), (1, 2), (2, 2), (3, 1)):
                for prior in (0, 1):
                    state = torch.tensor([prior])
                    exits, new = rule.decide(block, patience, lambda: c.reshape(1), state)
                    if isinstance(rule, ThresholdExit):  # lazy state: (passes, blocks not evaluated yet)
                        exits_one, _ = rule.decide_one(block, patience, lambda: c.item(), (prior, ()))
                        if exits is None:  # a deferred head: no exit here either
                            assert not exits_one
                            continue
                    else:
                        exits_one, new_one = rule.decide_one(block, patience, lambda: c.item(), state.clone())
                        assert int(new) == int(new_one)
                    assert (None if exits is None else bool(exits[0])) == exits_one, (c.item(), block, prior)


class _Generic(ExitPolicy):
    """The threshold rule as a new rule would be written: decide only (the default decide_one)."""

    family = "generic"

    def __init__(self, tau):
        self.rule = ThresholdExit(tau)

    @property
    def spec(self):
        return f"generic:{self.rule.tau}"

    def static_exit(self, num_blocks):
        return None

    def init_state(self, batch, device):
        return self.rule.init_state(batch, device)

    def decide(self, block, patience, certainty, state):
        return self.rule.decide(block, patience, certainty, state)


def test_a_rule_without_its_own_decide_one_runs_at_batch_one():
    net = tiny(num_classes=11)
    torch.manual_seed(5)
    x, t, y = torch.randn(6, 3, 8, 8), torch.rand(6) * 999, torch.randint(0, 11, (6,))
    with torch.no_grad():
        for tau in (0.3, 0.5, 0.6):
            batch = net.forward_early_exit(x, t, y, exit_policy=_Generic(tau))
            for i in range(6):
                one = net.forward_early_exit(x[i:i + 1], t[i:i + 1], y[i:i + 1], exit_policy=_Generic(tau))
                ref = net.forward_early_exit(x[i:i + 1], t[i:i + 1], y[i:i + 1], exit_threshold=tau)
                assert torch.equal(one.sample, ref.sample) and torch.equal(one.exit_block, ref.exit_block)
                assert one.exit_block.item() == batch.exit_block[i].item()


def tiny_t2i():
    torch.manual_seed(0)
    return uvit_t2i.UViT(**TINY, clip_dim=16, num_clip_token=5).eval()


def test_profile_applies_each_steps_static_exit():
    net = tiny(num_classes=5)
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


# ------------------------------------------------------------------ calibration (pure, with a fake sampler)
def _fake_run(ratio_of_tau, per_step=None):
    calls = []

    def run(rule):
        calls.append(rule)
        return {"layer_ratio": ratio_of_tau(rule.tau), "exit_block_per_step": per_step or []}

    return run, calls


def test_budget_bisection_converges_and_reports_the_threshold():
    run, calls = _fake_run(lambda tau: 2 / 7 + (5 / 7) * tau ** 3)  # monotone, floor 2/7
    b = BudgetExit(0.6).calibrate(run)
    assert abs(b.achieved - 0.6) <= 0.01 and b.achieved == pytest.approx(2 / 7 + 5 / 7 * b.tau ** 3)
    assert b.spec == "budget:0.6" and b.family == "budget" and "threshold 0." in b.calibration()
    assert b.effective_threshold() == b.tau and b.for_call(7) is b
    assert len(calls) <= 12


def test_budget_below_the_reachable_range_is_a_clear_error():
    run, _ = _fake_run(lambda tau: 2 / 7 + (5 / 7) * tau)
    with pytest.raises(ExitPolicyError, match=r"budget:0.1 cannot be reached.*\[0.286, 1\].*R >= 0.29"):
        BudgetExit(0.1).calibrate(run)


def test_profile_calibration_rounds_the_mean_exit_block_per_step():
    run, calls = _fake_run(lambda tau: 0.5, per_step=[1.0, 1.49, 1.5, 5.7, 6.0])
    p = ProfileExit(0.85).calibrate(run)
    assert p.blocks == (1, 1, 2, 6, 6) and calls == [ThresholdExit(0.85)]


# ------------------------------------------------------------------ calibration on a trained model
def test_budget_and_profile_on_a_trained_model(trained_digits):
    """A small trained digits model: budget: meets its target on the calibration set and
    profile: reproduces threshold:T's per-step exits."""
    from libs.evaluation.engine import calibrate_policy
    from libs.tasks.pixel import PixelTask

    net, config = trained_digits
    config.sample.update(sample_steps=8, calib_samples=16, mini_batch_size=16)
    task = PixelTask(config, load_data=False)
    budget = calibrate_policy(BudgetExit(0.7), net, task, config, "cpu")
    assert abs(budget.achieved - 0.7) <= 0.01, budget.calibration()
    profile = calibrate_policy(ProfileExit(0.5), net, task, config, "cpu")
    assert len(profile.blocks) == 8 and all(0 <= b < net.num_blocks for b in profile.blocks)
    with pytest.raises(ExitPolicyError, match="cannot be reached"):
        calibrate_policy(BudgetExit(0.05), net, task, config, "cpu")
    assert not math.isnan(budget.tau)
