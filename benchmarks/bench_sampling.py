"""Sampling time of the same images at full depth vs an exit threshold, per batch size.

Generates ``--n_images`` images with the config's sampler (same noise, same labels) at full
depth and at ``--threshold``, alternating the two batch by batch, ``--repeats`` times;
reports the median wall-clock of a repeat, the blocks run per network call, the ideal
speedup (full blocks / mean blocks) and the measured speedup.

    python benchmarks/bench_sampling.py --nnet_path=workdir/main_job/adadiff/ckpts/600.ckpt/nnet_ema.pth
    python benchmarks/bench_sampling.py --config cifar10_uvit_small --steps 20 --device cuda --dtype bf16 \
        --batch_sizes 1,256 --n_images 256 --random_heads 40 --threshold 0.5

Without --nnet_path the network has random weights; --random_heads S multiplies the
uncertainty heads' weights by S so that exits vary per sample and step as in a trained model.

With batch size 1 among ``--batch_sizes`` it also reports the per-image throughput of each
batched run against the batch-1 loop (the released way of evaluating: one image at a time)
at the threshold, with the largest difference between their images and whether every
image exited after the same blocks (equal outputs up to batched-GEMM rounding).
"""
import argparse
import importlib
import statistics
import time

import torch

from libs.run.checkpoint import load_weights
from libs.evaluation.engine import generate
from libs.exits.policy import parse_policies
from libs.exits.recorder import ExitRecorder
from libs.models.registry import build_nnet
from libs.tasks.pixel import PixelTask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits_uvit_tiny", help="module in configs/")
    p.add_argument("--nnet_path", default=None)
    p.add_argument("--threshold", type=float, default=None,
                   help="threshold (default: the config's first exit policy, if a threshold)")
    p.add_argument("--batch_sizes", default="1,64")
    p.add_argument("--n_images", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random_heads", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = importlib.import_module(f"configs.{args.config}").get_config()
    if args.steps:
        config.sample.sample_steps = args.steps
    tau = args.threshold if args.threshold is not None else \
        parse_policies(str(config.sample.exit_policy))[0].effective_threshold()
    if not 0 <= tau < 1:
        p.error("give --threshold in [0, 1): the config's first exit policy is not a threshold")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_nnet(config.nnet)
    if args.nnet_path:
        load_weights(net, args.nnet_path)
    elif args.random_heads:
        with torch.no_grad():
            for h in net.uem_heads:
                h.proj.weight.mul_(args.random_heads)
    net.to(device).eval()
    task = PixelTask(config, load_data=False)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {args.config}, {config.sample.algorithm} {config.sample.sample_steps} steps, {args.n_images} images, "
          f"threshold {tau:g}, {args.dtype}, {dev}, torch {torch.__version__}")
    print(f"{'batch':>5} {'full s':>8} {'tau s':>8} {'blocks':>7} {'ideal':>6} {'measured':>8} {'meas/ideal':>10}")
    rows, images, exits = [], {}, {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [list(range(s, min(s + bs, args.n_images))) for s in range(0, args.n_images, bs)]
        times = {1.0: [], tau: []}
        for r in range(args.repeats + 1):  # first round is warm-up
            recs = {t: ExitRecorder(net.num_blocks, device) for t in (1.0, tau)}
            total, out = {1.0: 0.0, tau: 0.0}, []
            for b, idx in enumerate(batches):
                # Full depth and the threshold alternate batch by batch (in alternating order), so
                # the machine's drift over a repeat falls on both alike.
                for t in ((1.0, tau) if b % 2 == 0 else (tau, 1.0)):
                    sync()
                    t0 = time.perf_counter()
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        x = generate(net, task, config.sample, idx, t, recs[t], config.seed, b, device)
                    sync()
                    total[t] += time.perf_counter() - t0
                    if t == tau:
                        out.append(x)
            if r > 0:
                for t in (1.0, tau):
                    times[t].append(total[t])
        # Every repeat makes the same images and exits: keep the last one's.
        blocks = {t: recs[t].summary(None, args.n_images)["mean_blocks"] for t in (1.0, tau)}
        images[bs], exits[bs] = torch.cat(out).float().cpu(), recs[tau].counts.sum(0).cpu()
        full, early = statistics.median(times[1.0]), statistics.median(times[tau])
        ideal, measured = blocks[1.0] / blocks[tau], full / early
        rows.append(dict(batch=bs, full_s=full, tau_s=early, blocks=blocks[tau], ideal=ideal, measured=measured))
        print(f"{bs:>5} {full:>8.2f} {early:>8.2f} {blocks[tau]:>7.2f} {ideal:>6.3f} {measured:>8.3f} "
              f"{measured / ideal:>10.3f}", flush=True)
    if 1 in images and len(images) > 1:
        loop = next(r for r in rows if r["batch"] == 1)
        print(f"\n# threshold {tau:g}, per image: batched run vs the batch-1 loop ({args.n_images / loop['tau_s']:.1f} "
              f"images/s)")
        print(f"{'batch':>5} {'images/s':>9} {'vs loop':>8} {'max |diff|':>10} {'same exits':>10}")
        for r in rows:
            if r["batch"] == 1:
                continue
            diff = (images[r["batch"]] - images[1]).abs().max().item()
            same = bool(torch.equal(exits[r["batch"]], exits[1]))
            r.update(images_per_s=args.n_images / r["tau_s"], vs_batch1_loop=loop["tau_s"] / r["tau_s"],
                     max_abs_diff=diff, same_exit_counts=same)
            print(f"{r['batch']:>5} {r['images_per_s']:>9.1f} {r['vs_batch1_loop']:>7.2f}x {diff:>10.2e} "
                  f"{str(same):>10}", flush=True)
    return rows


if __name__ == "__main__":
    main()
