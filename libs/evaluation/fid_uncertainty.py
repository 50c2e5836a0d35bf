"""The uncertainty of an FID over its image set: a bootstrap (fixed-seed numpy generator) over
the images' Inception features against the same reference statistics; the standard error is
the resampled FIDs' standard deviation, reported as FID +- 2 SE around the full-set FID.

Each resample's FID is exact, with an N x N eigendecomposition instead of D x D: with X the
(N, D) features, P a row pick and C the centring,

    FID_b = |mu_b - mu_ref|^2 + Tr S_b + Tr S_ref - 2 sum_i sqrt(eig_i(C P G P^T C) / (N - 1)),
    G = X S_ref X^T,   Tr S_b = (Tr(P K P^T) - 1^T P K P^T 1 / N) / (N - 1),   K = X X^T."""
from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 100
BOOTSTRAP_SEED = 0


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n) image indices drawn with replacement: the same draws for every image set
    of n images, so that sets sampled from the same noise are resampled jointly (paired)."""
    if n < 2:
        raise ValueError(f"a bootstrap FID needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(resamples)]) if resamples else np.zeros((0, n), int)


def resampled_fids(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(R,) exact FIDs of the resamples ``features[indices[b]]`` of the (N, D) ``features``
    against (mu_ref, sigma_ref), one per row of the (R, N) ``indices`` (module docstring)."""
    X = np.asarray(features, dtype=np.float64)
    n = X.shape[0]
    if n < 2 or np.shape(indices)[1:] != (n,):
        raise ValueError(f"need (R, {n}) resample indices for {n} images (at least 2), got {np.shape(indices)}")
    G, K = X @ np.asarray(sigma_ref, dtype=np.float64) @ X.T, X @ X.T  # (N, N) each
    tr_ref = float(np.trace(sigma_ref))
    out = np.empty(len(indices))
    for b, idx in enumerate(indices):
        diff = X[idx].mean(axis=0) - mu_ref
        Gb, Kb = G[np.ix_(idx, idx)], K[np.ix_(idx, idx)]
        Gc = Gb - Gb.mean(0, keepdims=True) - Gb.mean(1, keepdims=True) + Gb.mean()  # C G_b C
        tr_b = (np.trace(Kb) - Kb.sum() / n) / (n - 1)
        eig = np.linalg.eigvalsh((Gc + Gc.T) / 2) / (n - 1)
        out[b] = float(diff @ diff) + tr_b + tr_ref - 2 * float(np.sqrt(np.clip(eig, 0, None)).sum())
    return out


def bootstrap_fid(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
                  resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples,) FIDs of bootstrap resamples of the (N, D) ``features`` against (mu_ref, sigma_ref)."""
    return resampled_fids(features, mu_ref, sigma_ref, bootstrap_indices(len(features), resamples, seed))
