"""Early-exit speed: measured speedup over full depth vs the ideal (ratio of blocks run).

Scenarios, all on the same random inputs and weights (speed does not depend on training):
  full      no threshold: plain U-ViT cost, no uncertainty head evaluated
  mid       every sample exits at the middle block (heads set so only the mid head passes)
  half      half the batch exits at the middle block, the other half runs full depth
Timings are interleaved (full, mid, half, full, ...) and the median is reported, so the
ratios are measured side by side on a shared, noisy machine.

    python benchmarks/bench_early_exit.py                                  # CPU, batch 16
    python benchmarks/bench_early_exit.py --device cuda --dtype bf16 --batch_sizes 1,256
"""
import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from libs.flops import uvit_flops  # noqa: E402
from libs.uvit import UViT  # noqa: E402


def build(config_name, device):
    cfg = importlib.import_module(f"configs.{config_name}").get_config()
    nnet = {k: v for k, v in cfg.nnet.to_dict().items() if k != "name"}
    torch.manual_seed(0)
    return UViT(**nnet).to(device).eval(), nnet


def set_heads(net, mid_bias):
    """All heads never pass except the middle one (bias ``mid_bias``, None = keep its weights)."""
    mid = net.depth // 2
    with torch.no_grad():
        for i, h in enumerate(net.uem_heads):
            if i == mid and mid_bias is None:
                h.proj.weight.mul_(40.0)  # spread the per-sample certainties
                continue
            h.proj.weight.zero_()
            h.proj.bias.fill_(mid_bias if i == mid else -30.0)


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench(net, nnet, batch, device, dtype, repeats, warmup):
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    C, S = nnet["in_chans"], nnet["img_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, C, S, S, generator=g).to(device)
    t = (torch.rand(batch, generator=g) * 999).to(device)
    mid = net.depth // 2
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    # Calibrate the 'half' threshold: between the two middle values of the middle head's
    # per-sample mean certainty, so exactly half the batch passes.
    set_heads(net, None)
    with torch.no_grad(), autocast:
        cert = net.forward_all_exits(x, t).certainties[mid].float().mean(dim=(1, 2, 3)).sort().values
    tau_half = 0.5 * (cert[(batch - 1) // 2] + cert[batch // 2]).item()
    half_heads = {k: v.clone() for k, v in net.uem_heads.state_dict().items()}
    set_heads(net, 30.0)
    mid_heads = {k: v.clone() for k, v in net.uem_heads.state_dict().items()}

    scenarios = {"full": (None, mid_heads), "mid": (0.5, mid_heads)}
    if batch > 1:
        scenarios["half"] = (tau_half, half_heads)
    times = {k: [] for k in scenarios}
    blocks = {}
    with torch.no_grad(), autocast:
        for name, (tau, heads) in scenarios.items():
            net.uem_heads.load_state_dict(heads)
            o = net.forward_early_exit(x, t, exit_threshold=tau)
            blocks[name] = (o.exit_block.float().mean().item() + 1, o.exit_block.tolist(), o.uem_evals.tolist())
        for r in range(warmup + repeats):
            for name, (tau, heads) in scenarios.items():
                net.uem_heads.load_state_dict(heads)
                dt = timed(lambda: net(x, t, exit_threshold=tau), sync)
                if r >= warmup:
                    times[name].append(dt)
    flops = uvit_flops(nnet)
    rows = []
    t_full = statistics.median(times["full"])
    for name in scenarios:
        mean_blocks, exits, uems = blocks[name]
        ideal = net.num_blocks / mean_blocks
        measured = t_full / statistics.median(times[name])
        gflops = (flops.full if name == "full" else flops.mean_call(exits, uems)) / 1e9
        rows.append(dict(batch=batch, scenario=name, blocks=mean_blocks, gflops_per_image=gflops,
                         ms_per_call=1e3 * statistics.median(times[name]), ideal_speedup=ideal,
                         measured_speedup=measured, efficiency=measured / ideal))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_uvit_small", help="module in configs/")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch_sizes", default="16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    net, nnet = build(args.config, args.device)
    initial_heads = {k: v.clone() for k, v in net.uem_heads.state_dict().items()}
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {args.config} on {dev}, {args.dtype}, {net.num_blocks} blocks, torch {torch.__version__}")
    rows = []
    for b in [int(s) for s in args.batch_sizes.split(",")]:
        net.uem_heads.load_state_dict(initial_heads)
        rows += bench(net, nnet, b, args.device, dtype, args.repeats, args.warmup)
    print(f"{'batch':>5} {'scenario':>8} {'blocks':>6} {'GFLOPs/img':>10} {'ms/call':>9} "
          f"{'ideal':>6} {'measured':>8} {'meas/ideal':>10}")
    for r in rows:
        print(f"{r['batch']:>5} {r['scenario']:>8} {r['blocks']:>6.2f} {r['gflops_per_image']:>10.2f} "
              f"{r['ms_per_call']:>9.2f} {r['ideal_speedup']:>6.3f} {r['measured_speedup']:>8.3f} "
              f"{r['efficiency']:>10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
