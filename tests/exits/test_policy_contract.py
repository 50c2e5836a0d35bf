"""The contract every exit rule keeps (libs/exits/policy.py), run on each rule as
tests/models/test_backbone_contract.py runs the backbone contract on a second backbone:
``decide_one`` decides as ``decide``; a static exit, where the rule has one, is the truncated
forward and runs no head; the argument range is checked in one place and refused in one line;
the spelling reads back, ``parse_policy(str(p)) == p``; a sampling run through the recorder gives
each row what it gets alone, reuse and exits included. A new rule adds one subclass here."""
import math

import pytest
import torch

from libs.evaluation.calibration import calibrate
from libs.exits.call import Call, Threshold, float32
from libs.exits.policy import (FULL, BudgetExit, ExitPolicy, ExitPolicyError, FullDepth, ProfileExit, StaticExit,
                              ThresholdExit, parse_policy)
from libs.exits.recorder import ExitRecorder
from libs.exits.forecast import Forecast
from libs.exits.gated import GatedReuse
from libs.exits.sampling_run import SamplingRun
from libs.exits.reuse import ComputePlan, DeepCache, PhaseSplit
from libs.exits.search import PlanSearch
from tests.helpers.tiny_uvit import tiny

NUM_BLOCKS = 7  # blocks 0..6; the last has no exit test


def _float32_neighbours(tau):
    """float32(tau) and the float32 numbers just below and above it, as Python floats."""
    t = torch.tensor(tau, dtype=torch.float32)
    return [t.item(), torch.nextafter(t, torch.tensor(0.0)).item(), torch.nextafter(t, torch.tensor(1.0)).item()]


class PolicyContract:
    """Subclasses set the rule's class and say how to make a runnable policy of it."""

    rule = ExitPolicy
    good = ()  # arguments the rule takes (each also a spelling that must read back)
    bad = ()  # arguments it refuses
    needs_heads = False  # check(has_heads=False) refuses the runnable policy

    def make(self) -> ExitPolicy:
        """A runnable policy (calibrated, where the rule needs calibration)."""
        raise NotImplementedError

    def build(self, value) -> ExitPolicy:
        """The rule from one of ``good`` / ``bad`` (rules of several arguments take a tuple)."""
        return self.rule(*value) if isinstance(value, tuple) else self.rule(value)

    def certainties(self):
        """Mean certainties the decision tests draw from: near the rule's threshold, if any."""
        tau = getattr(self.make().for_call(0).rule, "tau", math.nan)
        near = _float32_neighbours(tau) if 0 <= tau < 1 else []
        return near + [0.0, 0.1, 0.5, 0.9, 0.999]

    # ------------------------------------------------------------------ the decision
    @pytest.mark.parametrize("patience", [1, 2, 3])
    def test_decide_one_decides_as_decide(self, patience):
        """Every row of a batch exits after the same block under ``decide`` (tensors) as alone
        under ``decide_one`` (Python values), over random certainty sequences."""
        policy = self.make().for_call(0).rule
        if policy is None:
            return  # the call decides nothing per sample
        values = self.certainties()
        gen = torch.Generator().manual_seed(patience)
        B, in_blocks = 64, 3  # blocks 0..2 have the patience, the others 1
        table = torch.tensor(values, dtype=torch.float32)[torch.randint(len(values), (NUM_BLOCKS, B), generator=gen)]
        first = [NUM_BLOCKS - 1] * B
        state = policy.init_state(B, "cpu")
        for block in range(NUM_BLOCKS - 1):
            exits, state = policy.decide(block, patience if block < in_blocks else 1, lambda: table[block], state)
            if exits is not None:
                assert exits.dtype == torch.bool and exits.shape == (B,)
                for r in exits.nonzero().flatten().tolist():
                    first[r] = min(first[r], block)
        for r in range(B):
            state, exit_block = None, NUM_BLOCKS - 1
            for block in range(NUM_BLOCKS - 1):
                def certainty(j=None, block=block):
                    assert j is None or j <= block
                    return table[block if j is None else j, r].item()
                exits, state = policy.decide_one(block, patience if block < in_blocks else 1, certainty, state)
                if exits:
                    exit_block = block
                    break
            assert exit_block == first[r], (r, table[:, r].tolist())

    # ------------------------------------------------------------------ the static exit
    def test_static_exit_is_the_truncated_forward_and_runs_no_head(self):
        policy = self.make().for_call(0)
        net = tiny(num_classes=5, sharp=True)
        k = policy.static_exit(net.num_blocks)
        assert (k is None) == policy.uses_heads  # a rule decided per sample has no static exit
        if k is None:
            return
        assert 0 <= k < net.num_blocks
        x, t, y = torch.randn(4, 3, 8, 8), torch.rand(4) * 999, torch.randint(0, 5, (4,))
        calls = []
        hooks = [h.register_forward_hook(lambda *a: calls.append(1)) for h in net.uem_heads]
        with torch.no_grad():
            out = net.forward_early_exit(x, t, y, exit_policy=policy)
            one = net.forward_early_exit(x[:1], t[:1], y[:1], exit_policy=policy)
            plain = net(x, t, y, exit_policy=policy)
        for h in hooks:
            h.remove()
        assert calls == []  # no uncertainty head ran
        assert out.exit_block.tolist() == [k] * 4 and out.uem_evals.tolist() == [0] * 4 and one.one_row == (k, 0)
        assert torch.equal(plain, out.sample)
        torch.testing.assert_close(one.sample, out.sample[:1], atol=1e-6, rtol=1e-6)  # batch 1: other kernels
        with torch.no_grad():
            torch.testing.assert_close(out.sample, net.forward_all_exits(x, t, y).preds[k], atol=1e-6, rtol=1e-6)

    # ------------------------------------------------------------------ validation
    def test_arguments_are_checked_in_one_place(self):
        for v in self.good:
            assert self.rule.argument_problem(v) is None, v
            self.build(v)
        for v in self.bad:
            problem = self.rule.argument_problem(v)
            assert problem is not None and "\n" not in problem, v
            with pytest.raises(ExitPolicyError) as e:
                self.build(v)
            assert str(e.value).startswith(f"exit policy '{self.rule.family}:") and str(e.value).endswith(problem)

    def test_check_against_the_network(self):
        policy = self.make()
        policy.check(NUM_BLOCKS)
        if self.needs_heads:
            with pytest.raises(ExitPolicyError, match="needs trained uncertainty heads"):
                policy.check(NUM_BLOCKS, has_heads=False)
        else:
            policy.check(NUM_BLOCKS, has_heads=False)

    # ------------------------------------------------------------------ spelling
    def test_spelling_round_trip(self):
        policies = [self.make()] + [self.build(v) for v in self.good]
        for p in policies:
            assert str(p) == p.spec and ":" not in p.slug and parse_policy(str(p)) == p, p
            assert p.family == self.rule.family or p is FULL
            assert parse_policy(p.spec.upper()) == p  # families are case-insensitive

    # ------------------------------------------------------------------ a sampling run
    def test_a_run_gives_each_row_what_it_gets_alone(self):
        """Three calls through the recorder (a new reuse cache per run): every row of a batch of
        4 gets, at every call, what it gets in a run of its own, and the accounting agrees."""
        net, policy = tiny(num_classes=5, sharp=True), self.make()
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))

        def run(rows):
            rec = ExitRecorder(net.num_blocks)
            rec.start_run()
            fn = SamplingRun(net, policy, rec)
            with torch.no_grad():
                return [fn(x[rows], torch.full((len(rows),), 800.0 - 300 * c), y[rows]) for c in range(3)], rec

        batch, rec = run([0, 1, 2, 3])
        alone = [run([r]) for r in range(4)]
        for c in range(3):
            for r in range(4):
                torch.testing.assert_close(batch[c][r], alone[r][0][c][0], atol=1e-6, rtol=1e-6)
        assert torch.equal(rec.counts, sum(a[1].counts for a in alone))
        assert torch.equal(rec.reused, sum(a[1].reused for a in alone))
        assert (rec.reused.sum() > 0) == policy.reuses


