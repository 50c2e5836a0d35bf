"""The evaluation report: one row per exit policy of a sweep, written as report.txt/.csv/.json,
exit_block_per_step.csv and tradeoff.png (FID against layer ratio and against time, one curve
per policy family, and each policy's blocks computed, and reused from the cache, per sampling
step)."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class PolicyResult:
    """One policy of a sweep. ``threshold`` is the certainty threshold it ran at (NaN for
    static and profile rules); ``calibration`` what calibration found (budget: the
    threshold, profile: the exit block per step). ``mean_blocks`` counts blocks computed;
    ``blocks_reused`` the mean per call taken from the reuse cache instead
    (libs/exits/reuse.py), ``cache_kib_per_image`` the cache's memory per image."""

    policy: str
    family: str
    threshold: float
    n_images: int
    fid: float
    mean_blocks: float
    layer_ratio: float
    gflops_per_image: float
    seconds: float
    images_per_s: float
    speedup: float = 1.0
    calibration: str = ""
    exit_block_per_step: list = field(default_factory=list)
    blocks_reused: float = 0.0
    cache_kib_per_image: float = 0.0
    blocks_computed_per_step: list = field(default_factory=list)
    blocks_reused_per_step: list = field(default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_per_step")}


COLUMNS = ("policy", "family", "threshold", "fid", "layer_ratio", "mean_blocks", "blocks_reused", "gflops_per_image",
           "seconds", "images_per_s", "speedup", "n_images", "cache_kib_per_image", "calibration")


def format_table(results: Sequence[PolicyResult]) -> str:
    width = max([len("policy")] + [len(r.policy) for r in results])
    head = f"{'policy':>{width}} {'FID':>8} {'layers':>7} {'blocks':>7} {'reused':>7} {'GFLOPs/img':>11} " \
           f"{'time(s)':>8} {'img/s':>8} {'speedup':>8}"
    lines = [head]
    for r in results:
        lines.append(f"{r.policy:>{width}} {r.fid:>8.3f} {r.layer_ratio:>7.3f} {r.mean_blocks:>7.2f} "
                     f"{r.blocks_reused:>7.2f} {r.gflops_per_image:>11.4g} {r.seconds:>8.1f} {r.images_per_s:>8.2f} "
                     f"{r.speedup:>8.2f}")
    notes = [f"{r.policy}: {r.calibration}" for r in results if r.calibration]
    if notes:
        lines += ["", "calibrated:"] + [f"  {n}" for n in notes]
    return "\n".join(lines)


def write_report(results: Sequence[PolicyResult], output_dir) -> None:
    """report.csv, report.json, report.txt, exit_block_per_step.csv and tradeoff.png."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow({k: r.row()[k] for k in COLUMNS})
    (output_dir / "report.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (output_dir / "report.txt").write_text(format_table(results) + "\n")
    np.savetxt(output_dir / "exit_block_per_step.csv", np.array([r.exit_block_per_step for r in results]).T,
               delimiter=",", header=",".join(r.policy for r in results), comments="")
    plot_report(results, output_dir / "tradeoff.png")


# family -> (colour, marker and line of the trade-off curves, line of the per-step panel)
_STYLE = {"threshold": ("C0", "o-", "-"), "budget": ("C1", "D", "-"), "static": ("C2", "s--", "--"),
          "profile": ("C3", "^-.", "-."), "deepcache": ("C4", "v-", "-"), "phase": ("C5", "P-", "-"),
          "plan": ("C6", "X", "-"), "full": ("k", "*", ":")}


def plot_report(results: Sequence[PolicyResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    full = [r for r in results if r.family == "full"]
    for ax, key, xlabel in ((axes[0], "layer_ratio", "layer ratio (blocks run / all blocks)"),
                            (axes[1], "seconds", "sampling time (s)")):
        for family, (color, style, _) in _STYLE.items():
            if family == "full":
                continue
            rows = sorted((r for r in results if r.family == family), key=lambda r: getattr(r, key))
            if not rows:
                continue
            xs, ys = [getattr(r, key) for r in rows], [r.fid for r in rows]
            ax.plot(xs, ys, style, color=color, label=family)
            for r, x, y in zip(rows, xs, ys):
                ax.annotate(r.policy.split(":")[-1], (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)
        for r in full:
            ax.plot([getattr(r, key)], [r.fid], "k*", markersize=11, label="full depth")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("FID vs layers (lower left is better)")
    axes[1].set_title("FID vs time")
    for r in results:
        line = _STYLE.get(r.family, ("", "", "-"))[2]  # colours: one per policy; line style: its family
        computed = r.blocks_computed_per_step or [b + 1 for b in r.exit_block_per_step]
        drawn = axes[2].plot(range(1, len(computed) + 1), computed, line, alpha=0.9, label=r.policy, lw=1.2)
        if any(r.blocks_reused_per_step):
            axes[2].plot(range(1, len(computed) + 1), r.blocks_reused_per_step, ":", color=drawn[0].get_color(),
                         alpha=0.9, lw=1.2, label=f"{r.policy} (reused)")
    axes[2].set_xlabel("sampling step (network call; 1 = noisiest)")
    axes[2].set_ylabel("mean blocks computed (dotted: reused)")
    axes[2].set_title("blocks per sampling step")
    axes[2].legend(fontsize=7, ncol=2)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
