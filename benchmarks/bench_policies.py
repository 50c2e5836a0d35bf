"""Cost of the static exit policies against a bare truncated forward, and their speedup.

``static:K`` and ``profile:T`` run no uncertainty head and need no per-block host
synchronisation, so sampling under them should cost what a bare forward through the same
blocks costs. For each batch size this samples the same ``--n_images`` images (same noise,
labels, sampler) under:

* full depth;
* each policy, through the evaluation engine's path (``generate`` with the exit recorder);
* the same blocks per network call through a bare truncated forward (embedding, blocks
  0..K, output head) with no policy object and no recorder.

It prints the median wall-clock of ``--repeats`` rounds (run side by side, in turn), the
policy's overhead over the bare forward (target: at most 5%), its speedup over full depth and
that speedup against the blocks ratio (the embedding and output head are fixed costs, so even
the bare forward stays below 1.0 there).

    python benchmarks/bench_policies.py --nnet_path=workdir/main_job/adadiff/ckpts/800.ckpt/nnet_ema.pth
"""
import argparse
import importlib
import statistics
import time

import torch

from libs.run.checkpoint import load_weights
from libs.evaluation.engine import calibrate_policy, generate, initial_noise, make_sampler, sampler_generator
from libs.exits.policy import FULL, parse_policies
from libs.exits.recorder import ExitRecorder
from libs.diffusion.wrappers import conditional_model_fn, with_time_scale
from libs.models.registry import build_nnet
from libs.tasks.pixel import PixelTask


def bare_sampling(net, task, sample_cfg, indices, blocks_per_call, seed, batch_seed, device):
    """The same sampling run with a bare truncated forward per call (no policy, no recorder)."""
    x_T = initial_noise(task, indices, seed, device)
    cond = task.conditions(indices, device)
    calls = iter(blocks_per_call)
    net_fn = with_time_scale(lambda x, t, c: net._forward_truncated(x, t, c, next(calls)), task.time_scale)
    sample = make_sampler(sample_cfg, task.schedule, generator=sampler_generator(seed, batch_seed, device))
    return sample(conditional_model_fn(net_fn, cond), x_T)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits_uvit_tiny", help="module in configs/")
    p.add_argument("--nnet_path", default="workdir/main_job/adadiff/ckpts/800.ckpt/nnet_ema.pth")
    p.add_argument("--policies", default="static:1,static:4,profile:0.85,profile:0.9")
    p.add_argument("--batch_sizes", default="1,64")
    p.add_argument("--n_images", type=int, default=64)
    p.add_argument("--n_images_batch1", type=int, default=16, help="images at batch size 1 (slow)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = importlib.import_module(f"configs.{args.config}").get_config()
    net = build_nnet(config.nnet)
    load_weights(net, args.nnet_path)
    net.eval()
    device = torch.device("cpu")
    task = PixelTask(config, load_data=False)
    sc = config.sample
    with torch.no_grad():
        policies = [calibrate_policy(q, net, task, config, device) for q in parse_policies(args.policies)]
    steps = None
    print(f"# {args.config}, {sc.algorithm} {sc.sample_steps} steps, cpu ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, medians of {args.repeats}")
    print(f"{'batch':>5} {'policy':>14} {'blocks':>6} {'policy s':>9} {'bare s':>8} {'overhead':>9} "
          f"{'speedup':>8} {'blocks ratio':>12} {'speedup/ratio':>13}")
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        n = args.n_images_batch1 if bs == 1 else args.n_images
        batches = [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
        times = {q.spec: {"policy": [], "bare": []} for q in [FULL, *policies]}
        blocks = {}
        for r in range(args.repeats + 1):  # round 0 warms up
            for q in [FULL, *policies]:
                rec = ExitRecorder(net.num_blocks)
                t0 = time.perf_counter()
                with torch.no_grad():
                    for b, idx in enumerate(batches):
                        generate(net, task, sc, idx, q, rec, config.seed, b, device, decode=False)
                dt = time.perf_counter() - t0
                summary = rec.summary(None, n)
                blocks[q.spec] = summary["mean_blocks"]
                steps = steps or len(summary["exit_block_per_step"])
                per_call = [round(k) for k in summary["exit_block_per_step"]]
                t0 = time.perf_counter()
                with torch.no_grad():
                    for b, idx in enumerate(batches):
                        bare_sampling(net, task, sc, idx, per_call, config.seed, b, device)
                db = time.perf_counter() - t0
                if r > 0:
                    times[q.spec]["policy"].append(dt)
                    times[q.spec]["bare"].append(db)
        full = statistics.median(times["full"]["policy"])
        for q in [FULL, *policies]:
            tp, tb = statistics.median(times[q.spec]["policy"]), statistics.median(times[q.spec]["bare"])
            ratio = blocks["full"] / blocks[q.spec]
            row = dict(batch=bs, policy=q.spec, blocks=blocks[q.spec], policy_s=tp, bare_s=tb,
                       overhead=tp / tb - 1, speedup=full / tp, blocks_ratio=ratio)
            rows.append(row)
            print(f"{bs:>5} {q.spec:>14} {row['blocks']:>6.2f} {tp:>9.3f} {tb:>8.3f} {row['overhead']:>+9.1%} "
                  f"{row['speedup']:>8.3f} {ratio:>12.3f} {row['speedup'] / ratio:>13.3f}", flush=True)
    for q in policies:
        if q.calibration():
            print(f"# {q.spec}: {q.calibration()}")
    return rows


if __name__ == "__main__":
    main()
