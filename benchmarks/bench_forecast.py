"""Reuse rules on the calibration images: compute ratio and the budget's proxy per rule and
step count, and the plan ``search:R`` finds (no FID: seconds per rule, for screening).

For each step count: full depth's images on the calibration images (``config.sample.calib_samples``,
the calibration seed stream) are the reference; every rule runs on the same images and noise and
prints its GFLOPs/img over full depth's (``ratio``), the proxy (mean squared distance of its
images in [0, 1] to the reference's: ``libs/evaluation/calibration.py`` ``proxy_distance``), the
blocks computed, reused and (of those) forecast per call, the cache per image and the images' pixel standard
deviation (their contrast) beside full depth's. ``search:R`` rules print the plan
found, its action per call, and with ``--top`` the best plans under R the search scored.

    python benchmarks/bench_forecast.py --nnet_path=workdir/main_job/adadiff/ckpts/800.ckpt/nnet_ema.pth \
        --algorithm=unipc --sample_steps=10,12 \
        --rules=0.9,deepcache:2:1,forecast:2:1:1,forecast:2:1:2,gate:0.5:forecast:2:1:1,search:0.5
"""
import argparse
import json

import torch

from configs.digits_uvit_tiny import get_config
from libs.evaluation.calibration import calibrate_policy, calibration_run, proxy_distance
from libs.evaluation.frontier import spearman
from libs.evaluation.plan_search import CONTRAST_WEIGHT, contrast_gap
from libs.exits.policy import FULL, parse_policies
from libs.models.registry import build_nnet
from libs.run.checkpoint import load_weights
from libs.tasks.pixel import PixelTask


def distribution_gap(img, ref):
    """Per-element Gaussians of the two image sets compared (unpaired): the mean over elements of
    (mu - mu_ref)^2 + (sd - sd_ref)^2 (a candidate proxy, not the search's)."""
    x, r = img.double(), ref.double()
    return float(((x.mean(0) - r.mean(0)) ** 2 + (x.std(0) - r.std(0)) ** 2).mean())


def rows_at(steps, rules, net, task, config, top):
    """One row per rule at ``steps`` sampler steps (module docstring)."""
    summary, ref = calibration_run(net, task, config, FULL, "cpu", steps=steps, keep=True, images=True)
    full_g, rows = summary["gflops_per_image"], []
    for p in rules:
        rule = calibrate_policy(p, net, task, config, "cpu", steps=steps)
        s, img = calibration_run(net, task, config, rule, "cpu", steps=steps, keep=True, images=True)
        row = dict(sample_steps=steps, policy=p.spec, ratio=s["gflops_per_image"] / full_g,
                   gflops_per_image=s["gflops_per_image"], proxy=proxy_distance(img, ref),
                   blocks=s["mean_blocks"], reused=s["blocks_reused"], forecast=s["blocks_forecast"],
                   cache_kib=s["cache_bytes_per_image"] / 1024,
                   plan=rule.calibration(), contrast=float(img.std()), contrast_full=float(ref.std()),
                   gap=distribution_gap(img, ref), contrast_gap=contrast_gap(img, ref))
        rows.append(row)
        print(f"{steps:>3} {p.spec:<40} ratio {row['ratio']:.3f}  proxy {row['proxy']:.4g}  blocks {row['blocks']:.2f}"
              f" / reused {row['reused']:.2f} (forecast {row['forecast']:.2f})  cache {row['cache_kib']:.1f} KiB  pixel std {row['contrast']:.4f}"
              f" (full {row['contrast_full']:.4f})  search score {search_score(row):.4g}", flush=True)
        if row["plan"]:
            print(f"      {row['plan']}", flush=True)
        fits = sorted((d, c, spec) for spec, c, d in getattr(rule, "scored", ()) if c <= rule.ratio + 1e-9)
        for d, c, spec in fits[:top]:
            print(f"      scored {spec:<44} ratio {c:.3f}  score {d:.4g}", flush=True)
    return rows


def search_score(row):
    """What ``search:R`` minimises (``libs/evaluation/plan_search.py``)."""
    return row["proxy"] + CONTRAST_WEIGHT * row.get("contrast_gap", 0.0)


PROXIES = {  # candidate quality proxies of a row, compared against FID
    "squared distance (compute budget's proxy)": lambda r: r["proxy"],
    "contrast gap": lambda r: r.get("contrast_gap", 0.0),
    "distribution gap": lambda r: r.get("gap", 0.0),
    "search score (squared distance + 64 contrast gap)": search_score,
}


