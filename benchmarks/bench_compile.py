"""Compiled sampling (``config.sample.compile``): eager vs ``blocks`` vs ``graphs``, per exit
policy and batch size, side by side in one run.

For each config and batch size it samples one batch (the config's sampler, ``--steps``
network calls, the evaluation engine's ``generate`` with its exit recorder) under every
(mode, policy) pair, in turn, ``--repeats`` rounds after a warm-up round that compiles; it
prints per (mode, policy):

* compile seconds (the warm-up's calls that produced graphs, ``libs.models.compile``) and the
  graphs they made (later cells reuse the graphs of earlier ones: blocks are shared);
* the median per-call time (sampling time / network calls);
* the speedup over the same mode's full depth, the blocks ideal (full blocks / mean blocks
  run per call) and their ratio;
* compiled full depth against eager full depth;
* the largest difference of the sampled x_0 from the first mode's (eager), and whether every
  call's exit counts are the same;
* with batch size 1 among ``--batch_sizes``: each batched cell's images/s against the batch-1
  loop of the first mode (eager: the released way of sampling, one image at a time).

Policies that need calibration (``profile:``) are calibrated once, eagerly, on
``--calib_images`` images. ``--nnet_path`` loads weights (the trained digits heads), else the
weights are random with the heads' weights scaled by ``--random_heads`` so that exits vary.
Modes: ``eager``, ``blocks``, ``graphs`` (``libs/models/compile.py``).

    python benchmarks/bench_compile.py --threads 1                     # digits, trained heads
    python benchmarks/bench_compile.py --config cifar10_uvit_small --steps 10 --batch_sizes 1,16 \\
        --random_heads 40 --policies full,static:1,profile:0.55,threshold:0.55 --threads 1
    python benchmarks/bench_compile.py --device cuda --dtype bf16 --compile_mode reduce-overhead ...

Each run compiles into a fresh inductor cache (``--cache_dir``, default a new temporary
folder), so compile seconds are cold-cache seconds unless ``--cache_dir`` names a used one.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits_uvit_tiny", help="module in configs/")
    p.add_argument("--nnet_path", default="workdir/main_job/adadiff/ckpts/800.ckpt/nnet_ema.pth",
                   help="weights ('' = random weights, see --random_heads)")
    p.add_argument("--random_heads", type=float, default=40.0, help="scale of random heads' weights")
    p.add_argument("--policies", default="full,static:1,profile:0.9,threshold:0.9")
    p.add_argument("--modes", default="eager,blocks,graphs")
    p.add_argument("--batch_sizes", default="1,16,64")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the config's)")
    p.add_argument("--calib_images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch1_runs", type=int, default=8, help="batches of one per timing at batch size 1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile_mode", default=None, help="torch.compile mode of graphs (reduce-overhead: CUDA graphs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cache_dir", default=None, help="inductor cache (default: a fresh temporary folder)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def build(args):
    import importlib

    import torch
    from libs.models.registry import build_nnet
    from libs.run.checkpoint import load_weights
    from libs.tasks.pixel import PixelTask

    config = importlib.import_module(f"configs.{args.config}").get_config()
    if args.steps:
        config.sample.sample_steps = args.steps
    config.sample.calib_samples = args.calib_images
    config.sample.mini_batch_size = min(args.calib_images, 16)
    torch.manual_seed(0)
    net = build_nnet(config.nnet)
    if args.nnet_path:
        load_weights(net, args.nnet_path)
    else:
        with torch.no_grad():
            for h in net.uem_heads:
                h.proj.weight.mul_(args.random_heads)
    return config, net.to(args.device).eval(), PixelTask(config, load_data=False)


def measure(config, net, task, args):
    import torch
    from libs.evaluation.engine import calibrate_policy, generate, sweep_policies
    from libs.exits.recorder import ExitRecorder
    from libs.models.compile import compile_network

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    policies = [calibrate_policy(q, net, task, config, device, autocast) for q in sweep_policies(args.policies)]
    modes = args.modes.split(",")
    views = {}
    for m in modes:
        views[m] = net if m == "eager" else compile_network(
            net, m, compile_mode=args.compile_mode if m == "graphs" else None)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        runs = args.batch1_runs if bs == 1 else 1
        batches = [list(range(b * bs, (b + 1) * bs)) for b in range(runs)]
        cell = {(m, q): dict(times=[]) for m in modes for q in policies}  # what each (mode, policy) measured
        for r in range(args.repeats + 1):  # round 0 compiles (and warms up)
            for (m, q), c in cell.items():
                view, rec = views[m], ExitRecorder(net.num_blocks, device)
                stats = getattr(view, "compile_stats", None)
                s0, g0 = (stats.seconds, stats.graphs) if stats else (0.0, 0)
                sync()
                t0 = time.perf_counter()
                with torch.no_grad(), autocast():
                    for b, idx in enumerate(batches):
                        out = generate(view, task, config.sample, idx, q, rec, config.seed, b, device, decode=False)
                sync()
                dt = time.perf_counter() - t0
                summary = rec.summary(None, bs * runs)
                c.update(blocks=summary["mean_blocks"], calls=runs * len(summary["exit_block_per_step"]),
                         x0=out.float().cpu(), exits=rec.counts.cpu())  # the last batch's, every round alike
                if r == 0:
                    c.update(compile_s=stats.seconds - s0 if stats else 0.0, graphs=stats.graphs - g0 if stats else 0)
                else:
                    c["times"].append(dt / c["calls"])
        yield from _rows(args, bs, runs, modes, policies, cell)
    for m in modes:
        stats = getattr(views[m], "compile_stats", None)
        for n in (stats.notes if stats else []):
            print(f"# {m}: {n}")
    for q in policies:
        if q.calibration():
            print(f"# {q.spec}: {q.calibration()}")


def _rows(args, bs: int, runs: int, modes, policies, cell):
    """One row per (mode, policy) of a batch size from the cells' measurements (``measure``)."""
    import torch

    def median(m, q):
        return statistics.median(cell[m, q]["times"])

    for (m, q), c in cell.items():
        per_call, full = median(m, q), median(m, policies[0])
        ideal = cell[m, policies[0]]["blocks"] / c["blocks"]
        first = cell[modes[0], q]
        yield dict(config=args.config, batch=bs, mode=m, policy=q.spec, compile_s=c["compile_s"],
                   graphs=c["graphs"], ms_per_call=1e3 * per_call, blocks=c["blocks"],
                   images_per_s=bs * runs / (per_call * c["calls"]), speedup=full / per_call,
                   ideal=ideal, of_ideal=full / per_call / ideal,
                   full_vs_first_mode=median(modes[0], policies[0]) / full,
                   max_abs_diff=(c["x0"] - first["x0"]).abs().max().item(),
                   same_exits=bool(torch.equal(c["exits"], first["exits"])))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", args.cache_dir or tempfile.mkdtemp(prefix="inductor_"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config, net, task = build(args)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {args.config}, {config.sample.algorithm} {config.sample.sample_steps} steps, {args.dtype}, {dev}, "
          f"torch {torch.__version__}, medians of {args.repeats}, inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")
    print(f"{'batch':>5} {'mode':>13} {'policy':>14} {'compile s':>9} {'graphs':>6} {'ms/call':>8} {'blocks':>6} "
          f"{'speedup':>7} {'ideal':>6} {'of ideal':>8} {'full vs ' + args.modes.split(',')[0]:>14} {'max|diff|':>9} "
          f"{'same exits':>10}", flush=True)
    rows = []
    for r in measure(config, net, task, args):
        rows.append(r)
        print(f"{r['batch']:>5} {r['mode']:>13} {r['policy']:>14} {r['compile_s']:>9.1f} {r['graphs']:>6} "
              f"{r['ms_per_call']:>8.3f} {r['blocks']:>6.2f} {r['speedup']:>7.3f} {r['ideal']:>6.3f} "
              f"{r['of_ideal']:>8.3f} {r['full_vs_first_mode']:>14.3f} {r['max_abs_diff']:>9.1e} "
              f"{str(r['same_exits']):>10}", flush=True)
    loop = {r["policy"]: r["images_per_s"] for r in rows if r["batch"] == 1 and r["mode"] == rows[0]["mode"]}
    if loop and any(r["batch"] > 1 for r in rows):
        print(f"\n# sampling throughput against the batch-1 {rows[0]['mode']} loop (same policy)")
        print(f"{'batch':>5} {'mode':>13} {'policy':>14} {'images/s':>9} {'vs loop':>8}")
        for r in rows:
            if r["batch"] > 1 and r["policy"] in loop:
                r["vs_batch1_loop"] = r["images_per_s"] / loop[r["policy"]]
                print(f"{r['batch']:>5} {r['mode']:>13} {r['policy']:>14} {r['images_per_s']:>9.1f} "
                      f"{r['vs_batch1_loop']:>7.2f}x", flush=True)
    if args.json:
        import json
        from pathlib import Path
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