class TestThreshold(PolicyContract):
    rule = ThresholdExit
    good = (0.0, 0.5, 0.9, 0.9000001, 0.9999999, math.nextafter(1.0, 0.0), 1e-7)
    bad = (-0.1, 1.0, 1.5, math.nan, math.inf)
    needs_heads = True

    def make(self):
        return ThresholdExit(0.6)


class TestStatic(PolicyContract):
    rule = StaticExit
    good = (0, 1, 3, 6)
    bad = (-1, 2.5, math.inf, math.nan)

    def make(self):
        return StaticExit(3)


class TestProfile(PolicyContract):
    rule = ProfileExit
    good = (0.0, 0.5, 0.9000001)
    bad = (-0.1, 1.0, math.nan)

    def make(self):
        return ProfileExit(0.6, blocks=[2, 4, 1])  # calibrated: a static exit per call

    def test_uncalibrated_profile_needs_heads_and_calibration(self):
        with pytest.raises(ExitPolicyError, match="needs trained uncertainty heads"):
            ProfileExit(0.6).check(NUM_BLOCKS, has_heads=False)
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            ProfileExit(0.6).for_call(0)
        assert [self.make().for_call(c) for c in range(3)] == [Call(last=2), Call(last=4), Call(last=1)]


class TestBudget(PolicyContract):
    rule = BudgetExit
    good = (0.05, 0.5, 0.7000001, 0.9999999)
    bad = (0.0, -0.5, 1.5, math.nan)
    needs_heads = True

    def make(self):
        return BudgetExit(0.6, tau=0.55, achieved=0.6)  # calibrated: runs as threshold:0.55

    def test_runs_as_its_calibrated_threshold(self):
        policy = self.make()
        assert policy.for_call(0) == ThresholdExit(0.55).for_call(0) == Call(rule=Threshold(0.55))
        assert BudgetExit(0.6, tau=1.0, achieved=1.0).for_call(0) == Call()  # threshold 1: full depth
        assert float32(policy.effective_threshold()) == float32(0.55)


