"""Early-exit speed: measured speedup over full depth vs the ideal (ratio of blocks run).

Scenarios, all on the same random inputs and weights (speed does not depend on training):
  full      no threshold: plain U-ViT cost, no uncertainty head evaluated
  none      a threshold no sample reaches: the same blocks as full depth plus every exit
            test, so measured/ideal is pure overhead (ideal 1)
  block1    every sample exits after block 1 (the earliest the in-block patience allows)
  trunc1    reference: a bare truncated forward through blocks 0..1 (static:1, no heads)
  mid       every sample exits at the middle block (heads set so only the mid head passes)
  half      half the batch exits at the middle block, the other half runs full depth
With ``--one_row_forms`` a batch of one also times each scenario that decides per sample in
the exit loop's batch form (``exit_loop.run(..., one_row=False)``: tensor decisions and
bookkeeping on one row), as ``<scenario>/batch_form``, interleaved with the rest: the batch-of-one
form's worth, side by side (its blocks and GFLOPs columns are the batch-of-one form's; the batch
form may run more heads, patience being eager there).
The ideal counts blocks only (full blocks / mean blocks run); the uncertainty heads, the
embedding and the output head are part of what is measured. Timings are interleaved (full,
none, block1, ..., full, ...), each timing repeats the call until it lasts ``--min_time``
seconds, and the median of ``--repeats`` is reported, so the ratios are measured side by side
on a shared, noisy machine.

    python benchmarks/bench_early_exit.py                                  # CIFAR-10 S/2, CPU
    python benchmarks/bench_early_exit.py --config digits_uvit_tiny --batch_sizes 1,16,64,256
    python benchmarks/bench_early_exit.py --threads 1     # shared machine: no thread oversubscription
    python benchmarks/bench_early_exit.py --config digits_uvit_tiny --batch_sizes 1 --one_row_forms
    python benchmarks/bench_early_exit.py --device cuda --dtype bf16 --batch_sizes 1,16,256
"""
import argparse
import importlib
import json
import statistics
import time
from pathlib import Path

import torch

from libs.exits.policy import StaticExit, as_call
from libs.models import exit_loop
from libs.models.uvit import UViT

SCENARIOS = ("full", "none", "block1", "trunc1", "mid", "half")


def build(config_name, device):
    cfg = importlib.import_module(f"configs.{config_name}").get_config()
    nnet = {k: v for k, v in cfg.nnet.to_dict().items() if k != "name"}
    torch.manual_seed(0)
    return UViT(**nnet).to(device).eval(), nnet


def set_heads(net, bias, mid_bias=None):
    """Every head gives certainty sigmoid(``bias``), the middle one sigmoid(``mid_bias``)
    (default: ``bias``, or ``"sharp"``: its own weights sharpened so per-sample certainties spread)."""
    mid = net.depth // 2
    with torch.no_grad():
        for i, h in enumerate(net.uem_heads):
            if i == mid and mid_bias == "sharp":
                h.proj.weight.mul_(40.0)
                continue
            h.proj.weight.zero_()
            h.proj.bias.fill_(mid_bias if i == mid and mid_bias is not None else bias)


def timed(fn, sync, inner):
    sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t0) / inner


def batch_form(net, x, t, y, exit_policy=None, exit_threshold=None):
    """One call through the exit loop's batch form, also for a batch of one."""
    h, carry = net.embed(x, t, y)
    return exit_loop.run(net, h, carry, as_call(exit_threshold if exit_policy is None else exit_policy),
                         one_row=False)[0]


