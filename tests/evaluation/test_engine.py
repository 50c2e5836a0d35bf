"""Evaluation engine: compute accounting, and eval.py end to end on digits (exit policies:
tests/exits/test_policy.py)."""
import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from libs.exits.recorder import ExitRecorder
from libs.models.uvit import UViT

ROOT = Path(__file__).resolve().parents[2]
TINY_NNET = ["--config.nnet.embed_dim=32", "--config.nnet.depth=2", "--config.nnet.num_heads=2"]


def test_exit_recorder_summary_matches_flops():
    nnet = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=-1)
    flops = UViT(**nnet).flops()
    rec = ExitRecorder(num_blocks=5)
    for _ in range(2):  # two batches of a 3-call sampler; threshold rule: a head after every block but the last
        rec.start_run()
        for exits in ([1, 4], [2, 2], [4, 4]):
            exits = torch.tensor(exits)
            rec.record(exits, (exits + 1).clamp(max=4))
    s = rec.summary(flops, num_images=4)
    exits = [1, 4, 2, 2, 4, 4] * 2
    assert s["mean_blocks"] == pytest.approx(np.mean(exits) + 1)
    assert s["layer_ratio"] == pytest.approx((np.mean(exits) + 1) / 5)
    assert s["exit_block_per_step"] == pytest.approx([2.5, 2.0, 4.0])
    uems = [min(k + 1, 4) for k in exits]
    assert s["gflops_per_image"] * 1e9 == pytest.approx(flops.mean_call(exits, uems) * 12 / 4)


def test_exit_recorder_one_row_calls_count_as_tensor_calls():
    """One-row calls (Python ints, counted on the host) and batched calls add up the same,
    also when the counts were made under inference mode and recorded outside it."""
    mixed, tensors = ExitRecorder(num_blocks=5), ExitRecorder(num_blocks=5)
    calls = [[(3, 4)], [(1, 2), (4, 4)], [(0, 0)], [(2, 3)]]  # (exit block, heads) per row, per call
    for run in range(3):
        for rec in (mixed, tensors):
            rec.start_run()
        with torch.inference_mode(run == 0):  # run 0 makes the count tensors under inference mode
            for rows in calls:
                exits, heads = (torch.tensor(v) for v in zip(*rows))
                tensors.record(exits, heads)
                if len(rows) == 1:
                    mixed.record_one(*rows[0])
                else:
                    mixed.record(exits, heads)
    assert torch.equal(mixed.counts, tensors.counts) and mixed.counts.sum() == 3 * 5
    assert int(mixed.head_evals) == int(tensors.head_evals) == 3 * 13
    assert mixed.summary(None, 3) == tensors.summary(None, 3)


def test_one_row_forward_hands_the_recorder_python_ints():
    net = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=4, num_heads=2, num_classes=-1).eval()
    rec = ExitRecorder(net.num_blocks)
    with torch.no_grad():
        for policy in ("full", 0.5, 0.0):
            kw = {} if policy == "full" else {"exit_threshold": policy}
            out = net.forward_early_exit(torch.randn(1, 1, 8, 8), torch.rand(1), **kw)
            assert isinstance(out.one_row, tuple) and out.exit_block.tolist() == [out.one_row[0]]
            assert out.uem_evals.tolist() == [out.one_row[1]]
            rec.wrap(net, 1.0 if policy == "full" else policy)(torch.randn(1, 1, 8, 8), torch.rand(1))
        out = net.forward_early_exit(torch.randn(2, 1, 8, 8), torch.rand(2), exit_threshold=0.5)
        assert out.one_row is None and out.exit_block.shape == (2,)
    assert int(rec.counts.sum()) == 3


