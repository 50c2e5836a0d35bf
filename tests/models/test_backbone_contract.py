"""The backbone contract (libs/models/backbone.py) on a second, toy backbone with no long skips: it
trains a step with the AdaDiff objective, samples with early exit through the evaluation
engine's path, and its FLOPs match PyTorch's counter. A new backbone is this one file's worth."""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from libs.models import flops as fl
from libs.models.backbone import ExitBackbone
from libs.exits.policy import StaticExit, ThresholdExit
from libs.exits.recorder import ExitRecorder
from libs.exits.sampling_run import SamplingRun
from libs.diffusion.wrappers import conditional_model_fn, with_time_scale
from libs.diffusion.schedules import LinearVPSchedule
from libs.training.engine import TrainForward
from libs.diffusion.dpm_solver import dpm_solver_sample
from libs.diffusion.noise import ContinuousNoise
from libs.training.objectives import training_losses


class ToyMLPBackbone(ExitBackbone):
    """Per-pixel MLP blocks on (B, H*W, D) tokens, time added to the input; no skips, no carry
    beyond the time embedding; one linear uncertainty head per block."""

    def __init__(self, channels=1, size=4, dim=16, depth=3):
        super().__init__()
        self.channels, self.size, self.dim, self.num_blocks = channels, size, dim, depth
        self.inp = nn.Linear(channels, dim)
        self.time = nn.Linear(1, dim)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)])
        self.out = nn.Linear(dim, channels)
        self.heads = nn.ModuleList([nn.Linear(dim, channels) for _ in range(depth)])

    def embed(self, x, timesteps, cond):
        t = timesteps.float().reshape(-1, 1, 1).expand(x.shape[0], 1, 1) / 1000
        h = self.inp(x.flatten(2).transpose(1, 2)) + self.time(t)  # (B, HW, D)
        return h, None

    def run_block(self, i, h, carry):
        return h + self.blocks[i](h)

    def select_rows(self, carry, rows):
        return carry

    def output_head(self, h):
        return self.out(h).transpose(1, 2).reshape(h.shape[0], self.channels, self.size, self.size)

    def certainty_map(self, i, h, carry):
        c = torch.sigmoid(self.heads[i](h.detach()).float())
        return c.transpose(1, 2).reshape(h.shape[0], self.channels, self.size, self.size)

    def mean_certainty(self, i, h, carry):
        return torch.sigmoid(self.heads[i](h.detach()).float()).mean(dim=(1, 2))

    def flops(self):
        T, D, C = self.size * self.size, self.dim, self.channels
        return fl.NetworkFlops(embed=fl.linear(T, C, D) + fl.linear(1, 1, D), blocks=(fl.linear(T, D, D),) * self.num_blocks,
                               uem_head=fl.linear(T, D, C), output_head=fl.linear(T, D, C))


def toy(sharp=True):
    torch.manual_seed(0)
    net = ToyMLPBackbone()
    if sharp:
        with torch.no_grad():
            for h in net.heads:
                h.weight.mul_(3)
    return net


