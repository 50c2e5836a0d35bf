"""Training engine on the embedded digits data: runs, learns, saves, resumes exactly (also with
changed hyper-parameters), prunes, stops on divergence. Its hooks alone: test_hooks.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from libs.run.checkpoint import list_checkpoints, save_weights
from libs.models.registry import build_nnet
from libs.tasks.pixel import PixelTask
from libs.training.engine import sampling_policies, train
from tests.helpers.configs import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def weights(ckpt, name="nnet.pth"):
    return torch.load(Path(ckpt) / name, weights_only=True)


def test_train_writes_run_directory_and_checkpoints(tmp_path):
    last = train(tiny_config(tmp_path), PixelTask(tiny_config(tmp_path)))
    assert last == tmp_path / "ckpts" / "6.ckpt"
    assert [p.name for p in list_checkpoints(tmp_path / "ckpts")] == ["3.ckpt", "6.ckpt"]
    assert sorted(p.name for p in last.iterdir()) == sorted(
        ["nnet.pth", "nnet_ema.pth", "optimizer.pth", "lr_scheduler.pth", "step.pth", "config.json", "manifest.json",
         "run.json"])
    assert torch.load(last / "step.pth", weights_only=True) == 6
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "denoise", "uem", "layerwise", "lr", "grad_norm", "steps_per_s", "images_per_s"} <= set(rows[0])
    assert json.loads((tmp_path / "config.json").read_text())["nnet"]["embed_dim"] == 32
    assert "saved" in (tmp_path / "log.txt").read_text()
    assert not [p for p in (tmp_path / "ckpts").iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.slow
def test_loss_falls(tmp_path):
    config = tiny_config(tmp_path, n_steps=120, log_interval=10, save_interval=1000, batch_size=64)
    config.loss.objective = "uvit"
    train(config, PixelTask(config))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0], losses


def test_resume_equals_uninterrupted(tmp_path):
    straight = tiny_config(tmp_path / "a", n_steps=6)
    train(straight, PixelTask(straight))
    first = tiny_config(tmp_path / "b", n_steps=3)
    train(first, PixelTask(first))
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "ckpts")] == ["3.ckpt"]
    resumed = tiny_config(tmp_path / "b", n_steps=6)
    train(resumed, PixelTask(resumed))
    for name in ("nnet.pth", "nnet_ema.pth"):
        a, b = weights(tmp_path / "a/ckpts/6.ckpt", name), weights(tmp_path / "b/ckpts/6.ckpt", name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert "resumed from" in (tmp_path / "b" / "log.txt").read_text()


def test_finetune_from_uvit_weights_and_mismatch(tmp_path):
    config = tiny_config(tmp_path / "ft", n_steps=1)
    net = build_nnet(config.nnet)
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("uem_heads.")}
    save_weights(sd, tmp_path / "uvit.pth")
    config.train.pretrained_weight = str(tmp_path / "uvit.pth")
    train(config, PixelTask(config))
    assert "fresh initialisation" in (tmp_path / "ft" / "log.txt").read_text()
    bad = tiny_config(tmp_path / "bad", n_steps=1)
    bad.nnet.embed_dim = 64
    bad.train.pretrained_weight = str(tmp_path / "uvit.pth")
    with pytest.raises(ValueError, match="shape mismatch pos_embed"):
        train(bad, PixelTask(bad))
    assert not (tmp_path / "bad" / "ckpts").exists()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    config = tiny_config(tmp_path, n_steps=3)
    train(config, PixelTask(config))
    good = weights(tmp_path / "ckpts/3.ckpt")
    blowup = tiny_config(tmp_path, n_steps=30)
    blowup.optimizer.lr = 1e30
    blowup.lr_scheduler.warmup_steps = 0
    with pytest.raises(FloatingPointError, match="last good checkpoint is .*3.ckpt"):
        train(blowup, PixelTask(blowup))
    assert [p.name for p in list_checkpoints(tmp_path / "ckpts")] == ["3.ckpt"]
    assert all(torch.equal(good[k], v) for k, v in weights(tmp_path / "ckpts/3.ckpt").items())


def test_resume_with_changed_hyperparameters_follows_the_config(tmp_path):
    first = tiny_config(tmp_path, n_steps=3)
    train(first, PixelTask(first))
    resumed = tiny_config(tmp_path, n_steps=5, save_interval=5)
    resumed.optimizer.update(lr=1e-3, weight_decay=0.1)
    train(resumed, PixelTask(resumed))
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 2e-3, 2e-3, 1e-3, 1e-3])  # warmup 2, then the new rate
    [group] = torch.load(tmp_path / "ckpts/5.ckpt/optimizer.pth", weights_only=True)["param_groups"]
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.1
    log = (tmp_path / "log.txt").read_text()
    assert "config differs from the run's saved config.json in: optimizer.lr, optimizer.weight_decay, " \
           "train.n_steps, train.save_interval" in log and "resumed from" in log


def test_keep_ckpts_prunes_older_checkpoints(tmp_path):
    config = tiny_config(tmp_path, n_steps=6, save_interval=2, keep_ckpts=2)
    assert train(config, PixelTask(config)) == tmp_path / "ckpts" / "6.ckpt"
    assert [p.name for p in list_checkpoints(tmp_path / "ckpts")] == ["4.ckpt", "6.ckpt"]


def test_max_abs_weight_stops_before_anything_is_saved(tmp_path):
    config = tiny_config(tmp_path, n_steps=3, log_interval=0, save_interval=2, max_abs_weight=1e-3)
    with pytest.raises(FloatingPointError, match=r"the network diverged at step 2: .*max_abs_weight=0\.001.* none"):
        train(config, PixelTask(config))
    assert not list_checkpoints(tmp_path / "ckpts") and not (tmp_path / "stats.jsonl").exists()  # nor logged


def test_sampling_policies_of_a_plain_uvit_objective(tmp_path):
    config = tiny_config(tmp_path)
    config.sample.exit_policy = "threshold:0.9,static:1"
    assert [p.family for p in sampling_policies(config)] == ["full", "threshold", "static"]
    config.loss.objective = "uvit"  # no trained heads: only the policies that need none
    assert [p.family for p in sampling_policies(config)] == ["full", "static"]


@pytest.mark.slow
def test_config_errors_before_work(tmp_path):
    config = tiny_config(tmp_path)
    config.nnet.in_chans = 3
    with pytest.raises(ValueError, match=r"expects \(in_chans, img_size, img_size\) = \(3, 8, 8\)"):
        PixelTask(config)
    config = tiny_config(tmp_path)
    config.nnet.num_classes = 10  # p_uncond > 0 needs the null label
    with pytest.raises(ValueError, match="null label"):
        PixelTask(config)
    r = subprocess.run([sys.executable, "train.py", "--config=configs/digits_uvit_tiny.py",
                        "--config.train.no_such_key=1", f"--workdir={tmp_path / 'x'}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "no_such_key" in r.stderr
    assert not (tmp_path / "x").exists()


def _launch(tmp_path, batch_size, n_steps=2):
    # CPU processes talk over gloo: accelerate's multi-process launcher with ACCELERATE_USE_CPU.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "train.py", "--config=configs/digits_uvit_tiny.py", f"--workdir={tmp_path}",
         "--config.nnet.embed_dim=32", "--config.nnet.depth=2", "--config.nnet.num_heads=2",
         f"--config.train.batch_size={batch_size}", f"--config.train.n_steps={n_steps}",
         "--config.train.save_interval=2", "--config.train.log_interval=1"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_process_cpu_launch(tmp_path):
    r = _launch(tmp_path / "ok", batch_size=16)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp_path / "ok" / "ckpts")] == ["2.ckpt"]
    assert "2 process(es)" in (tmp_path / "ok" / "log.txt").read_text()
    assert len((tmp_path / "ok" / "stats.jsonl").read_text().splitlines()) == 2  # one writer
    r = _launch(tmp_path / "bad", batch_size=15)
    assert r.returncode != 0 and "not divisible by the number of processes (2)" in r.stderr
