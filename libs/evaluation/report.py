"""The evaluation report: one row per (step count, exit policy) of a sweep, written as
report.txt/.csv/.json, exit_block_per_step.csv, blocks_per_step.csv, budget.json (with a compute
budget) and tradeoff.png (FID against GFLOPs/img with one curve per policy across step counts, full
depth included, and the frontier through the Pareto points; FID against time; each row's
blocks computed, and reused from the cache, per sampling step).

Columns: ``sample_steps``, ``policy``, ``gflops_per_image``, ``compute_ratio`` (to the
reference run: full depth at the largest step count), ``fid`` and ``fid_se`` (bootstrap
standard error over the image set, ``libs/evaluation/fid_uncertainty.py``), ``seconds``,
``pareto`` (no other row has both GFLOPs/img <= and FID <=, one of them strictly;
``libs/evaluation/frontier.py``), ``mean_blocks`` (blocks computed per call), ``blocks_reused``
(mean per call taken from the reuse cache instead, ``libs/exits/reuse.py``), ``blocks_forecast`` (of those, the
mean per call whose cached value was a forecast, extrapolated from two or more cached values,
``libs/exits/forecast.py``; the rest were copies) and ``cache_kib_per_image`` (the cache's
memory per image, the largest a run held); report.txt prints the last three as ``reused``,
``forecast`` and ``cacheKiB``, and blocks_per_step.csv the blocks computed, reused and forecast
per sampling step of each row (columns ``<row> computed``, ``<row> reused``, ``<row> forecast``); the paired differences
(``libs/evaluation/paired.py``): ``vs_full`` (FID minus full depth's at the same step count)
and ``vs_steps`` (FID minus ``step_match``'s: step reduction at equal compute, the cheapest
full-depth row costing at least as much, or a cheaper one with a lower FID), each with its
paired bootstrap standard error (``*_se``), and ``beats_steps`` (below the match by more than 2
of them). report.txt prints them in a second table and ends with one
verdict line per exit rule. report.json holds null where a value is missing (NaN).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


@dataclass
class PolicyResult:
    """One (step count, policy) pair of a sweep. ``threshold`` is the certainty threshold it
    ran at (NaN for static and profile rules); ``calibration`` what calibration found (budget:
    the threshold, profile: the exit block per step); ``slug`` names its grid file;
    ``compile_seconds`` the time of the calls that compiled (``config.sample.compile``), left
    out of ``seconds`` and so of the speedup (compiled against compiled full depth)."""

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
    sample_steps: int = 0
    algorithm: str = ""
    fid_se: float = float("nan")
    compute_ratio: float = 1.0
    speedup: float = 1.0
    pareto: bool = False
    calibration: str = ""
    slug: str = ""
    compile_seconds: float = 0.0
    exit_block_per_step: list = field(default_factory=list)
    blocks_reused: float = 0.0
    cache_kib_per_image: float = 0.0
    blocks_computed_per_step: list = field(default_factory=list)
    blocks_reused_per_step: list = field(default_factory=list)
    blocks_forecast: float = 0.0  # of blocks_reused, per call: forecast rather than copied
    blocks_forecast_per_step: list = field(default_factory=list)
    precision: str = "fp32"  # the arithmetic the sampling really used (libs/run/distributed.py precision_used)
    processes: int = 1  # processes that shared the images
    # paired differences (libs/evaluation/paired.py); NaN / '' on full-depth rows
    vs_full: float = float("nan")
    vs_full_se: float = float("nan")
    step_match: str = ""
    vs_steps: float = float("nan")
    vs_steps_se: float = float("nan")
    beats_steps: bool = False

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.endswith("_per_step")}

    @property
    def label(self) -> str:
        return f"{self.policy} @{self.sample_steps}"


COLUMNS = ("sample_steps", "policy", "family", "threshold", "gflops_per_image", "compute_ratio", "fid", "fid_se",
           "pareto", "layer_ratio", "mean_blocks", "blocks_reused", "blocks_forecast", "seconds", "images_per_s", "speedup",
           "compile_seconds", "n_images", "cache_kib_per_image", "algorithm", "calibration", "precision", "processes",
           "vs_full", "vs_full_se", "step_match", "vs_steps", "vs_steps_se", "beats_steps")


def _json_safe(value):
    """NaN/inf -> None, recursively: report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_table(results: Sequence[PolicyResult], choice: Optional[dict] = None) -> str:
    width = max([len("policy")] + [len(r.policy) for r in results])
    head = (f"{'steps':>5} {'policy':>{width}} {'GFLOPs/img':>10} {'ratio':>6} {'FID':>8} {'+-2se':>6} "
            f"{'layers':>6} {'reused':>6} {'forecast':>8} {'cacheKiB':>8} {'time(s)':>7} {'speedup':>7} {'compile(s)':>10}  pareto")
    lines = [head]
    for r in results:
        lines.append(f"{r.sample_steps:>5} {r.policy:>{width}} {r.gflops_per_image:>10.4g} {r.compute_ratio:>6.3f} "
                     f"{r.fid:>8.3f} {2 * r.fid_se:>6.2f} {r.layer_ratio:>6.3f} {r.blocks_reused:>6.2f} "
                     f"{r.blocks_forecast:>8.2f} {r.cache_kib_per_image:>8.1f} "
                     f"{r.seconds:>7.1f} {r.speedup:>7.2f} {r.compile_seconds:>10.1f}  {'*' if r.pareto else ''}")
    lines += ["", "FID +-2se: bootstrap standard error over the evaluated images' Inception features; layers: blocks "
              "computed per call over all blocks; reused: blocks per call taken from the reuse cache, forecast: of those, "
              "extrapolated (the rest copied); cacheKiB: the reuse cache per image"]
    frontier = sorted((r for r in results if r.pareto), key=lambda r: r.gflops_per_image)
    if frontier:
        lines += ["", "frontier (* above; no other row has both fewer or equal GFLOPs/img and lower or equal FID):"]
        lines += [f"  {r.sample_steps} steps, {r.policy}: {r.gflops_per_image:.4g} GFLOPs/img "
                  f"({r.compute_ratio:.3f} of the reference), FID {r.fid:.2f} +- {2 * r.fid_se:.2f}"
                  for r in frontier]
    lines += format_paired(results)
    notes = [f"{r.label}: {r.calibration}" for r in results if r.calibration]
    if notes:
        lines += ["", "calibrated:"] + [f"  {n}" for n in notes]
    if choice:
        lines += ["", format_choice(choice)]
    return "\n".join(lines)