class TestFull(PolicyContract):
    rule = FullDepth

    def make(self):
        return FULL

    def test_every_full_depth_spelling_is_full(self):
        for text in ("full", "none", "inf", "1", "threshold:1", "budget:1"):
            assert parse_policy(text) is FULL
        assert FULL.for_call(0).static_exit(NUM_BLOCKS) == NUM_BLOCKS - 1 and FULL.effective_threshold() == 1.0


class TestDeepCache(PolicyContract):
    rule = DeepCache
    good = ((1, 1), (2, 1), (3, 2), (2, 3))
    bad = ((0, 1), (2, 0), (2.5, 1), (2, math.nan))

    def make(self):
        return DeepCache(2, 1)

    def test_reuses_between_full_calls(self):
        p = DeepCache(3, 2)
        assert [c.spec for c in map(p.for_call, range(5))] == ["full", "reuse:2", "reuse:2", "full", "reuse:2"]
        assert p.cache_spans(7) == ((2, 5),) and p.for_call(1).reuse_span(7) == (2, 5)
        with pytest.raises(ExitPolicyError, match="choose k <= 3"):
            DeepCache(2, 4).check(NUM_BLOCKS)


class TestPhase(PolicyContract):
    rule = PhaseSplit
    good = ((0.4, ThresholdExit(0.9), DeepCache(2, 1)), (0.0, FULL, StaticExit(3)), (1.0, DeepCache(2, 1), FULL))
    bad = ((1.5, FULL, FULL), (-0.1, FULL, FULL), (0.5, ProfileExit(0.5), FULL), (0.5, FULL, BudgetExit(0.5)))
    needs_heads = True

    def make(self):
        return PhaseSplit(0.4, ThresholdExit(0.6), DeepCache(2, 1), switch=1, calls=3)

    def test_switches_after_the_calibrated_calls(self):
        p = PhaseSplit(0.4, ThresholdExit(0.6), DeepCache(2, 1))
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            p.for_call(0)
        cal = calibrate(p, lambda rule: {"exit_block_per_step": [0.0] * 15})
        assert (cal.switch, cal.calls) == (6, 15) and cal == p  # round(0.4 x 15): the first 6 calls
        assert [c.spec for c in map(cal.for_call, (0, 5, 6, 7, 8))] == ["threshold:0.6"] * 2 + ["full", "reuse:1",
                                                                                              "full"]
        with pytest.raises(ExitPolicyError, match="calibrated for 15 network calls"):
            cal.for_call(15)


class TestPlan(PolicyContract):
    rule = ComputePlan
    good = (0.05, 0.5, 1.0)
    bad = (0.0, -0.5, 1.5, math.nan)

    def make(self):
        return ComputePlan(0.6, ["full", "reuse:1", "static:3"], proxy=0.1, achieved=0.6)

    def test_runs_its_actions(self):
        p = self.make()
        assert [c.spec for c in map(p.for_call, range(3))] == ["full", "reuse:1", "static:3"]
        assert p.cache_spans(7) == ((1, 6),) and "per call: full reuse:1 static:3" in p.calibration()
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            ComputePlan(0.6).for_call(0)


class TestForecast(PolicyContract):
    rule = Forecast
    good = ((1, 1, 0), (2, 1, 1), (3, 2, 2))
    bad = ((0, 1, 1), (2, 0, 1), (2, 1, 3), (2, 1, 0.5), (2, 1, -1))

    def make(self):
        return Forecast(2, 1, 2)


class TestGated(PolicyContract):
    rule = GatedReuse
    good = ((0.5, DeepCache(2, 1)), (0.0, Forecast(2, 1, 1)), (1.0, Forecast(3, 2, 2)))
    bad = ((1.5, DeepCache(2, 1)), (-0.1, DeepCache(2, 1)), (math.nan, DeepCache(2, 1)), (0.5, ThresholdExit(0.9)),
           (0.5, GatedReuse(0.5, DeepCache(2, 1))))
    needs_heads = True

    def make(self):
        return GatedReuse(0.5, Forecast(2, 1, 1))


class TestSearch(PolicyContract):
    rule = PlanSearch
    good = (0.05, 0.5, 1.0)
    bad = (0.0, -0.5, 1.5, math.nan)
    needs_heads = True

    def make(self):
        plan = PhaseSplit(0.4, ThresholdExit(0.6), GatedReuse(0.5, Forecast(2, 1, 1)), switch=1, calls=3)
        return PlanSearch(0.5, plan, proxy=0.1, achieved=0.45, calls=3, tried=1)

    def test_runs_the_plan_it_found(self):
        p = self.make()
        assert [c.spec for c in map(p.for_call, range(3))] == ["threshold:0.6", "full", "reuse:1+gate:0.5"]
        assert p.calibration().endswith("per call: threshold:0.6 full reuse:1+gate:0.5") and p.forecast_order == 1
        with pytest.raises(ExitPolicyError, match="not calibrated"):
            PlanSearch(0.5).for_call(0)