def test_toy_backbone_trains_one_step_with_the_adadiff_objective():
    net = toy(sharp=False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0 = torch.randn(8, 1, 4, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    terms = training_losses(TrainForward(net, all_exits=True), ContinuousNoise(), x0,
                            generator=torch.Generator().manual_seed(0))
    assert {"loss", "denoise", "uem", "layerwise"} <= set(terms)
    terms["loss"].mean().backward()
    opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("heads.") for k in changed) and any(k.startswith("blocks.") for k in changed)


def test_toy_backbone_samples_with_early_exit_and_per_sample_equivalence():
    net = toy().eval()
    x, t = torch.randn(6, 1, 4, 4), torch.rand(6) * 999
    with torch.no_grad():
        certs = net.forward_all_exits(x, t).certainties.mean(dim=(2, 3, 4))  # (N, B)
        tau = float(certs[0].median())  # about half the rows exit after block 0
        out = net.forward_early_exit(x, t, exit_policy=ThresholdExit(tau))
        preds = net.forward_all_exits(x, t).preds
        assert 0 < int((out.exit_block == 0).sum()) < 6
        for r in range(6):
            k = int(out.exit_block[r])
            torch.testing.assert_close(out.sample[r], preds[k, r], atol=1e-6, rtol=1e-6)
            alone = net.forward_early_exit(x[r:r + 1], t[r:r + 1], exit_policy=ThresholdExit(tau))
            assert int(alone.exit_block) == k
            torch.testing.assert_close(alone.sample[0], out.sample[r], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(x, t, exit_policy=StaticExit(1)), preds[1], atol=1e-6, rtol=1e-6)
        # a sampling run through the engine's recorder and DPM-Solver
        rec = ExitRecorder(net.num_blocks)
        fn = with_time_scale(SamplingRun(net, ThresholdExit(tau), rec), 999.0)
        x0 = dpm_solver_sample(conditional_model_fn(fn, None), torch.randn(4, 1, 4, 4), LinearVPSchedule(),
                               steps=6, order=2, method="multistep", predict="noise", skip_type="logSNR")
    assert torch.isfinite(x0).all()
    s = rec.summary(net.flops(), 4)
    assert 1 <= s["mean_blocks"] <= 3 and s["gflops_per_image"] > 0


def test_toy_backbone_flops_match_the_counter():
    net = toy().eval()
    f = net.flops()
    x, t = torch.randn(1, 1, 4, 4), torch.tensor([500.0])

    def counted(fn):
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    with torch.no_grad():
        assert counted(lambda: net(x, t)) == f.full
        out = net.forward_early_exit(x, t, exit_threshold=0.0)  # exits after block 0, one head run
        assert int(out.exit_block) == 0 and int(out.uem_evals) == 1
        assert counted(lambda: net.forward_early_exit(x, t, exit_threshold=0.0)) == f.mean_call([0], [1])


def test_toy_backbone_reuses_through_the_contracts_default_hooks():
    """No reuse hook written for the toy: the contract's defaults (a span's residual) give
    DeepCache; N = 1 is full depth bit for bit, a batch equals each row alone, the accounting
    counts the reused blocks."""
    from libs.exits.policy import FULL
    from libs.exits.reuse import DeepCache, ReuseCall
    net = toy().eval()
    x, t = torch.randn(5, 1, 4, 4), torch.rand(5) * 999
    assert net.reuse_problem((1, 2)) is None and net.reuse_problem((2, 4)) is not None

    def run(policy, rows):
        rec = ExitRecorder(net.num_blocks)
        rec.start_run()
        fn = SamplingRun(net, policy, rec)
        with torch.no_grad():
            return [fn(x[rows], t[rows] * (1 - 0.3 * c)) for c in range(3)], rec

    full, _ = run(FULL, list(range(5)))
    same, _ = run(DeepCache(1, 1), list(range(5)))
    assert all(torch.equal(a, b) for a, b in zip(full, same))
    got, rec = run(DeepCache(2, 1), list(range(5)))
    for r in range(5):
        alone, _ = run(DeepCache(2, 1), [r])
        for c in range(3):
            torch.testing.assert_close(got[c][r:r + 1], alone[c], atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # the reused call: blocks 0 and 2 run, block 1's residual from call 0
        h0, _ = net.embed(x, t, None)
        h0 = net.run_block(0, h0, None)
        res = net.run_block(1, h0, None) - h0
        h, _ = net.embed(x, t * 0.7, None)
        h = net.run_block(0, h, None)
        torch.testing.assert_close(got[1], net.output_head(net.run_block(2, h + res, None)), atol=1e-6, rtol=1e-6)
    assert rec.reused.tolist() == [[0, 0, 0], [0, 5, 0], [0, 0, 0]]
    s = rec.summary(net.flops(), 5)
    assert s["blocks_reused"] == pytest.approx(1 / 3) and s["mean_blocks"] == pytest.approx(8 / 3)
    assert isinstance(ReuseCall(1).reuse_span(3), tuple)
