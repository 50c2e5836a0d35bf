"""The training loop's guards and interval hooks (libs/training/hooks.py), each on its own."""
import json
import logging
import types

import pytest
import torch
import torch.nn as nn

from libs.evaluation.engine import sweep_policies
from libs.run.config_io import config_to_json
from libs.run.log import MetricsWriter
from libs.training import hooks
from libs.training.engine import warmup_lambda
from tests.helpers.configs import tiny_config

LOG = logging.getLogger("test.hooks")


class OneProcess:
    """The accelerator calls the hooks make, for a single process: gather / reduce are the
    identity; ``log`` records what the trackers would get."""

    def __init__(self):
        self.logged = []

    def gather(self, x):
        return x

    def reduce(self, x, reduction="mean"):
        return x

    def log(self, row, step):
        self.logged.append((step, row))


def test_every():
    assert [s for s in range(1, 10) if hooks.every(s, 3)] == [3, 6, 9]
    assert not any(hooks.every(s, interval) for s in range(1, 10) for interval in (0, None))


# ----------------------------------------------------------------------------- set-up and resume
def test_warn_config_changed_names_the_changed_keys(tmp_path, caplog):
    config = tiny_config(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert hooks.warn_config_changed(tmp_path, config, LOG) == []  # no saved config: a fresh run
        (tmp_path / "config.json").write_text(config_to_json(config))
        assert hooks.warn_config_changed(tmp_path, config, LOG) == []
        assert not caplog.records
        config.optimizer.lr, config.train.n_steps = 1e-4, 9
        assert hooks.warn_config_changed(tmp_path, config, LOG) == ["optimizer.lr", "train.n_steps"]
    assert "config differs from the run's saved config.json in: optimizer.lr, train.n_steps" in caplog.text


def test_prepare_workdir_warns_and_removes_temporaries(tmp_path, caplog):
    config = tiny_config(tmp_path / "run")
    (tmp_path / "run" / "ckpts" / ".4.ckpt.abc.tmp").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(config_to_json(tiny_config(tmp_path / "elsewhere")))
    no_takeover = types.SimpleNamespace(takeover_message=lambda: None)
    with caplog.at_level(logging.WARNING):
        hooks.prepare_workdir(config, no_takeover, resuming=False, logger=LOG)
    assert not list((tmp_path / "run" / "ckpts").iterdir())
    assert ".4.ckpt.abc.tmp" in caplog.text and "config differs" not in caplog.text  # nothing resumed
    caplog.clear()
    takeover = types.SimpleNamespace(takeover_message=lambda: "took over the stale lock of pid 1")
    with caplog.at_level(logging.WARNING):
        hooks.prepare_workdir(config, takeover, resuming=True, logger=LOG)
    assert "took over the stale lock of pid 1" in caplog.text
    assert "config differs from the run's saved config.json in: workdir" in caplog.text
    hooks.prepare_workdir(tiny_config(tmp_path / "new" / "run"), no_takeover, False, LOG)
    assert (tmp_path / "new" / "run").is_dir()


def _adamw(oc, warmup):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3))]
    optimizer = torch.optim.AdamW(params, lr=oc.lr, weight_decay=oc.weight_decay, betas=tuple(oc.betas))
    return params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_lambda(warmup))


def test_override_hyperparameters_after_a_resume():
    old = types.SimpleNamespace(lr=1e-3, weight_decay=0.03, betas=(0.9, 0.99))
    params, optimizer, scheduler = _adamw(old, warmup=4)
    for _ in range(2):
        params[0].grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    saved = optimizer.state_dict(), scheduler.state_dict()
    new = types.SimpleNamespace(lr=4e-3, weight_decay=0.1, betas=(0.8, 0.9))
    _, optimizer, scheduler = _adamw(old, warmup=4)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)  # the saved run's schedule
    hooks.override_hyperparameters(optimizer, scheduler, new)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(4e-3 * 2 / 4) and group["initial_lr"] == 4e-3
    assert group["weight_decay"] == 0.1 and group["betas"] == (0.8, 0.9) and scheduler.base_lrs == [4e-3]
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], saved[0]["state"][0]["exp_avg"])  # moments kept
    scheduler.step()  # the warmup goes on from step 2, towards the new rate
    assert group["lr"] == pytest.approx(4e-3 * 3 / 4)


# ----------------------------------------------------------------------------- guards
def test_check_loss_finite():
    acc = OneProcess()
    hooks.check_loss_finite(torch.tensor(1.5), acc, 3, None)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7; .* checkpoint is none\. Try a lower"):
        hooks.check_loss_finite(torch.tensor(float("nan")), acc, 7, None)
    with pytest.raises(FloatingPointError, match=r"checkpoint is ckpts/6\.ckpt"):
        hooks.check_loss_finite(torch.tensor(float("-inf")), acc, 7, "ckpts/6.ckpt")