def _eval(args, cwd=ROOT, processes=1, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1" if processes > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               "eval.py"]
    else:
        cmd = [sys.executable, "eval.py"]
    return subprocess.run(cmd + ["--config=configs/digits_uvit_tiny.py"] + TINY_NNET + args, cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_eval_sweep_end_to_end(trained, tmp_path):
    nnet, ref = trained
    r = _eval([f"--nnet_path={nnet}", "--exit_threshold=0.5,0.7,0.9", f"--output_path={tmp_path}",
               f"--config.sample.fid_stat={ref}", "--config.sample.n_samples=24",
               "--config.sample.mini_batch_size=12", "--config.sample.sample_steps=10",
               "--config.sample.grid_size=16"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "policy" in r.stdout and "speedup" in r.stdout and "full" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "report.csv")))
    assert [x["policy"] for x in rows] == ["full", "threshold:0.5", "threshold:0.7", "threshold:0.9"]
    assert [float(x["threshold"]) for x in rows] == [1.0, 0.5, 0.7, 0.9]
    for row in rows:
        assert np.isfinite(float(row["fid"])) and float(row["fid"]) > 0
        assert 0 < float(row["layer_ratio"]) <= 1 and float(row["gflops_per_image"]) > 0
    assert float(rows[0]["layer_ratio"]) == 1.0 and float(rows[0]["speedup"]) == 1.0
    ratios = [float(x["layer_ratio"]) for x in rows[1:]]
    assert ratios == sorted(ratios)  # lower thresholds never run more blocks
    for name in ("tradeoff.png", "report.json", "report.txt", "exit_block_per_step.csv", "grid_full.png",
                 "grid_threshold_0.9.png", "grid_threshold_0.7.png", "grid_threshold_0.5.png", "config.json"):
        assert (tmp_path / name).is_file(), name


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).glob("*.png")}


@pytest.mark.slow
def test_two_process_eval_writes_exactly_n_distinct_images(trained, tmp_path):
    nnet, _ = trained
    common = [f"--nnet_path={nnet}", "--exit_threshold=0.7", "--config.sample.fid_stat=",
              "--config.sample.n_samples=10", "--config.sample.mini_batch_size=3", "--config.sample.sample_steps=5"]
    r = _eval(common + [f"--output_path={tmp_path / 'two'}", f"--config.sample.path={tmp_path / 'two/png'}"],
              processes=2)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = _eval(common + [f"--output_path={tmp_path / 'one'}", f"--config.sample.path={tmp_path / 'one/png'}"])
    assert r1.returncode == 0, r1.stderr[-3000:]
    for tau in ("full", "threshold_0.7"):
        two = _digests(tmp_path / "two/png" / tau)
        assert sorted(two) == sorted(f"{i}.png" for i in range(10))
        assert len(set(two.values())) == 10  # distinct images
        assert two == _digests(tmp_path / "one/png" / tau)  # same images whatever the process count


@pytest.mark.slow
def test_eval_errors(trained, tmp_path):
    nnet, _ = trained
    r = _eval([f"--nnet_path={nnet}", "--exit_threshold=1.3", f"--output_path={tmp_path}"])
    assert r.returncode != 0 and "out of range" in r.stderr
    r = _eval(["--exit_threshold=0.9", f"--output_path={tmp_path}"])
    assert r.returncode != 0 and "--nnet_path" in r.stderr
    r = _eval([f"--nnet_path={nnet}", f"--config.sample.fid_stat={tmp_path / 'missing.npz'}",
               f"--output_path={tmp_path}", "--config.sample.n_samples=2"])
    assert r.returncode != 0 and "make_fid_stats.py" in r.stderr
    r = _eval([f"--nnet_path={nnet}", "--config.nnet.embed_dim=64", f"--output_path={tmp_path}"])
    assert r.returncode != 0 and "shape mismatch" in r.stderr


def _sweep(trained_digits, tmp_path, policies="0.5,profile:0.5", **sample):
    from accelerate import Accelerator

    from libs.evaluation.engine import evaluate
    from libs.tasks.pixel import PixelTask

    net, config = trained_digits
    config.sample.update(n_samples=6, mini_batch_size=6, calib_samples=6, grid_size=4, fid_stat="",
                         algorithm="unipc", **sample)
    return evaluate(net, PixelTask(config, load_data=False), config, policies, Accelerator(cpu=True),
                    tmp_path, progress=False)


