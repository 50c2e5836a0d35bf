"""The bootstrap FID: each resample's low-rank FID equals frechet_distance on that resample,
and FIDAccumulator's cross-process reduction."""
import pytest
import numpy as np
import torch

from libs.evaluation.fid import FIDAccumulator, frechet_distance, statistics_from_features
from libs.evaluation.fid_uncertainty import bootstrap_fid


def _data(n=40, d=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 1.0
    R = rng.normal(size=(200, d)) * 1.2
    return X, statistics_from_features(R)


def test_bootstrap_resamples_are_exact_fids():
    X, (mu, sigma) = _data()
    fids = bootstrap_fid(X, mu, sigma, resamples=5, seed=3)
    rng = np.random.default_rng(3)
    for f in fids:
        idx = rng.integers(0, len(X), len(X))
        assert f == np.float64(f) and abs(f - frechet_distance(*statistics_from_features(X[idx]), mu, sigma)) < 1e-8 * f


@pytest.mark.slow
def test_standard_error_shrinks_with_more_images():
    X, (mu, sigma) = _data(n=400)
    se = [np.std(bootstrap_fid(x, mu, sigma, 60), ddof=1) for x in (X, np.concatenate([X] * 4))]
    assert se[0] > se[1] > 0


class _TwoProcesses:
    """What FIDAccumulator.reduce needs of an accelerator, for two processes holding equal sums."""

    num_processes, device = 2, "cpu"

    def reduce(self, t, reduction):
        assert reduction == "sum"
        return t * 2


def test_accumulator_reduce_adds_up_processes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.float().flatten(1)[:, :8]

    acc = FIDAccumulator(Net(), dims=8, keep_features=True)
    acc.update(torch.randint(0, 255, (5, 1, 4, 4), dtype=torch.uint8))
    s, so = acc.sum.clone(), acc.sum_outer.clone()
    assert acc.features().shape == (5, 8)
    acc.reduce(type("One", (), {"num_processes": 1})())  # one process: unchanged
    assert acc.num_images == 5
    acc.kept = None  # (gathering kept features needs a real process group)
    acc.reduce(_TwoProcesses())
    assert acc.num_images == 10 and torch.equal(acc.sum, 2 * s) and torch.equal(acc.sum_outer, 2 * so)
