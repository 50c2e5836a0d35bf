"""Calibrating exit policies on images of their own (``profile:``, ``budget:``), and running
a policy on those calibration images (what calibration and the compute budget's quality
proxy both need)."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Optional

import torch

from libs.evaluation.sampling import generate
from libs.exits.policy import ExitPolicy
from libs.exits.recorder import ExitRecorder
from libs.run.seeds import Stream, mix_seed

log = logging.getLogger(__name__)


def calibration_run(net, task, config, rule: ExitPolicy, device, autocast=contextlib.nullcontext,
                    steps: Optional[int] = None, keep: bool = False):
    """Run ``rule`` on the first ``config.sample.calib_samples`` image indices with the
    calibration seed stream (not the evaluated images' noise) and ``steps`` sampler steps.
    Returns the recorder's summary (FLOPs included), and with ``keep=True`` also the (N, ...)
    samples x_0 (float32, CPU)."""
    sc = config.sample
    n, bs = int(sc.get("calib_samples", 64)), int(sc.mini_batch_size)
    seed = mix_seed(config.seed, Stream.CALIBRATION)
    recorder = ExitRecorder(net.num_blocks, device)
    samples = []
    with torch.no_grad():
        for b, s in enumerate(range(0, n, bs)):
            with autocast():
                x0 = generate(net, task, sc, list(range(s, min(s + bs, n))), rule, recorder, seed, b, device,
                              decode=False, steps=steps)
            if keep:
                samples.append(x0.float().cpu())
    summary = recorder.summary(net.flops() if keep else None, n)
    return (summary, torch.cat(samples)) if keep else summary


def calibrate_policy(policy: ExitPolicy, net, task, config, device, autocast=contextlib.nullcontext,
                     logger=None, steps: Optional[int] = None) -> ExitPolicy:
    """A runnable copy of ``policy``: ``profile:`` and ``budget:`` are calibrated on the first
    ``config.sample.calib_samples`` image indices at ``steps`` sampler steps (default: the
    largest of ``config.sample.sample_steps``); other policies are returned as they are."""
    if not policy.needs_calibration:
        return policy
    n = int(config.sample.get("calib_samples", 64))
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    calibrated = policy.calibrate(lambda rule, keep=False: calibration_run(net, task, config, rule, device, autocast,
                                                                           steps, keep))
    net.train(was_training)
    logger = logger or log
    at = f" at {steps} steps" if steps is not None else ""
    logger.info("calibrated %s%s on %d images in %.1fs: %s", policy.spec, at, n, time.perf_counter() - t0,
                calibrated.calibration())
    target = getattr(calibrated, "target", None)
    if target is not None and abs(calibrated.achieved - target) > 0.01:
        logger.warning("%s: the closest calibration layer ratio is %.3f (threshold %.4f); the rule's exits come "
                       "in steps too coarse for +-0.01 on %d images", policy.spec, calibrated.achieved,
                       calibrated.tau, n)
    return calibrated
