"""Cross-step reuse speed: a reusing call (DeepCache depth k, libs/exits/reuse.py) against full
depth, measured speedup vs the ideal (the ratio of blocks computed, num_blocks / 2k).

Scenarios, all on the same random inputs and weights (speed does not depend on training):
  full      a plain full-depth call, no cache
  cached    a full-depth call that also fills the reuse cache (what DeepCache's full calls
            do; a reference kept, no copy, so ideal 1)
  reuse:k   a call that takes the span k .. num_blocks-1-k from the cache (2k blocks computed)
The ideal counts blocks only; the embedding and the output head are part of what is measured.
Timings are interleaved (full, cached, reuse:1, ..., full, ...), each timing repeats the call
until it lasts ``--min_time`` seconds, and the median of ``--repeats`` is reported.

    python benchmarks/bench_reuse.py --batch_sizes 1,16,64 --threads 1 --repeats 5
    python benchmarks/bench_reuse.py --config cifar10_uvit_small --batch_sizes 1,16 --depths 1,3
"""
import argparse
import importlib
import json
import statistics
import time
from pathlib import Path

import torch

from libs.exits.call import Call, deepcache_span
from libs.exits.policy import FULL
from libs.exits.reuse import ReuseCache
from libs.models.uvit import UViT


def build(config_name, device):
    cfg = importlib.import_module(f"configs.{config_name}").get_config()
    nnet = {k: v for k, v in cfg.nnet.to_dict().items() if k != "name"}
    torch.manual_seed(0)
    return UViT(**nnet).to(device).eval(), nnet


def timed(fn, sync, inner):
    sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t0) / inner


def bench(net, nnet, batch, device, depths, repeats, warmup, min_time):
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    C, S, N = nnet["in_chans"], nnet["img_size"], net.num_blocks
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, C, S, S, generator=g).to(device)
    t = (torch.rand(batch, generator=g) * 999).to(device)
    y = torch.randint(0, nnet["num_classes"], (batch,), generator=g).to(device) \
        if nnet.get("num_classes", -1) > 0 else None
    cache = ReuseCache([deepcache_span(k, N) for k in depths])
    with torch.inference_mode():
        net.forward_early_exit(x, t, y, exit_policy=FULL, reuse_cache=cache)  # fills every span
    calls = {"full": lambda: net(x, t, y),
             "cached": lambda: net.forward_early_exit(x, t, y, exit_policy=FULL, reuse_cache=cache)}
    computed = {"full": N, "cached": N}
    for k in depths:
        calls[f"reuse:{k}"] = (lambda k=k: net.forward_early_exit(x, t, y, exit_policy=Call(reuse=k),
                                                                   reuse_cache=cache))
        computed[f"reuse:{k}"] = 2 * k
    times = {k: [] for k in calls}
    with torch.inference_mode():
        inner = {k: max(1, int(min_time / max(min(timed(f, sync, 1) for _ in range(2)), 1e-6)))
                 for k, f in calls.items()}
        for r in range(warmup + repeats):
            for name, f in calls.items():
                dt = timed(f, sync, inner[name])
                if r >= warmup:
                    times[name].append(dt)
    flops, t_full, rows = net.flops(), statistics.median(times["full"]), []
    for name in calls:
        ideal = N / computed[name]
        measured = t_full / statistics.median(times[name])
        span = deepcache_span(int(name.split(":")[1]), N) if name.startswith("reuse") else (0, 0)
        gflops = flops.call(N - 1, reused=range(*span)) / 1e9
        rows.append(dict(batch=batch, scenario=name, blocks_computed=computed[name], gflops_per_image=gflops,
                         ms_per_call=1e3 * statistics.median(times[name]), ideal_speedup=ideal,
                         measured_speedup=measured, efficiency=measured / ideal))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits_uvit_tiny", help="module in configs/")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_sizes", default="1,16,64")
    p.add_argument("--depths", default="1,2", help="DeepCache depths k to time (2k blocks computed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min_time", type=float, default=0.2, help="seconds per timing (calls repeated)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    net, nnet = build(args.config, args.device)
    depths = [int(k) for k in args.depths.split(",") if k]
    bad = [k for k in depths if not 1 <= k <= (net.num_blocks - 1) // 2]
    if bad:
        p.error(f"--depths {bad}: k must be in 1..{(net.num_blocks - 1) // 2} for {net.num_blocks} blocks")
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {args.config} on {dev}, fp32, {net.num_blocks} blocks, torch {torch.__version__}; "
          f"medians of {args.repeats}", flush=True)
    print(f"{'batch':>5} {'scenario':>8} {'blocks':>6} {'GFLOPs/img':>10} {'ms/call':>9} "
          f"{'ideal':>6} {'measured':>8} {'meas/ideal':>10}", flush=True)
    rows = []
    for b in [int(s) for s in args.batch_sizes.split(",")]:
        for r in bench(net, nnet, b, args.device, depths, args.repeats, args.warmup, args.min_time):
            rows.append(r)
            print(f"{r['batch']:>5} {r['scenario']:>8} {r['blocks_computed']:>6} {r['gflops_per_image']:>10.4f} "
                  f"{r['ms_per_call']:>9.3f} {r['ideal_speedup']:>6.3f} {r['measured_speedup']:>8.3f} "
                  f"{r['efficiency']:>10.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