def format_paired(results: Sequence[PolicyResult]) -> list:
    """The paired differences of the exit rows and the verdicts (libs/evaluation/paired.py)."""
    from libs.evaluation.paired import verdict_lines

    rows = [r for r in results if r.family != "full"]
    if not rows or not any(math.isfinite(r.fid) for r in rows):
        return []
    width = max(len("policy"), *(len(r.policy) for r in rows))
    lines = ["", "paired FID differences (+-2se: paired bootstrap, the images resampled jointly; step reduction: the "
             "cheapest full-depth row costing at least as much, or a cheaper one with a lower FID):",
             f"{'steps':>5} {'policy':>{width}} {'vs full, same steps':>19} {'+-2se':>6}  {'step reduction':>14} "
             f"{'costs':>6} {'vs it':>7} {'+-2se':>6}  beats it"]
    for r in rows:
        costs, vs_it = "", f"{'-':>7} {'-':>6}"  # no full-depth row costs as much: nothing to compare with
        if r.step_match:
            match = next(q for q in results if q.label == r.step_match)
            costs = f"{match.gflops_per_image / r.gflops_per_image:.2f}x"
            vs_it = f"{r.vs_steps:>+7.2f} {2 * r.vs_steps_se:>6.2f}"
        lines.append(f"{r.sample_steps:>5} {r.policy:>{width}} {r.vs_full:>+19.2f} {2 * r.vs_full_se:>6.2f}  "
                     f"{r.step_match or 'none':>14} {costs:>6} {vs_it}  {'yes' if r.beats_steps else ''}")
    return lines + [""] + verdict_lines(results)


def format_choice(choice: dict) -> str:
    """The compute budget's choice and every candidate's proxy value."""
    c = choice["candidates"][choice["chosen"]]
    lines = [f"compute budget {choice['budget']:g}: chose {c['policy']} at {c['sample_steps']} steps "
             f"(compute ratio {c['compute_ratio']:.3f}); proxy = {choice['proxy']}:"]
    for i, k in enumerate(choice["candidates"]):
        mark = "  <- chosen" if i == choice["chosen"] else ("" if k["compute_ratio"] <= choice["budget"] + 1e-12
                                                             else "  (over budget)")
        lines.append(f"  {k['sample_steps']:>4} steps {k['policy']:>16}  ratio {k['compute_ratio']:.3f}  "
                     f"proxy {k['proxy']:.4g}{mark}")
    return "\n".join(lines)