def measured(report_paths):
    """(steps, rule) -> a row of the report.json files (comma-separated); a search's row also
    under the plan it found (its calibration's first word)."""
    report = {}
    for path in report_paths.split(","):
        data = json.load(open(path))
        for r in (data["rows"] if isinstance(data, dict) else data):
            report[(r["sample_steps"], r["policy"])] = r
            if r["family"] == "search" and r["calibration"]:
                report[(r["sample_steps"], r["calibration"].split(" ")[0])] = r
    return report


def weight_sweep(exits, weights=(16, 32, 64, 128, 256)):
    """Spearman of squared distance + w x contrast gap with the paired FID differences, per w."""
    return ", ".join(f"{w}: {spearman([r['proxy'] + w * r.get('contrast_gap', 0.0) for r, _ in exits], [m['vs_full'] for _, m in exits]):+.3f}"
                     for w in weights)


def compare(rows, report_paths, budgets):
    """Spearman of each proxy (``PROXIES``) with the measured FIDs of the same (steps, rule)
    points of a full evaluation (``measured``), and per budget (a ratio of full depth's
    GFLOPs/img at the same step count) the FID each proxy's pick loses to the best measured point."""
    report = measured(report_paths)
    full = [dict(sample_steps=s, policy="full", ratio=1.0, proxy=0.0) for s in sorted({r["sample_steps"] for r in rows})]
    both = [(r, report[(r["sample_steps"], r["policy"])]) for r in full + rows
            if (r["sample_steps"], r["policy"]) in report]
    exits = [(r, m) for r, m in both if r["policy"] != "full"]
    counts = sorted({r["sample_steps"] for r, _ in both})
    print(f"squared distance + w x contrast gap, Spearman with FID - full's per w: {weight_sweep(exits)}")
    for name, proxy in PROXIES.items():
        per_steps = [spearman(*zip(*[(proxy(r), m["fid"]) for r, m in exits if r["sample_steps"] == s])) for s in counts]
        print(f"\n{name}: Spearman with FID {spearman([proxy(r) for r, _ in both], [m['fid'] for _, m in both]):+.3f} "
              f"({len(both)} points, full depth's included), with FID - full's (paired) "
              f"{spearman([proxy(r) for r, _ in exits], [m['vs_full'] for _, m in exits]):+.3f} ({len(exits)} exit "
              f"rows); per step count: " + ", ".join(f"{s}: {v:+.2f}" for s, v in zip(counts, per_steps)))
        for steps in counts:
            at = [(r, m) for r, m in both if r["sample_steps"] == steps]
            for b in budgets:
                under = [(r, m) for r, m in at if r["ratio"] <= b + 1e-9]
                if under:
                    best, pick = min(under, key=lambda rm: rm[1]["fid"]), min(under, key=lambda rm: proxy(rm[0]))
                    print(f"  {steps} steps, ratio <= {b:g}: best {best[0]['policy']} FID {best[1]['fid']:.2f}; it picks "
                          f"{pick[0]['policy']} FID {pick[1]['fid']:.2f} (+{pick[1]['fid'] - best[1]['fid']:.2f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnet_path", required=True)
    ap.add_argument("--rules", default="0.9,deepcache:2:1,forecast:2:1:1,forecast:2:1:2,search:0.5")
    ap.add_argument("--sample_steps", default="10,12")
    ap.add_argument("--algorithm", default="unipc")
    ap.add_argument("--calib_samples", type=int, default=64)
    ap.add_argument("--top", type=int, default=5, help="best plans under R a search scored, printed")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--rows", default=None, help="read the rows from this JSON (of --out) instead of sampling")
    ap.add_argument("--fid_report", default=None, help="report.json files (comma-separated) of evaluations of the same points")
    ap.add_argument("--budgets", default="0.5,0.7,1")
    args = ap.parse_args()
    if args.rows:
        return compare(json.load(open(args.rows)), args.fid_report, [float(b) for b in args.budgets.split(",")])
    torch.set_num_threads(1)
    config = get_config()
    config.sample.algorithm, config.sample.calib_samples = args.algorithm, args.calib_samples
    net = build_nnet(config.nnet)
    load_weights(net, args.nnet_path)
    net.eval()
    task = PixelTask(config, load_data=False)
    rules = [p for p in parse_policies(args.rules) if not p.is_full]
    rows = [r for s in (int(s) for s in args.sample_steps.split(",")) for r in rows_at(s, rules, net, task, config,
                                                                                         args.top)]
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1)
    if args.fid_report:
        compare(rows, args.fid_report, [float(b) for b in args.budgets.split(",")])


if __name__ == "__main__":
    main()
