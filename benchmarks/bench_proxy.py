"""How well do cheap quality proxies rank a sweep's (step count, policy) points against FID?

For every candidate of a sweep (step counts x policies, full depth always included) this runs
the candidate on the calibration images (``config.sample.calib_samples``, the calibration seed
stream: not the evaluated images) and computes three proxies:

* ``mse_x0``: mean squared distance of x_0 to the reference run's x_0 from the same noise
  (the reference run: full depth at the largest step count);
* ``mse_img``: the same on the decoded images in [0, 1] (clipped, what FID sees);
* ``fd_calib``: the Frechet distance of the calibration images' Inception features to the
  reference statistics (a small-sample FID: biased upward, but equally for every candidate).

With ``--fid_report`` (the ``report.json`` of a full evaluation of the same sweep) it prints
Spearman's rank correlation of each proxy with the measured FIDs, and for each
``--budgets`` value the point each proxy would choose against the best measured point under
the same budget (their FID gap).

    python benchmarks/bench_proxy.py --nnet_path=workdir/main_job/adadiff/ckpts/800.ckpt/nnet_ema.pth \
        --exit_policy=0.9,profile:0.9,static:4 --sample_steps=10,12,15,20,50 \
        --fid_report=workdir/frontier500/report.json --budgets=0.2,0.3,0.5
"""
import argparse
import json
import time

import torch

from configs.digits_uvit_tiny import get_config
from libs.evaluation.calibration import calibrate_policy, calibration_run, proxy_distance
from libs.evaluation.fid import FIDAccumulator, frechet_distance, load_statistics
from libs.evaluation.frontier import spearman
from libs.evaluation.image_io import images_to_uint8
from libs.evaluation.inception import load_inception
from libs.exits.policy import FULL, parse_policies
from libs.models.registry import build_nnet
from libs.run.checkpoint import load_weights
from libs.tasks.pixel import PixelTask

PROXIES = ("mse_x0", "mse_img", "fd_calib")


def candidates(args, config, net, task):
    steps = sorted((int(s) for s in args.sample_steps.split(",")), reverse=True)
    policies = [FULL] + [p for p in parse_policies(args.exit_policy) if p.spec != "full"]
    inception = load_inception(None, device="cpu")
    ref_stats = load_statistics(config.sample.fid_stat)
    rows, ref_x0, ref_img = [], None, None
    for s in steps:
        for p in policies:
            t0 = time.perf_counter()
            rule = calibrate_policy(p, net, task, config, "cpu", steps=s)
            summary, x0 = calibration_run(net, task, config, rule, "cpu", steps=s, keep=True)
            img = task.decode(x0).clamp(0, 1)
            ref_x0 = x0 if ref_x0 is None else ref_x0
            ref_img = img if ref_img is None else ref_img
            acc = FIDAccumulator(inception)
            acc.update(images_to_uint8(img))
            fd = frechet_distance(*acc.compute(), *ref_stats)
            rows.append(dict(sample_steps=s, policy=p.spec, gflops_per_image=summary["gflops_per_image"],
                             mse_x0=proxy_distance(x0, ref_x0), mse_img=proxy_distance(img, ref_img),
                             fd_calib=fd, seconds=time.perf_counter() - t0))
            print(f"{s:>4} {p.spec:>14}  mse_x0 {rows[-1]['mse_x0']:.4g}  mse_img {rows[-1]['mse_img']:.4g}  "
                  f"fd_calib {fd:.2f}  ({rows[-1]['seconds']:.1f}s)", flush=True)
    return rows


def compare(rows, report_path, budgets):
    rows_ = json.load(open(report_path))
    report = {(r["sample_steps"], r["policy"]): r for r in (rows_["rows"] if isinstance(rows_, dict) else rows_)}
    both = [(r, report[(r["sample_steps"], r["policy"])]) for r in rows if (r["sample_steps"], r["policy"]) in report]
    fid = [m["fid"] for _, m in both]
    ref_gflops = max(m["gflops_per_image"] for _, m in both)
    print(f"\n{len(both)} points with a measured FID")
    for name in PROXIES:
        print(f"Spearman({name}, FID) = {spearman([r[name] for r, _ in both], fid):+.3f}")
    for b in budgets:
        under = [(r, m) for r, m in both if m["gflops_per_image"] <= b * ref_gflops + 1e-12]
        if not under:
            continue
        best = min(under, key=lambda rm: rm[1]["fid"])[1]
        line = f"budget {b:g}: best measured {best['policy']}@{best['sample_steps']} FID {best['fid']:.2f}"
        for name in PROXIES:
            m = min(under, key=lambda rm: rm[0][name])[1]
            line += f"; {name} picks {m['policy']}@{m['sample_steps']} FID {m['fid']:.2f} (+{m['fid'] - best['fid']:.2f})"
        print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnet_path", required=True)
    ap.add_argument("--exit_policy", default="0.9,profile:0.9,static:4")
    ap.add_argument("--sample_steps", default="10,12,15,20,50")
    ap.add_argument("--fid_stat", default="assets/fid_stats/fid_stats_digits8_train.npz")
    ap.add_argument("--calib_samples", type=int, default=64)
    ap.add_argument("--fid_report", default=None)
    ap.add_argument("--budgets", default="0.2,0.3,0.5")
    ap.add_argument("--out", default=None, help="write the proxies as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = get_config()
    config.sample.fid_stat, config.sample.calib_samples = args.fid_stat, args.calib_samples
    net = build_nnet(config.nnet)
    load_weights(net, args.nnet_path)
    net.eval()
    task = PixelTask(config, load_data=False)
    rows = candidates(args, config, net, task)
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1)
    if args.fid_report:
        compare(rows, args.fid_report, [float(b) for b in args.budgets.split(",")])


if __name__ == "__main__":
    main()