def bench(net, nnet, batch, device, dtype, repeats, warmup, min_time, scenarios, one_row_forms=False):
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    C, S = nnet["in_chans"], nnet["img_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, C, S, S, generator=g).to(device)
    t = (torch.rand(batch, generator=g) * 999).to(device)
    y = torch.randint(0, nnet["num_classes"], (batch,), generator=g).to(device) \
        if nnet.get("num_classes", -1) > 0 else None
    mid = net.depth // 2
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    initial = {k: v.clone() for k, v in net.uem_heads.state_dict().items()}

    def heads(bias, mid_bias=None):
        net.uem_heads.load_state_dict(initial)
        set_heads(net, bias, mid_bias)
        return {k: v.clone() for k, v in net.uem_heads.state_dict().items()}

    # 'half': threshold between the two middle values of the middle head's per-sample mean
    # certainty, so exactly half the batch passes there.
    half_heads = heads(-30.0, "sharp")
    with torch.no_grad(), autocast:
        cert = net.forward_all_exits(x, t, y).certainties[mid].float().mean(dim=(1, 2, 3)).sort().values
    tau_half = 0.5 * (cert[(batch - 1) // 2] + cert[batch // 2]).item()
    table = {"full": (None, heads(-30.0)), "none": (0.5, heads(-30.0)), "block1": (0.5, heads(30.0)),
             "trunc1": (StaticExit(1), heads(-30.0)), "mid": (0.5, heads(-30.0, 30.0)),
             "half": (tau_half, half_heads)}
    names = [s for s in scenarios if s != "half" or batch > 1]
    if one_row_forms and batch == 1:  # the batch form beside the batch-of-one form, where a rule decides
        names += [f"{s}/batch_form" for s in names if table[s][0] is not None and not isinstance(table[s][0],
                                                                                                   StaticExit)]
        table.update({s: table[s.split("/")[0]] for s in names if "/" in s})
    forward = {k: (lambda kw, k=k: batch_form(net, x, t, y, **kw)) if "/" in k else (lambda kw: net(x, t, y, **kw))
               for k in names}
    times = {k: [] for k in names}
    blocks, inner = {}, {}
    with torch.no_grad(), autocast:
        for name in names:
            rule, state = table[name]
            net.uem_heads.load_state_dict(state)
            kw = dict(exit_policy=rule) if isinstance(rule, StaticExit) else dict(exit_threshold=rule)
            o = net.forward_early_exit(x, t, y, **kw)
            blocks[name] = (o.exit_block.float().mean().item() + 1, o.exit_block.tolist(), o.uem_evals.tolist())
            once = min(timed(lambda: forward[name](kw), sync, 1) for _ in range(2))
            inner[name] = max(1, int(min_time / max(once, 1e-6)))
        for r in range(warmup + repeats):
            for name in names:
                rule, state = table[name]
                net.uem_heads.load_state_dict(state)
                kw = dict(exit_policy=rule) if isinstance(rule, StaticExit) else dict(exit_threshold=rule)
                dt = timed(lambda: forward[name](kw), sync, inner[name])
                if r >= warmup:
                    times[name].append(dt)
    net.uem_heads.load_state_dict(initial)
    flops = net.flops()
    rows = []
    t_full = statistics.median(times["full"])
    for name in names:
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
    p.add_argument("--config", default="cifar10_uvit_small", help="module in configs/ (digits_uvit_tiny: small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch_sizes", default="1,16")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min_time", type=float, default=0.2, help="seconds per timing (calls repeated)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--one_row_forms", action="store_true",
                   help="at batch 1 also time the exit loop's batch form (module docstring)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenarios = ["full"] + [s for s in args.scenarios.split(",") if s and s != "full"]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    net, nnet = build(args.config, args.device)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {args.config} on {dev}, {args.dtype}, {net.num_blocks} blocks, torch {torch.__version__}; "
          f"medians of {args.repeats}", flush=True)
    print(f"{'batch':>5} {'scenario':>16} {'blocks':>6} {'GFLOPs/img':>10} {'ms/call':>9} "
          f"{'ideal':>6} {'measured':>8} {'meas/ideal':>10}", flush=True)
    rows = []
    for b in [int(s) for s in args.batch_sizes.split(",")]:
        for r in bench(net, nnet, b, args.device, dtype, args.repeats, args.warmup, args.min_time, scenarios,
                       args.one_row_forms):
            rows.append(r)
            print(f"{r['batch']:>5} {r['scenario']:>16} {r['blocks']:>6.2f} {r['gflops_per_image']:>10.3f} "
                  f"{r['ms_per_call']:>9.3f} {r['ideal_speedup']:>6.3f} {r['measured_speedup']:>8.3f} "
                  f"{r['efficiency']:>10.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