@pytest.mark.slow
def test_step_count_sweep_gives_one_row_per_pair_on_the_same_images(trained_digits, tmp_path):
    import json

    rows = _sweep(trained_digits, tmp_path, sample_steps="2,4")
    assert [(r.sample_steps, r.policy) for r in rows] == [(4, "full"), (4, "threshold:0.5"), (4, "profile:0.5"),
                                                          (2, "full"), (2, "threshold:0.5"), (2, "profile:0.5")]
    full4, full2 = rows[0], rows[3]
    assert full2.gflops_per_image == pytest.approx(full4.gflops_per_image / 2, rel=1e-12)  # exact scaling
    assert full4.compute_ratio == 1.0 and full2.compute_ratio == pytest.approx(0.5)
    assert all(len(r.exit_block_per_step) == r.sample_steps for r in rows)
    report = json.loads((tmp_path / "report.json").read_text())  # strict JSON: FID is null, not NaN
    assert report[0]["fid"] is None and all(r["pareto"] is False for r in report)
    for name in ("grid_4steps_full.png", "grid_2steps_threshold_0.5.png", "report.txt", "tradeoff.png"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_compute_budget_end_to_end(trained_digits, tmp_path):
    import json

    rows = _sweep(trained_digits, tmp_path / "b", sample_steps="2,4", compute_budget=0.5)
    choice = json.loads((tmp_path / "b" / "budget.json").read_text())
    assert len(choice["candidates"]) == 6 and choice["candidates"][0]["proxy"] == 0.0
    picked = choice["candidates"][choice["chosen"]]
    eligible = [c for c in choice["candidates"] if c["compute_ratio"] <= 0.5 + 1e-12]
    assert picked["proxy"] == min(c["proxy"] for c in eligible)
    assert [(r.sample_steps, r.policy) for r in rows] == [(4, "full"), (picked["sample_steps"], picked["policy"])]
    assert "compute budget 0.5: chose" in (tmp_path / "b" / "report.txt").read_text()


@pytest.mark.slow
def test_reuse_rules_run_in_the_step_count_sweep_and_the_budget(trained_digits, tmp_path):
    """deepcache, phase and plan (libs/exits/reuse.py) at every step count of a sweep, with their
    reused blocks, cache memory and per-step blocks in the report, and as budget candidates."""
    import json

    reuse = "deepcache:2:1,phase:0.5:threshold:0.5+deepcache:2:1,plan:0.8"
    rows = _sweep(trained_digits, tmp_path, policies=reuse, sample_steps="2,4")
    by = {(r.sample_steps, r.policy): r for r in rows}
    dc = by[(4, "deepcache:2:1")]  # 3 blocks: calls 1 and 3 reuse the mid block
    assert dc.blocks_reused == pytest.approx(0.5) and dc.mean_blocks == pytest.approx(2.5)
    assert dc.blocks_computed_per_step == [3, 2, 3, 2] and dc.blocks_reused_per_step == [0, 1, 0, 1]
    assert dc.gflops_per_image < by[(4, "full")].gflops_per_image and dc.cache_kib_per_image > 0
    plan = by[(4, "plan:0.8")]
    assert plan.compute_ratio <= 0.8 * 1.0 + 1e-9 and "per call:" in plan.calibration
    assert by[(2, "phase:0.5:threshold:0.5+deepcache:2:1")].calibration == "rule B from call 2 of 2"
    report = json.loads((tmp_path / "report.json").read_text())
    assert all("blocks_reused" in r for r in report)
    rows = _sweep(trained_digits, tmp_path / "b", policies=reuse, sample_steps="2,4", compute_budget=0.6)
    choice = json.loads((tmp_path / "b" / "budget.json").read_text())
    assert {c["policy"] for c in choice["candidates"]} >= {"deepcache:2:1", "plan:0.8"}
