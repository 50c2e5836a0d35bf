"""Paired FID differences (libs/evaluation/paired.py): known answers on synthetic features, the
step-reduction match at its edges, the report's columns and verdicts, and the main job's
verdict line from a tiny run."""
import csv
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from libs.evaluation.fid import frechet_distance, statistics_from_features
from libs.evaluation.fid_uncertainty import bootstrap_indices, resampled_fids
from libs.evaluation.paired import (VERDICT_PATTERN, add_paired_columns, paired_difference, paired_se,
                                    step_reduction_match, verdict_lines)
from libs.evaluation.report import PolicyResult, format_table

ROOT = Path(__file__).resolve().parents[2]


def _features(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3


def _ref(d=12, seed=9):
    return statistics_from_features(np.random.default_rng(seed).normal(size=(300, d)))


def test_identical_sets_differ_by_zero_with_zero_error():
    X = _features()
    diff, se = paired_difference(X, X.copy(), *_ref(), resamples=20)
    assert diff == 0.0 and se == 0.0


def test_a_shifted_copy_differs_by_its_known_fid():
    """Against the statistics of A itself, FID(A) = 0 and FID(A + c) = |c|^2 (same covariance)."""
    X = _features()
    c = np.linspace(-1, 1, X.shape[1])
    diff, se = paired_difference(X + c, X, *statistics_from_features(X), resamples=30)
    assert diff == pytest.approx(float(c @ c), rel=1e-8)
    # each resample's difference is |c|^2 + 2 c.(mu_b - mu): its spread is that of 2 c.mu_b
    idx = bootstrap_indices(len(X), 30)
    expected = np.std([2 * c @ X[i].mean(0) for i in idx], ddof=1)
    assert se == pytest.approx(expected, rel=1e-6)


def test_joint_resampling_is_tighter_than_independent_on_correlated_sets():
    rng = np.random.default_rng(1)
    shared = _features(n=80, seed=2)  # the noise both sets were sampled from
    a = shared + 0.05 * rng.normal(size=shared.shape)
    b = shared + 0.05 * rng.normal(size=shared.shape) + 0.1
    ref = _ref()
    _, joint = paired_difference(a, b, *ref, resamples=40)
    independent = paired_se(resampled_fids(a, *ref, bootstrap_indices(80, 40, seed=0)),
                            resampled_fids(b, *ref, bootstrap_indices(80, 40, seed=1)))
    assert 0 < joint < independent / 3


def test_paired_difference_refuses_unpaired_sets():
    with pytest.raises(ValueError, match="same shape"):
        paired_difference(_features(n=10), _features(n=11), *_ref())


@pytest.mark.parametrize("cost,full,expected", [
    (0.5, [1.0, 0.6, 0.4], 1),  # the cheapest of those costing at least as much
    (0.6, [1.0, 0.6, 0.4], 1),  # equal cost counts
    (0.6 * (1 + 1e-12), [1.0, 0.6], 1),  # equal up to round-off
    (0.3, [1.0, 0.6, 0.4], 2),  # cheaper than every full row: the cheapest
    (1.2, [1.0, 0.6, 0.4], None),  # no full row costs as much: no match
    (0.5, [0.7, 0.6, 0.6], 1),  # tied full rows: the first
    (0.5, [], None),
])
def test_step_reduction_match(cost, full, expected):
    assert step_reduction_match(cost, full) == expected


@pytest.mark.parametrize("cost,full,fids,expected", [
    (0.5, [1.0, 0.6, 0.4], [10.0, 11.0, 12.0], 1),  # more steps, better FID: the match itself
    (0.5, [1.0, 0.6, 0.4], [12.0, 11.0, 10.0], 2),  # fewer steps are better: the best affordable row
    (0.45, [1.0, 0.6, 0.4], [9.0, 11.0, 10.0], 2),  # the costlier, better 1.0 is not affordable
    (0.5, [1.0, 0.6, 0.4], [12.0, 10.0, 10.0], 2),  # equal FID: the cheaper
    (1.2, [1.0, 0.6, 0.4], [12.0, 11.0, 10.0], None),
    (0.5, [1.0, 0.6, 0.4], [12.0, float("nan"), 10.0], 1),  # no FID (no reference statistics): cost alone
])
def test_step_reduction_match_on_a_model_that_gets_worse_with_more_steps(cost, full, fids, expected):
    assert step_reduction_match(cost, full, fids) == expected


def test_an_exit_rule_that_never_exits_does_not_beat_fewer_steps():
    """mnist5k's case: full depth is better at 6 steps than at 10; a rule that never exits costs a
    little more than full depth at 6 (its heads run) and has its FID. Matched with 10 full steps
    it would 'beat' them; step reduction's best within that compute is 6 full steps: a tie."""
    rows = [_row(10, "full", 0.79, 110.0), _row(6, "full", 0.474, 97.0), _row(6, "threshold:0.95", 0.482, 97.0)]
    rng = np.random.default_rng(1)
    noise = rng.normal(size=50)
    add_paired_columns(rows, [r.fid + noise + 0.1 * rng.normal(size=50) for r in rows])
    thr = rows[2]
    assert thr.step_match == "full @6" and not thr.beats_steps and abs(thr.vs_steps) < 1e-9
    (line,) = verdict_lines(rows)
    assert VERDICT_PATTERN.match(line)["outcome"] == "ties with" and "which costs 2% less" in line

    # the same images as full depth (zero difference, zero error) is a tie the verdict prefers to a loss
    rows.append(_row(10, "threshold:0.95", 0.78, 110.0))
    add_paired_columns(rows, [np.full(50, r.fid) for r in rows])
    assert rows[2].vs_steps == 0 and rows[2].vs_steps_se == 0 and rows[3].vs_steps > 0
    (line,) = [x for x in verdict_lines(rows) if "0.95" in x]
    assert VERDICT_PATTERN.match(line)["steps"] == "6" and VERDICT_PATTERN.match(line)["outcome"] == "ties with"


def _row(steps, policy, gflops, fid):
    family = "full" if policy == "full" else policy.split(":")[0]
    return PolicyResult(policy=policy, family=family, threshold=1.0, n_images=4, fid=fid, mean_blocks=1.0,
                        layer_ratio=1.0, gflops_per_image=gflops, seconds=1.0, images_per_s=4.0, sample_steps=steps)


def _sweep():
    rows = [_row(12, "full", 0.651, 18.0), _row(12, "threshold:0.9", 0.441, 18.1),
            _row(10, "full", 0.543, 18.8), _row(10, "threshold:0.9", 0.364, 18.9),
            _row(8, "full", 0.434, 21.0), _row(8, "threshold:0.9", 0.29, 23.5)]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=50)  # shared by every row: the paired errors stay small
    boots = [r.fid + noise + 0.1 * rng.normal(size=50) for r in rows]
    return rows, boots


