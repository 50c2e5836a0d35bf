"""Named random streams: every random draw of a run is a function of (config.seed, stream, ...).
The numbers are part of the results (changing one changes every sample drawn from it).

=================  ===  ============================================================
stream             no.  what is drawn from it (and the rest of its key)
=================  ===  ============================================================
``NOISE``           1   training: forward-noise t and eps of a step (rank, step)
``BATCH``           2   training: label / context dropout of a step (rank, step)
``X_T``            11   sampling: the initial noise of image i (i)
``SAMPLER``        12   sampling: the stochastic sampler's noise of a batch (first image)
``CONDITION``      13   sampling: the random label / caption of image i (i)
``CAPTION_ORDER``  14   sampling: the shuffled validation-image order of a pass (pass)
``CALIBRATION``    15   exit-policy calibration images (then as X_T, SAMPLER)
=================  ===  ============================================================"""
from __future__ import annotations

import enum


class Stream(enum.IntEnum):
    NOISE = 1
    BATCH = 2
    X_T = 11
    SAMPLER = 12
    CONDITION = 13
    CAPTION_ORDER = 14
    CALIBRATION = 15


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
