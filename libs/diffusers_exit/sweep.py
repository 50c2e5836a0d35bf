"""An adapted model's sweep: step counts x (full depth, exit and reuse rules, diffusers' caches),
every pair on the same noise and conditions. Each pair reports GFLOPs/img (the recorder's, or
the caches' ``WorkCounter``), its ratio to the reference (full depth, most steps), the
distance of its images to the reference's (``proxy_distance``), FID when reference statistics
are given, the time, and whether it is on the frontier (by FID, else distance)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch

from libs.diffusers_exit import caches
from libs.evaluation.calibration import calibrate_policy, proxy_distance
from libs.evaluation.frontier import pareto_flags
from libs.evaluation.image_io import images_to_uint8
from libs.evaluation.sampling import generate, index_batches, sample_batch
from libs.exits.policy import FULL, parse_policies
from libs.exits.recorder import ExitRecorder
from libs.run.atomic import atomic_write_text


@dataclass
class SweepRow:
    steps: int
    method: str
    kind: str  # 'full' | 'rule' (an exit or reuse rule of this project) | 'diffusers' (a diffusers cache)
    gflops_per_image: float
    layer_ratio: float  # blocks computed per call / depth (caches: block modulations that ran)
    seconds: float
    distance: float = float("nan")
    fid: float = float("nan")
    compute_ratio: float = float("nan")
    pareto: bool = False


def parse_methods(spec: str, model_class: str) -> list:
    """'0.9,static:2,deepcache:2:1,fbc:0.1,taylorseer:2' -> [FULL, rules..., CacheRules...]."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    cache_items = [s for s in items if caches.is_cache_spec(s)]
    rules = parse_policies(",".join(s for s in items if s not in cache_items)) if len(cache_items) < len(items) else []
    return [FULL] + [p for p in rules if not p.is_full] + [caches.parse_cache(s, model_class) for s in cache_items]


def _sample_rule(net, task, config, policy, steps, device):
    sc, recorder, images, seconds = config.sample, ExitRecorder(net.num_blocks, device), [], 0.0
    policy = calibrate_policy(policy, net, task, config, device, steps=steps)
    for b, idx in enumerate(index_batches(int(sc.n_samples), int(sc.mini_batch_size))):
        t0 = time.perf_counter()
        images.append(generate(net, task, sc, idx, policy, recorder, config.seed, b, device, steps=steps).float().cpu())
        seconds += time.perf_counter() - t0
    s = recorder.summary(net.flops(), int(sc.n_samples))
    return torch.cat(images), s["gflops_per_image"], s["layer_ratio"], seconds


def _cached_batch(net, task, sc, idx, steps, seed, b, device):
    tf = net.transformer
    caches.reset(tf)  # a new sampling run: no state from the previous batch
    call = caches.cached_call(tf, net.cond_name)

    def net_fn(x, t, cond):  # the adapter's time shift and noise channels, as its forward takes them
        t_net = task.time_scale * t
        return net.noise_prediction(call(x, net._network_time(t_net, x), cond))

    return sample_batch(net_fn, task, sc, idx, seed, b, device, steps=steps).float().cpu()


def _sample_cache(net, task, config, rule, steps, device):
    sc, images, seconds = config.sample, [], 0.0
    fl = net.flops()
    with caches.applied(net.transformer, rule):
        counter = caches.WorkCounter(net.transformer)
        try:
            for b, idx in enumerate(index_batches(int(sc.n_samples), int(sc.mini_batch_size))):
                t0 = time.perf_counter()
                images.append(_cached_batch(net, task, sc, idx, steps, config.seed, b, device))
                seconds += time.perf_counter() - t0
        finally:
            counter.remove()
    n = int(sc.n_samples)
    pieces = net.block_pieces()
    gflops = counter.gflops_per_image(pieces, fl.embed, fl.output_head, n)
    layer_ratio = counter.rows.get("rest" if pieces.get("rest") else "attn", 0) / max(counter.calls_rows * net.num_blocks, 1)
    return torch.cat(images), gflops, layer_ratio, seconds


def run_sweep(net, task, config, methods: list, step_counts: List[int], fid=None, log=print) -> List[SweepRow]:
    """Every (step count, method) pair (module docstring); ``fid``: None or a callable from
    uint8 images (N, C, H, W) to FID."""
    device = next(net.parameters()).device
    net.eval()
    rows, ref = [], None
    for steps in sorted(step_counts, reverse=True):  # the reference (full depth, most steps) first
        for m in methods:
            cache = isinstance(m, caches.CacheRule)
            sample = _sample_cache if cache else _sample_rule
            images, gflops, layers, seconds = sample(net, task, config, m, steps, device)
            ref = images if ref is None else ref
            row = SweepRow(steps, m.spec, "diffusers" if cache else ("full" if m.is_full else "rule"), gflops, layers,
                           seconds, distance=proxy_distance(images, ref))
            if fid is not None:
                row.fid = fid(images_to_uint8(images))
            rows.append(row)
            log(f"{steps:>3} steps {row.method:>16}: GFLOPs/img {gflops:.4g}, distance {row.distance:.4g}, "
                f"FID {row.fid:.4g}, {seconds:.1f} s")
    quality = [r.fid for r in rows] if fid is not None else [r.distance for r in rows]
    for r, on in zip(rows, pareto_flags([r.gflops_per_image for r in rows], quality)):
        r.compute_ratio, r.pareto = r.gflops_per_image / rows[0].gflops_per_image, on
    return rows


def fid_function(fid_stat: str, device):
    """uint8 images -> FID against the statistics file (Inception weights found offline)."""
    from libs.evaluation.fid import FIDAccumulator, frechet_distance, load_statistics
    from libs.evaluation.inception import load_inception

    ref, inception = load_statistics(fid_stat), load_inception(None, device=device)

    def fid(u8: torch.Tensor) -> float:
        acc = FIDAccumulator(inception)
        acc.update(u8)
        return frechet_distance(*acc.compute(), *ref)

    return fid


def format_table(rows: List[SweepRow]) -> str:
    """The frontier table (``*``: on the frontier)."""
    lines = [f"{'steps':>5} {'method':>16} {'kind':>9} {'GFLOPs/img':>10} {'ratio':>6} {'layers':>6} "
             f"{'distance':>9} {'FID':>8} {'time(s)':>7} pareto"]
    for r in rows:
        lines.append(f"{r.steps:>5} {r.method:>16} {r.kind:>9} {r.gflops_per_image:>10.4g} {r.compute_ratio:>6.3f} "
                     f"{r.layer_ratio:>6.3f} {r.distance:>9.4g} {r.fid:>8.4g} {r.seconds:>7.1f} "
                     f"{'*' if r.pareto else ''}")
    return "\n".join(lines)


def write_report(rows: List[SweepRow], folder, extra: Optional[dict] = None) -> str:
    """Writes ``sweep.json`` and ``sweep.txt`` (atomically) into ``folder``; returns the table."""
    folder, table = Path(folder), format_table(rows)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "sweep.json", json.dumps(dict(rows=[asdict(r) for r in rows], **(extra or {})), indent=1))
    atomic_write_text(folder / "sweep.txt", table + "\n")
    return table