def test_paired_columns_and_verdicts():
    rows, boots = _sweep()
    add_paired_columns(rows, boots)
    full12, thr12, _, thr10, _, thr8 = rows
    assert math.isnan(full12.vs_full) and full12.step_match == ""  # full rows are the baselines
    assert thr12.vs_full == pytest.approx(0.1) and thr12.vs_full_se == pytest.approx(np.std(boots[1] - boots[0], ddof=1))
    assert thr12.step_match == "full @10" and thr12.vs_steps == pytest.approx(-0.7) and thr12.beats_steps
    assert thr10.step_match == "full @8" and thr10.vs_steps == pytest.approx(-2.1) and thr10.beats_steps
    assert thr8.step_match == "full @8" and thr8.vs_steps == pytest.approx(2.5) and not thr8.beats_steps
    (line,) = verdict_lines(rows)  # one exit rule: one line, at its most certain gain
    m = VERDICT_PATTERN.match(line)
    assert m and m["policy"] == "threshold:0.9" and m["steps"] == "10" and m["outcome"] == "beats"
    assert "with 0.67 of its compute" in line and "2.10 +- " in line and "full depth at 8 steps, which costs 19% more" in line
    table = format_table(rows)
    assert "paired FID differences" in table and table.rstrip().endswith(line)