def write_report(results: Sequence[PolicyResult], output_dir, choice: Optional[dict] = None) -> None:
    """report.csv, report.json, report.txt, exit_block_per_step.csv, blocks_per_step.csv, budget.json and
    tradeoff.png."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(r.row() for r in results)
    (output_dir / "report.json").write_text(json.dumps(_json_safe([asdict(r) for r in results]), indent=2,
                                                       allow_nan=False))
    if choice is not None:
        (output_dir / "budget.json").write_text(json.dumps(_json_safe(choice), indent=2, allow_nan=False))
    (output_dir / "report.txt").write_text(format_table(results, choice) + "\n")
    np.savetxt(output_dir / "exit_block_per_step.csv", _padded([r.exit_block_per_step for r in results]), delimiter=",",
               header=",".join(r.label for r in results), comments="")
    blocks = {f"{r.label} {kind}": getattr(r, f"blocks_{kind}_per_step") for r in results
              for kind in ("computed", "reused", "forecast")}
    np.savetxt(output_dir / "blocks_per_step.csv", _padded(list(blocks.values())), fmt="%.6g", delimiter=",",
               header=",".join(blocks), comments="")
    plot_report(results, output_dir / "tradeoff.png")


def _padded(columns: Sequence[list]) -> np.ndarray:
    """(longest, len(columns)): the columns side by side, NaN below the shorter ones (rows of
    different step counts have different lengths)."""
    table = np.full((max([len(c) for c in columns] + [0]), len(columns)), np.nan)
    for j, c in enumerate(columns):
        table[:len(c), j] = c
    return table


# family -> (colour, marker and line of the trade-off curves, line of the per-step panel)
_STYLE = {"threshold": ("C0", "o-", "-"), "budget": ("C1", "D-", "-"), "static": ("C2", "s--", "--"),
          "profile": ("C3", "^-.", "-."), "deepcache": ("C4", "v-", "-"), "phase": ("C5", "P-", "-"),
          "plan": ("C6", "X-", "-"), "full": ("k", "*-", ":")}


def _curves(ax, results, key):
    """One curve per policy across step counts (colour: its family), points labelled by steps."""
    for spec in dict.fromkeys(r.policy for r in results):
        rows = sorted((r for r in results if r.policy == spec), key=lambda r: getattr(r, key))
        color, style, _ = _STYLE.get(rows[0].family, ("C4", "x-", "-"))
        xs, ys = [getattr(r, key) for r in rows], [r.fid for r in rows]
        ax.plot(xs, ys, style, color=color, label=spec, markersize=9 if rows[0].family == "full" else 5)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r.sample_steps), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)


def plot_report(results: Sequence[PolicyResult], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 4.6))
    _curves(axes[0], results, "gflops_per_image")
    front = sorted((r for r in results if r.pareto), key=lambda r: r.gflops_per_image)
    if front:
        axes[0].plot([r.gflops_per_image for r in front], [r.fid for r in front], color="0.5", lw=6, alpha=0.3,
                     zorder=0, label="frontier (Pareto points)")
    _curves(axes[1], results, "seconds")
    for ax, xlabel in ((axes[0], "GFLOPs per image"), (axes[1], "sampling time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("FID vs compute (numbers: sampler steps; lower left is better)")
    axes[1].set_title("FID vs time")
    for r in results:
        line = _STYLE.get(r.family, ("", "", "-"))[2]  # colours: one per row; line style: its family
        computed = r.blocks_computed_per_step or [b + 1 for b in r.exit_block_per_step]
        drawn = axes[2].plot(range(1, len(computed) + 1), computed, line, alpha=0.9, label=r.label, lw=1.2)
        if any(r.blocks_reused_per_step):
            axes[2].plot(range(1, len(computed) + 1), r.blocks_reused_per_step, ":", color=drawn[0].get_color(),
                         alpha=0.9, lw=1.2, label=f"{r.label} (reused)")
        if any(r.blocks_forecast_per_step):
            axes[2].plot(range(1, len(computed) + 1), r.blocks_forecast_per_step, "-.", color=drawn[0].get_color(),
                         alpha=0.9, lw=1.0, label=f"{r.label} (forecast)")
    axes[2].set_xlabel("sampling step (network call; 1 = noisiest)")
    axes[2].set_ylabel("mean blocks computed (dotted: reused, dash-dot: forecast)")
    axes[2].set_title("blocks per sampling step")
    axes[2].legend(fontsize=6, ncol=2)
    axes[2].grid(alpha=0.3)
    _paired_panel(axes[3], results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _paired_panel(ax, results: Sequence[PolicyResult]) -> None:
    """Each exit row's FID minus its step-reduction match's, +-2 paired standard errors."""
    for spec in dict.fromkeys(r.policy for r in results if r.family != "full"):
        rows = sorted((r for r in results if r.policy == spec and r.step_match), key=lambda r: r.gflops_per_image)
        if rows:
            color, style, _ = _STYLE.get(rows[0].family, ("C4", "x-", "-"))
            ax.errorbar([r.gflops_per_image for r in rows], [r.vs_steps for r in rows],
                        yerr=[2 * r.vs_steps_se for r in rows], fmt=style, color=color, capsize=3, label=spec)
            for r in rows:
                ax.annotate(f"{r.sample_steps} vs {r.step_match.split('@')[-1]}", (r.gflops_per_image, r.vs_steps),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("FID minus step reduction's (+-2 paired se)")
    ax.set_title("vs the cheapest full-depth row costing as much\n(below 0: exit beats fewer steps)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