def test_check_weights_names_the_network_and_the_bound():
    net, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(0.5)
        ema.weight.fill_(0.5)
    hooks.check_weights(net, ema, 1.0, 4, None)
    hooks.check_weights(net, ema, 0.0, 4, None)  # 0: only NaN/inf count
    with torch.no_grad():
        ema.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"the EMA network diverged at step 4: .*'bias'.*none"):
        hooks.check_weights(net, ema, 0.0, 4, None)
    with pytest.raises(FloatingPointError, match=r"the network diverged at step 5: .*max_abs_weight=0\.1\b.*2\.ckpt"):
        hooks.check_weights(net, ema, 0.1, 5, "2.ckpt")


# ----------------------------------------------------------------------------- logging
def test_loss_meter_means_since_the_last_row(monkeypatch):
    clock = iter([10.0, 12.0, 12.0, 13.0, 13.0])  # start, row, restart, row, restart
    monkeypatch.setattr(hooks, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    meter = hooks.LossMeter()
    for a, b in ((1.0, 3.0), (2.0, 5.0)):
        meter.add({"loss": torch.tensor([a, a]), "denoise": torch.tensor([b, b + 2])})
    row = meter.flush(OneProcess(), step=2, lr=0.5, grad_norm=torch.tensor(0.25), batch_size=8)
    assert row == {"denoise": 5.0, "loss": 1.5, "step": 2, "lr": 0.5, "grad_norm": 0.25, "steps_per_s": 1.0,
                   "images_per_s": 8.0}
    meter.add({"loss": torch.tensor([4.0])})  # started afresh at t = 12
    assert meter.flush(OneProcess(), 3, 0.5, 0.0, 8) == {"loss": 4.0, "step": 3, "lr": 0.5, "grad_norm": 0.0,
                                                         "steps_per_s": 1.0, "images_per_s": 8.0}


def test_write_log_row_reaches_every_sink(tmp_path, caplog):
    acc, bar = OneProcess(), types.SimpleNamespace(postfix=None)
    bar.set_postfix = lambda **kw: setattr(bar, "postfix", kw)
    row = {"loss": 0.123456, "step": 4, "lr": 2e-3}
    with caplog.at_level(logging.INFO):
        for trackers in (False, True):
            hooks.write_log_row(row, MetricsWriter(tmp_path / "stats.jsonl"), acc, trackers, bar, LOG)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in row} for r in rows] == [row, row]
    assert acc.logged == [(4, row)]  # trackers only when configured
    assert bar.postfix == {"loss": "0.1235", "lr": "2.00e-03"}
    assert "step 4 loss=0.1235 lr=0.002" in caplog.text


# ----------------------------------------------------------------------------- samples, FID, pruning
def test_sample_grids_one_file_per_policy(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hooks, "sample_grid", lambda net, task, config, path, policy: calls.append((path, policy)))
    config = tiny_config(tmp_path)
    policies = sweep_policies("threshold:0.9,static:1")
    hooks.sample_grids("ema", "task", config, policies, 30, LOG)
    assert [p for p, _ in calls] == [tmp_path / "samples" / f"30{s}.png" for s in
                                     ("", f"_{policies[1].slug}", f"_{policies[2].slug}")]
    assert [q for _, q in calls] == policies


def test_evaluate_fid_writes_a_stats_row_and_tracker_scalars(tmp_path, monkeypatch):
    result = types.SimpleNamespace(policy="full", fid=12.5, row=lambda: {"policy": "full", "fid": 12.5})
    seen = {}

    def fake_evaluate(net, task, config, policies, accelerator, output_dir, logger, progress):
        seen.update(output_dir=output_dir, progress=progress)
        return [result]

    monkeypatch.setattr(hooks, "evaluate", fake_evaluate)
    acc = OneProcess()
    for log_with in ("", "tensorboard"):
        config = tiny_config(tmp_path, log_with=log_with)
        assert hooks.evaluate_fid("ema", "task", config, [], acc, 8, MetricsWriter(tmp_path / "s.jsonl"), LOG) == [result]
    assert seen == {"output_dir": tmp_path / "eval" / "step_8", "progress": False}
    assert [json.loads(line)["eval"] for line in (tmp_path / "s.jsonl").read_text().splitlines()] == [[result.row()]] * 2
    assert acc.logged == [(8, {"fid_full": 12.5})]


def test_prune_checkpoints_keeps_the_newest(tmp_path):
    for step in (1, 2, 10, 20):
        (tmp_path / f"{step}.ckpt").mkdir()
    assert hooks.prune_checkpoints(tmp_path, 0) == [] and hooks.prune_checkpoints(tmp_path, None) == []
    assert hooks.prune_checkpoints(tmp_path, 2) == [tmp_path / "1.ckpt", tmp_path / "2.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10.ckpt", "20.ckpt"]
    assert hooks.prune_checkpoints(tmp_path, 5) == []