def test_verdict_without_a_match_or_bootstrap():
    rows = [_row(4, "full", 0.2, 20.0), _row(4, "static:2", 0.3, 19.0)]  # costs more than every full row
    add_paired_columns(rows, [None, None])
    assert math.isnan(rows[1].vs_full_se) and rows[1].step_match == "" and not rows[1].beats_steps
    (line,) = verdict_lines(rows)
    assert VERDICT_PATTERN.match(line)["outcome"] == "no step-reduction"
    row = next(x for x in format_table(rows).splitlines() if x.split()[:2] == ["4", "static:2"] and "none" in x)
    assert "nan" not in row.split("none")[1] and row.split("none")[1].split() == ["-", "-"]  # not "+nan nan"


@pytest.mark.slow
def test_main_job_ends_with_a_verdict_line_per_exit_rule(trained, tmp_path):
    """scripts/main_job.sh on a few images and steps; its features are written and tools/fid.py
    recomputes a row's FID from them."""
    _, ref = trained
    env = {**os.environ, "WORKDIR": str(tmp_path / "job"), "FID_STAT": str(ref), "STEPS": "2", "N_SAMPLES": "12",
           "SAMPLE_STEPS": "3,4", "EXIT_POLICIES": "0.9,profile:0.9", "EVAL_ARGS": "--config.sample.save_features=True "
           "--config.sample.mini_batch_size=12 --config.sample.grid_size=4 --config.sample.calib_samples=12"}
    r = subprocess.run(["bash", "scripts/main_job.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    verdicts = [VERDICT_PATTERN.match(x) for x in lines[-2:]]
    assert all(verdicts) and [v["policy"] for v in verdicts] == ["threshold:0.9", "profile:0.9"]
    features = tmp_path / "job/eval/features/4steps_full.npy"
    x = np.load(features)
    assert x.dtype == np.float32 and x.shape == (12, 2048)
    from libs.evaluation.fid import load_statistics
    from tools import fid as fid_cli

    with open(tmp_path / "job/eval/report.csv") as f:
        fid = float(next(csv.DictReader(f))["fid"])  # the first row: full depth at 4 steps
    expected = frechet_distance(*statistics_from_features(x.astype(np.float64)), *load_statistics(ref))
    assert fid_cli.main([str(features), str(ref)]) == pytest.approx(expected, rel=1e-9)
    assert fid == pytest.approx(expected, rel=1e-4)

    # tools/paired.py recomputes every row's FID and paired columns from the saved features
    from tools import paired as paired_cli

    with open(tmp_path / "job/eval/report.json") as f:
        report = json.load(f)
    again = paired_cli.main([str(tmp_path / "job/eval"), str(ref)])
    assert [r.slug for r in again] == [row["slug"] for row in report]
    for r, row in zip(again, report):
        assert r.fid == pytest.approx(row["fid"], rel=1e-4)
        if row["vs_full"] is not None:
            assert r.vs_full == pytest.approx(row["vs_full"], abs=1e-3) and r.step_match == row["step_match"]
            if row["vs_steps_se"] is None:  # no full-depth row costs as much
                assert not math.isfinite(r.vs_steps_se)
            else:
                assert r.vs_steps_se == pytest.approx(row["vs_steps_se"], rel=1e-2, abs=1e-3)


def test_the_paired_tool_names_what_is_missing(tmp_path, capsys):
    from tools import paired as paired_cli

    with pytest.raises(FileNotFoundError, match=r"report\.json' does not exist: give the --output_path"):
        paired_cli.paired_report(str(tmp_path), "unused.npz")
