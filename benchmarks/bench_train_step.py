"""Training-step cost of the AdaDiff objective vs the plain U-ViT loss, same config.

One step = noise sampling, forward, loss, backward, AdamW update (EMA excluded: identical in
both). Steps alternate between the two objectives and the median is reported, so the ratio
is measured side by side.

    python benchmarks/bench_train_step.py                                   # CPU, batch 8
    python benchmarks/bench_train_step.py --device cuda --dtype bf16 --batch_size 128
"""
import argparse
import importlib
import statistics
import time

import torch

from libs.models.registry import build_nnet
from libs.training.engine import TrainForward
from libs.diffusion.noise import ContinuousNoise
from libs.training.objectives import training_losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_uvit_small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    config = importlib.import_module(f"configs.{args.config}").get_config()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    net = build_nnet(config.nnet).to(args.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    n = config.nnet
    x0 = torch.randn(args.batch_size, n.in_chans, n.img_size, n.img_size, device=args.device)
    y = torch.randint(0, n.num_classes, (args.batch_size,), device=args.device) if n.num_classes > 0 else None
    noise = ContinuousNoise()
    models = {"uvit": TrainForward(net, all_exits=False), "adadiff": TrainForward(net, all_exits=True)}
    times = {k: [] for k in models}

    def step(objective):
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = training_losses(models[objective], noise, x0, y, objective=objective)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for r in range(args.warmup + args.repeats):
        for objective in models:
            sync()
            t0 = time.perf_counter()
            step(objective)
            sync()
            if r >= args.warmup:
                times[objective].append(time.perf_counter() - t0)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    t_u, t_a = statistics.median(times["uvit"]), statistics.median(times["adadiff"])
    print(f"# {args.config}, batch {args.batch_size}, {args.dtype}, {dev}, torch {torch.__version__}")
    print(f"uvit loss     {1e3 * t_u:9.1f} ms/step")
    print(f"adadiff loss  {1e3 * t_a:9.1f} ms/step")
    print(f"overhead      {100 * (t_a / t_u - 1):9.1f} %  (target <= 15 %)")
    return t_u, t_a


if __name__ == "__main__":
    main()
