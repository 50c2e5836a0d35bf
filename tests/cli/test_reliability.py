"""Fault injection on the digits config (CPU, tiny nets): diverged weights, two runs in one
workdir, config.json and eval reports, leaked temporaries, kills and failures mid-save,
corrupt checkpoints, repeated stats rows, and a table of bad inputs through the real CLIs
(one line on stderr, a non-zero exit, nothing valid changed on disk)."""
import errno
import hashlib
import json
import os
import shutil
import signal
import threading
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from configs.digits_uvit_tiny import get_config
from libs.run import atomic
from libs.run.checkpoint import (NonFiniteWeightsError, clean_stale_temporaries, list_checkpoints, load_weights,
                             newest_intact_checkpoint, read_checkpoint, save_checkpoint, save_weights)
from libs.run.errors import EXIT_USER_ERROR, guarded, one_line
from libs.cli.config_check import ConfigError, check_config
from libs.run.manifest import CorruptCheckpointError
from libs.models.registry import build_nnet
from libs.run.lock import LauncherGoneError, LauncherWatch, RunLock, WorkdirBusyError
from tests.helpers.configs import tiny_config
from libs.tasks.pixel import PixelTask
from libs.training.engine import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config=configs/digits_uvit_tiny.py", "--config.nnet.embed_dim=32", "--config.nnet.depth=2",
        "--config.nnet.num_heads=2"]
TRAIN = TINY + ["--config.train.batch_size=16", "--config.train.n_steps=2", "--config.train.save_interval=1",
                "--config.train.log_interval=1", "--config.optimizer.lr=2e-3", "--config.lr_scheduler.warmup_steps=2"]


def tiny(workdir, **train_fields):
    return tiny_config(workdir, **{**dict(n_steps=2, save_interval=1), **train_fields})


def run(config):
    return train(config, PixelTask(config))


def snapshot(folder, skip=("log.txt",)):
    """sha256 of every file under ``folder`` but ``skip``: what must not change."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def steps(workdir):
    return [json.loads(line)["step"] for line in (Path(workdir) / "stats.jsonl").read_text().splitlines()]


def flip_byte(path, offset=None):
    data = bytearray(Path(path).read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished 2-step run (checkpoints 1 and 2); tests copy it before changing anything."""
    workdir = tmp_path_factory.mktemp("good") / "run"
    run(tiny(workdir))
    return workdir


@pytest.fixture
def run_copy(good_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(good_run, dst)
    return dst


# ----------------------------------------------------------------------------- 1. non-finite
def test_diverged_weights_are_never_saved(run_copy, tmp_path, monkeypatch):
    # lr=1e9: the step-1 loss is finite, the update makes weights of 1e9: refused, nothing saved.
    fresh = tiny(tmp_path / "fresh", n_steps=3)
    fresh.optimizer.lr = 1e9
    fresh.lr_scheduler.warmup_steps = 0
    with pytest.raises(FloatingPointError, match=r"diverged at step 1: .*> 10000.*last good checkpoint is none"):
        run(fresh)
    assert list_checkpoints(tmp_path / "fresh" / "ckpts") == []

    # An update that turns every weight into NaN (finite loss): stop before saving; the error
    # names the checkpoint that is really good.
    ckpts = snapshot(run_copy / "ckpts")
    real_step = torch.optim.AdamW.step

    def nan_step(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", nan_step)
    with pytest.raises(FloatingPointError, match=r"network diverged at step 3: .*non-finite.*last good checkpoint "
                                                 r"is .*2\.ckpt"):
        run(tiny(run_copy, n_steps=4))
    monkeypatch.undo()

    # Only the EMA diverges: also caught.
    import libs.training.engine as engine
    real_ema = engine.ema_update

    def nan_ema(ema, net, rate):
        real_ema(ema, net, rate)
        with torch.no_grad():
            next(ema.parameters()).fill_(float("inf"))

    monkeypatch.setattr(engine, "ema_update", nan_ema)
    with pytest.raises(FloatingPointError, match=r"EMA network diverged at step 3.*2\.ckpt"):
        run(tiny(run_copy, n_steps=4))
    assert snapshot(run_copy / "ckpts") == ckpts


def test_loading_refuses_non_finite_weights_and_resume_skips_them(run_copy):
    config = tiny(run_copy)
    sd = {k: v.clone() for k, v in build_nnet(config.nnet).state_dict().items()}
    sd["pos_embed"][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="'pos_embed' holds non-finite values"):
        load_weights(build_nnet(config.nnet), sd)
    # A non-finite checkpoint with a valid manifest (as the old code could save): resume skips it.
    good = read_checkpoint(run_copy / "ckpts/2.ckpt")
    save_checkpoint(run_copy / "ckpts", 3, {"nnet.pth": sd, "nnet_ema.pth": sd, "optimizer.pth": good["optimizer.pth"],
                                            "lr_scheduler.pth": good["lr_scheduler.pth"], "step.pth": 3})
    run(tiny(run_copy, n_steps=3))
    log = (run_copy / "log.txt").read_text()
    assert "skipping checkpoint" in log and "3.ckpt" in log and "resuming from" in log
    assert read_checkpoint(run_copy / "ckpts/3.ckpt")["step.pth"] == 3  # replaced by a good one


# ----------------------------------------------------------------------------- 2. one run per workdir
def test_one_run_per_workdir(run_copy):
    before = snapshot(run_copy)
    with RunLock(run_copy):  # another live run (this process) holds the workdir
        with pytest.raises(WorkdirBusyError, match=rf"in use by another run: pid {os.getpid()} on host"):
            run(tiny(run_copy, n_steps=3))
    assert snapshot(run_copy, skip=("log.txt", "run.lock")) == before
    assert not (run_copy / "run.lock").exists()  # released

    # A stale lock (its process is gone) is taken over with a warning naming it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                                   "started": "earlier", "command": "train.py (killed)"}))
    run(tiny(run_copy))
    assert f"took over the stale lock {run_copy / 'run.lock'} of pid {dead.pid}" in (run_copy / "log.txt").read_text()
    assert not (run_copy / "run.lock").exists()


def test_workers_stop_when_their_launcher_is_gone(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    LauncherWatch().check(1)  # plain `python train.py`: never fires
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_RANK", "1")
    watch = LauncherWatch()
    watch.check(1)
    monkeypatch.setattr(os, "getppid", lambda: watch.parent + 1)
    with pytest.raises(LauncherGoneError, match="stopping at step 2 without saving"):
        watch.check(2)


# ----------------------------------------------------------------------------- 3. config.json / eval report
def test_config_json_is_written_only_after_the_weights_load(run_copy):
    before = (run_copy / "config.json").read_bytes()
    config = tiny(run_copy, n_steps=3)
    config.nnet.embed_dim = 64
    with pytest.raises(ValueError, match="shape mismatch"):
        run(config)
    assert (run_copy / "config.json").read_bytes() == before


def _eval(config, out, nnet, exit_threshold="0.5", **flags):
    from libs.cli.evaluate import eval_main

    class Flags(types.SimpleNamespace):
        def __getattr__(self, name):  # flags this test does not set
            return None

        def __getitem__(self, name):
            return types.SimpleNamespace(config_filename="configs/digits_uvit_tiny.py")

    flags_obj = Flags(config=config, nnet_path=str(nnet), output_path=str(out), exit_threshold=exit_threshold,
                      workdir=str(out.parent), **flags)
    return eval_main(flags_obj, lambda c: PixelTask(c, load_data=False), "eval.py")


def test_eval_report_and_its_config_belong_together(good_run, tmp_path, monkeypatch):
    import libs.cli.evaluate as engine  # where eval_main finds evaluate
    import libs.evaluation.report as report

    # tradeoff.png as the rows' text: files of different evaluations still differ, without five
    # 4-panel matplotlib figures (~1.3 s; tests/diffusers_exit/test_sweep.py draws the real one)
    monkeypatch.setattr(report, "plot_report", lambda results, path: Path(path).write_text(
        repr([r.row() for r in results])))

    def config():
        c = tiny(tmp_path)
        c.sample.update(n_samples=4, mini_batch_size=4, sample_steps=2, grid_size=4, fid_stat="")
        return c

    out, nnet = tmp_path / "eval", good_run / "ckpts/2.ckpt/nnet_ema.pth"
    _eval(config(), out, nnet)
    first = snapshot(out)
    assert {"report.txt", "report.csv", "config.json"} <= set(first)

    real = engine.evaluate

    def killed_after_writing(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt  # killed after the new report was written, before it was published

    monkeypatch.setattr(engine, "evaluate", killed_after_writing)
    changed = config()
    changed.sample.sample_steps = 3
    with pytest.raises(KeyboardInterrupt):
        _eval(changed, out, nnet)
    assert snapshot(out) == first  # old pair untouched, the staged report removed, the lock released
    assert not (out / ".eval.tmp").exists() and not (out / "run.lock").exists()

    # Publishing dies after moving the first file: config.json is absent, so no report claims it.
    monkeypatch.setattr(engine, "evaluate", real)
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2 and ".eval.tmp" in str(src):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(OSError):
        _eval(changed, out, nnet)
    assert not (out / "config.json").exists()
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    _eval(changed, out, nnet)  # a complete run publishes its report with its config
    assert json.loads((out / "config.json").read_text())["sample"]["sample_steps"] == 3
    assert not (out / ".eval.tmp").exists()

    # Another sweep into the same folder: exactly its files, no grid of the earlier policies left.
    assert (out / "grid_threshold_0.5.png").is_file()
    _eval(changed, out, nnet, exit_threshold="0.7")
    assert sorted(p.name for p in out.glob("grid_*")) == ["grid_full.png", "grid_threshold_0.7.png"]


def test_weights_are_checked_against_their_checkpoint_config(good_run, tmp_path):
    from libs.cli.evaluate import ConfigMismatchError

    config = tiny(tmp_path)
    config.sample.update(n_samples=2, mini_batch_size=2, sample_steps=2, grid_size=2, fid_stat="")
    config.nnet.num_heads = 4  # same tensor shapes as the checkpoint's 2 heads: would run silently
    nnet, out = good_run / "ckpts/2.ckpt/nnet_ema.pth", tmp_path / "eval"
    with pytest.raises(ConfigMismatchError, match=r"nnet.num_heads: checkpoint 2, config 4.*--allow_config_mismatch"):
        _eval(config, out, nnet)
    assert not (out / "config.json").exists()
    _eval(config, out, nnet, allow_config_mismatch=True)
    assert "nnet.num_heads: checkpoint 2, config 4; running anyway" in (out / "log.txt").read_text()


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    from libs.run.errors import EXIT_INTERRUPTED

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.delenv("ADADIFF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        guarded(interrupted, "eval.py")()
    assert e.value.code == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eval.py: interrupted (Ctrl-C): stopped")


# ----------------------------------------------------------------------------- 4. leaked temporaries, kills
def test_stale_checkpoint_temporaries_are_cleaned_at_start(run_copy):
    ckpts = run_copy / "ckpts"
    (ckpts / ".3.ckpt.abc123.tmp").mkdir()
    (ckpts / ".3.ckpt.abc123.tmp" / "nnet.pth").write_bytes(b"partial")
    shutil.copytree(ckpts / "2.ckpt", ckpts / ".2.ckpt.xyz.old" / "ckpt")  # killed after the swap: drop
    run(tiny(run_copy))
    assert sorted(p.name for p in ckpts.iterdir()) == ["1.ckpt", "2.ckpt"]
    assert "removed" in (run_copy / "log.txt").read_text()
    # Killed between moving a re-saved step's old checkpoint aside and renaming the new one in: restored.
    shutil.move(ckpts / "2.ckpt", ckpts / ".2.ckpt.q.old" / "ckpt")
    assert any("restored" in n for n in clean_stale_temporaries(ckpts))
    assert [p.name for p in list_checkpoints(ckpts)] == ["1.ckpt", "2.ckpt"]


@pytest.mark.slow
def test_sigkill_during_checkpoint_write(run_copy):
    code = ("import sys, time, torch\n"
            "import libs.run.checkpoint as ck\n"
            "real = ck.atomic_save\n"
            "def slow(obj, path):\n"
            "    real(obj, path)\n"
            "    print('wrote', path, flush=True)\n"
            "    time.sleep(120)\n"
            "ck.atomic_save = slow\n"
            "ck.save_checkpoint(sys.argv[1], 3, {'nnet.pth': {'w': torch.ones(3)}, 'step.pth': 3})\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_copy / "ckpts")], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().startswith("wrote")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    ckpts = run_copy / "ckpts"
    assert [p.name for p in list_checkpoints(ckpts)] == ["1.ckpt", "2.ckpt"]  # never a partial 3.ckpt
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".3.ckpt.")]  # what the kill leaked
    run(tiny(run_copy))
    assert sorted(p.name for p in ckpts.iterdir()) == ["1.ckpt", "2.ckpt"]


def test_failed_rename_keeps_the_previous_checkpoint(run_copy, monkeypatch):
    ckpts = run_copy / "ckpts"
    before = snapshot(ckpts)
    real_replace = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(".2.ckpt.") and str(src).endswith(".tmp"):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    good = read_checkpoint(ckpts / "2.ckpt")
    with pytest.raises(OSError):  # re-saving step 2: the old one was moved aside, then the rename failed
        save_checkpoint(ckpts, 2, {k: good[k] for k in ("nnet.pth", "step.pth")})
    assert snapshot(ckpts) == before  # the previous 2.ckpt is back, no temporary left


# ----------------------------------------------------------------------------- 7. manifest
def test_byte_flip_is_detected_and_resume_falls_back(good_run, run_copy):
    ckpts = run_copy / "ckpts"
    assert (ckpts / "2.ckpt/manifest.json").is_file()
    flip_byte(ckpts / "2.ckpt/nnet_ema.pth")  # same size, loads silently without checksums
    net = build_nnet(tiny(run_copy).nnet)
    with pytest.raises(CorruptCheckpointError, match=r"nnet_ema\.pth does not match its checksum"):
        load_weights(net, ckpts / "2.ckpt/nnet_ema.pth")
    run(tiny(run_copy))  # resume: skips 2.ckpt, redoes step 2 from 1.ckpt, saves it again
    log = (run_copy / "log.txt").read_text()
    assert "skipping checkpoint" in log and "resuming from" in log and "1.ckpt" in log
    for name in ("nnet.pth", "nnet_ema.pth"):  # exact resume: same as the uninterrupted run
        a = torch.load(good_run / "ckpts/2.ckpt" / name, weights_only=True)
        b = torch.load(ckpts / "2.ckpt" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps(run_copy) == [1, 2]  # stats rows of the redone step are not repeated

    # A truncated latest checkpoint falls back too; one without a manifest (older) still loads.
    with open(ckpts / "2.ckpt/optimizer.pth", "r+b") as f:
        f.truncate(100)
    assert newest_intact_checkpoint(ckpts)[0].name == "1.ckpt"
    (ckpts / "1.ckpt/manifest.json").unlink()
    ckpt, contents = newest_intact_checkpoint(ckpts)
    assert ckpt.name == "1.ckpt" and contents["verified"] is False
    load_weights(net, ckpts / "1.ckpt/nnet_ema.pth")


# ----------------------------------------------------------------------------- 5/8. full disk, stats rows
def test_full_disk_mid_save_then_resume_does_not_repeat_stats(tmp_path, monkeypatch):
    import libs.training.engine as engine
    real_save, real_open = engine.save_checkpoint, atomic._open_temp

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def save(root, step, *a, **k):
        if step == 3:
            monkeypatch.setattr(atomic, "_open_temp", lambda fd: Full(real_open(fd)))
        return real_save(root, step, *a, **k)

    monkeypatch.setattr(engine, "save_checkpoint", save)
    with pytest.raises(OSError) as e:
        run(tiny(tmp_path, n_steps=3, save_interval=2))
    assert e.value.errno == errno.ENOSPC and "nnet.pth" in str(e.value)  # not torch's "enforce fail"
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["2.ckpt"]  # nothing partial, no temporary
    assert steps(tmp_path) == [1, 2, 3]
    monkeypatch.undo()
    run(tiny(tmp_path, n_steps=3, save_interval=2))
    assert steps(tmp_path) == [1, 2, 3]  # step 3 was redone: its row is written once


# ----------------------------------------------------------------------------- 5/6. messages, config
def test_user_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def bad():
        raise ValueError("weights do not fit:\n  shape mismatch pos_embed: file (1,), model (2,)\n  Check the config")

    monkeypatch.delenv("ADADIFF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        guarded(bad, "eval.py")()
    assert e.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == ("eval.py: error: weights do not fit: shape mismatch pos_embed: file (1,), model (2,); "
                   "Check the config\n")
    monkeypatch.setenv("ADADIFF_DEBUG", "1")
    with pytest.raises(ValueError):
        guarded(bad)()
    monkeypatch.delenv("ADADIFF_DEBUG")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        guarded(lambda: {}["x"])()
    assert one_line("a\n\n b") == "a; b"


def test_every_shipped_config_passes_the_check_and_bad_values_are_listed():
    import importlib
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.stem != "common":
            config = importlib.import_module(f"configs.{path.stem}").get_config()
            check_config(config, "train")
            check_config(config, "eval")
    config = tiny("unused")
    config.lr_scheduler.name = "cosine"
    config.train.ema_rate = 2.0
    with pytest.raises(ConfigError, match=r"ema_rate=2.0: must be a finite number in \[0, 1\]; .*lr_scheduler.name='cosine': choose one of customized"):
        check_config(config, "train")


# ----------------------------------------------------------------------------- the table of bad inputs
# Each row: (script, arguments, expected text in the one error line, simulated fault). Arguments
# and faults name the files the ``bad_input_results`` fixture makes: {good} a finished run,
# {ckpt} its 2.ckpt, {nnet} its nnet_ema.pth, {work} a scratch folder (see the fixture).
GW = "--workdir={good}"
EV = ["--config.sample.fid_stat=", "--config.sample.n_samples=4", "--config.sample.mini_batch_size=4",
      "--config.sample.sample_steps=2", "--output_path={evalout}"]
NNET = "--nnet_path={nnet}"
TRAIN_ROWS = [
    (TRAIN + [GW, "--config.train.batch_size=0"], "config.train.batch_size=0: must be an integer >= 1", None),
    (TRAIN + [GW, "--config.train.batch_size=-4"], "config.train.batch_size=-4", None),
    (TRAIN + [GW, "--config.train.n_steps=0"], "config.train.n_steps=0: must be an integer >= 1", None),
    (TRAIN + [GW, "--config.train.n_steps=-5"], "config.train.n_steps=-5", None),
    (TRAIN + [GW, "--config.train.save_interval=-1"], "config.train.save_interval=-1: must be an integer >= 0", None),
    (TRAIN + [GW, "--config.train.log_interval=-10"], "config.train.log_interval=-10", None),
    (TRAIN + [GW, "--config.train.keep_ckpts=-1"], "config.train.keep_ckpts=-1", None),
    (TRAIN + [GW, "--config.train.ema_rate=2.0"], "config.train.ema_rate=2.0: must be a finite number in [0, 1]",
     None),
    (TRAIN + [GW, "--config.train.ema_rate=-0.5"], "config.train.ema_rate=-0.5", None),
    (TRAIN + [GW, "--config.train.grad_clip=-1.0"], "config.train.grad_clip=-1.0", None),
    (TRAIN + [GW, "--config.optimizer.lr=inf"], "config.optimizer.lr=inf: must be a finite number in (0, inf)", None),
    (TRAIN + [GW, "--config.optimizer.lr=0.0"], "config.optimizer.lr=0.0", None),
    (TRAIN + [GW, "--config.optimizer.lr=-0.001"], "config.optimizer.lr=-0.001", None),
    (TRAIN + [GW, "--config.optimizer.name=sgd"], "config.optimizer.name='sgd': choose one of adamw", None),
    (TRAIN + [GW, "--config.lr_scheduler.name=cosine"], "config.lr_scheduler.name='cosine': choose one of customized",
     None),
    (TRAIN + [GW, "--config.lr_scheduler.warmup_steps=-1"], "config.lr_scheduler.warmup_steps=-1", None),
    (TRAIN + [GW, "--config.loss.objective=ddpm"], "config.loss.objective='ddpm': choose one of adadiff, uvit", None),
    (TRAIN + [GW, "--config.loss.layer_weight=mean"], "config.loss.layer_weight='mean': choose one of", None),
    (TRAIN + [GW, "--config.loss.p_uncond=1.5"], "config.loss.p_uncond=1.5", None),
    (TRAIN + [GW, "--config.sample.algorithm=ddim"], "config.sample.algorithm='ddim': choose one of", None),
    (TRAIN + [GW, "--config.nnet.num_heads=3"], "embed_dim=32 is not divisible by config.nnet.num_heads=3", None),
    (TRAIN + [GW, "--config.nnet.patch_size=3"], "img_size=8 is not divisible by config.nnet.patch_size=3", None),
    (TRAIN + [GW, "--config.nnet.name=vit"], "config.nnet.name='vit': choose one of dit, uvit, uvit_t2i", None),
    (TRAIN + [GW, "--config.time=discrete"], "no script runs pixel-space models with config.time='discrete'", None),
    (TRAIN + [GW, "--config.train.no_such_key=1"], "unknown config field '--config.train.no_such_key'", None),
    (TRAIN + [GW, "--config.nnet.depht=4"], "the config has no field 'depht'; did you mean 'depth'", None),
    (TRAIN + [GW, "--config.nnet.depth.x=4"], "config.nnet.depth is a value, not a group of fields", None),
    (TRAIN + [GW, "--config.train.batch_size=abc"], "--config.train.batch_size=abc", None),
    (["--config=configs/no_such_config.py", GW], "no_such_config.py", None),
    (["--config={work}/syntax_error.py", GW], "config file {work}/syntax_error.py, line 2: invalid syntax", None),
    (["--config={work}/no_get_config.py", GW], "defines no get_config()", None),
    (["--config={work}/name_error.py", GW], "name_error.py, line 2: NameError: name 'undefined_name'", None),
    (TRAIN + [GW, "--config.train.n_steps=3", "--config.nnet.embed_dim=64"], "shape mismatch pos_embed", None),
    (TRAIN + [GW, "--config.train.n_steps=1"], "config.train.n_steps=1 is below step 2 of the checkpoint", None),
    (TRAIN + [GW, "--config.train.n_steps=3", "--config.loss.objective=uvit"],
     "its optimizer.pth trains", None),
    (TRAIN + ["--workdir={badcfg}", "--config.train.n_steps=3"], "{badcfg}/config.json is not valid JSON (line 1",
     None),
    (TRAIN + ["--workdir={a_file}"], "is a file, not a folder", None),
    (TRAIN + ["--workdir={a_file}/run"], "is a file, not a folder", None),
    (TRAIN + ["--workdir={busy}"], "in use by another run: pid {pid}", None),
    (TRAIN + [GW, "--config.train.n_steps=3"], "Read-only file system", {"erofs": "{good}"}),
    (TRAIN + ["--workdir={work}/ro/run"], "Read-only file system", {"erofs": "{work}/ro"}),
    (TRAIN + [GW, "--config.train.n_steps=3"], "No space left on device: {good}/config.json",
     {"enospc": "config.json"}),
    (TRAIN + ["--workdir={work}/full"], "No space left on device", {"enospc": ".pth"}),
    (TRAIN + ["--workdir={work}/pre1", "--pretrained_weight={garbage}"], "cannot read {garbage} as a .safetensors file",
     None),
    (TRAIN + ["--workdir={work}/pre2", "--pretrained_weight={work}/missing.pth"], "weights file not found", None),
    (TRAIN + ["--workdir={work}/pre3", "--pretrained_weight={nan}"], "non-finite", None),
    (TRAIN + ["--workdir={work}/pre4", "--pretrained_weight={ckpt}"], "is a folder, expected a .pth", None),
    (TRAIN + ["--workdir={work}/pre5", "--pretrained_weight={evil}"], "cannot read {evil} as a PyTorch state dict",
     None),
    # round four: links, workdirs in checkpoints, bounded counts
    (TRAIN + ["--workdir={ckpt}"], "--workdir={ckpt} is a checkpoint", None),
    (TRAIN + ["--workdir={ckpt}/run"], "lies inside {ckpt}, which is a checkpoint", None),
    (TRAIN + ["--workdir={good}/ckpts/x"], "lies in {good}/ckpts of the training workdir", None),
    (TRAIN + ["--workdir={linklock}"], "{linklock}/run.lock is a symbolic link (to {precious})", None),
    (TRAIN + ["--workdir={work}/pre6", "--pretrained_weight={link_flipped}"], "does not match its checksum", None),
    (TRAIN + [GW, "--config.sample.sample_steps=99999999999999999999999"], "every count must be at most 100,000",
     None),
    (TRAIN + [GW, "--config.train.n_steps=100000000000000"],
     "config.train.n_steps=100000000000000: must be at most 10,000,000,000", None),
    (TRAIN + [GW, "--config.train.batch_size=1000000000000"], "config.train.batch_size=1000000000000: must be at most",
     None),
    (TRAIN + ["--workdir={work}/fid1", "--config.train.eval_interval=1", "--config.sample.fid_stat={stats_neg}"],
     "'sigma' is not positive semi-definite", None),
    (TRAIN + ["--workdir={work}/fid2", "--config.train.eval_interval=1", "--config.sample.n_samples=1",
              "--config.sample.fid_stat={stats_ok}"], "config.sample.n_samples=1: an FID needs at least 2", None),
]
EVAL_ROWS = [
    (TINY + EV + [NNET, "--exit_threshold=1.3"], "exit policy '1.3': the threshold is out of range", None),
    (TINY + EV + [NNET, "--exit_threshold=abc"], "'abc' is not a number", None),
    (TINY + EV + [NNET, "--exit_threshold=static:1"], "use --exit_policy for static:K", None),
    (TINY + EV + [NNET, "--exit_policy=0.9", "--exit_threshold=0.9"], "not both", None),
    (TINY + EV + [NNET, "--exit_policy=0.9,cosine:1"], "unknown exit policy 'cosine:1'", None),
    (TINY + EV + [NNET, "--exit_policy=static:9"], "static:9: the network has", None),
    (TINY + EV + [NNET, "--exit_policy=budget:0"], "budget:0", None),
    (TINY + EV, "no weights to evaluate", None),
    (TINY + EV + ["--nnet_path={work}/missing.pth"], "weights file not found", None),
    (TINY + EV + ["--nnet_path={garbage}"], "cannot read {garbage} as a .safetensors file", None),
    (TINY + EV + ["--nnet_path={nan}"], "holds non-finite values", None),
    (TINY + EV + ["--nnet_path={evil}"], "cannot read {evil} as a PyTorch state dict", None),
    (TINY + EV + ["--nnet_path={flipped}/nnet_ema.pth"], "does not match its checksum", None),
    (TINY + EV + ["--nnet_path={ckpt}"], "is a folder, expected a .pth or .safetensors file (a checkpoint folder: "
                                        "pass {ckpt}/nnet_ema.pth)", None),
    (TINY + EV + ["--nnet_path={unlisted}/nnet_ema.pth"], "is not listed in", None),
    (TINY + EV + [NNET, "--config.nnet.embed_dim=64"], "shape mismatch pos_embed", None),
    (TINY + EV + ["--nnet_path={exported_real}", "--config.nnet.embed_dim=64"], "shape mismatch pos_embed", None),
    (TINY + EV + [NNET, "--config.nnet.num_heads=4"],
     "config.nnet differs from the checkpoint's own {ckpt}/config.json in nnet.num_heads: checkpoint 2, config 4",
     None),
    (TINY + EV + [NNET, "--config.nnet.num_heads=5"], "not divisible by config.nnet.num_heads=5", None),
    (TINY + EV + [NNET, "--config.sample.algorithm=ddim"], "config.sample.algorithm='ddim'", None),
    (TINY + EV + [NNET, "--config.sample.n_samples=0"], "config.sample.n_samples=0", None),
    (TINY + EV + [NNET, "--config.sample.n_samples=1", "--config.sample.fid_stat={stats_ok}"],
     "config.sample.n_samples=1: an FID needs at least 2 samples", None),
    (TINY + EV + [NNET, "--config.sample.sample_steps=0"], "config.sample.sample_steps=0", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_rand}"], "is not a readable .npz file (neither a zip", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_trunc}"], "is not a readable .npz file", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_flip}"], "is corrupt (BadZipFile", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_obj}"], "holds a Python object array", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_neg}"], "not positive semi-definite", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_asym}"], "'sigma' is not symmetric", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={stats_small}"], "'mu' has shape (16,), expected (2048,)", None),
    (TINY + EV + [NNET, "--config.sample.fid_stat={work}"], "is a folder, expected an .npz", None),
    (TINY + EV + [NNET, "--output_path={a_file}"], "is a file, not a folder", None),
    (TINY + EV + [NNET, "--output_path={ckpt}"], "--output_path={ckpt} is a checkpoint", None),
    (TINY + EV + [NNET, "--output_path={good}"], "--output_path={good} is the training workdir", None),
    (TINY + EV + [NNET, "--output_path={good}/ckpts/x"], "lies in {good}/ckpts of the training workdir", None),
    (TINY + EV + [NNET, "--output_path={mine}"], "holds files no evaluation wrote (notes.txt)", None),
    (TINY + EV + [NNET, "--output_path={busy_eval}"], "{busy_eval} is in use by another run: pid {pid}", None),
    (TINY + EV + [NNET, "--output_path={work}/ro2/eval"], "Read-only file system", {"erofs": "{work}/ro2"}),
    # round four: links, sample folders, non-finite outputs, bounded counts
    (TINY + EV + ["--nnet_path={link_flipped}"], "does not match its checksum", None),
    (TINY + EV + ["--nnet_path={link_nnet}", "--config.nnet.num_heads=4"],
     "config.nnet differs from the checkpoint's own {ckpt}/config.json in nnet.num_heads", None),
    (TINY + EV + [NNET, "--output_path={linklock}"], "{linklock}/run.lock is a symbolic link (to {precious})", None),
    (TINY + EV + [NNET, "--config.sample.path={mine}"], "--config.sample.path={mine} holds files no sampling run "
                                                        "wrote (notes.txt)", None),
    (TINY + EV + [NNET, "--config.sample.path={ckpt}/png"], "lies inside {ckpt}, which is a checkpoint", None),
    (TINY + EV + ["--nnet_path={huge}"], "give non-finite predictions at block(s) 0, 1, 2 on a probe input", None),
    (TINY + EV + [NNET, "--config.sample.scale=1e30"], "gave non-finite images (4 of 4): nothing was scored", None),
    (TINY + EV + [NNET, "--config.sample.sample_steps=1000000000000"], "every count must be at most 100,000", None),
    (TINY + EV + [NNET, "--config.sample.n_samples=1000000000000"],
     "config.sample.n_samples=1000000000000: must be at most 10,000,000", None),
    (TINY + EV + [NNET, "--config.sample.mini_batch_size=1000000000000"],
     "config.sample.mini_batch_size=1000000000000: must be at most", None),
]
WRONG_SCRIPT_ROWS = [  # eval_ldm.py, train_t2i_discrete.py, ... given the digits (pixel-space) config
    (TINY + EV + [NNET], "eval_ldm.py does not run this config (pixel-space model, config.time='continuous'): use "
                         "eval.py", None),
]
SAMPLE_ROWS = [
    (["--config=configs/mscoco_uvit_small.py", "--nnet_path={nnet}", "--input_path={prompts}",
      "--output_path={mine}", "--exit_threshold=0.9"], "--output_path={mine} holds files no sampling run wrote "
                                                       "(notes.txt)", None),
    (["--config=configs/digits_uvit_tiny.py", "--nnet_path={nnet}", "--input_path={prompts}",
      "--output_path={work}/s", "--exit_threshold=0.9"], "(pixel-space model, config.time='continuous'): its "
                                                           "scripts are train.py, eval.py", None),
]
EXPORT_ROWS = [
    (["{work}/missing.pth", "{exported}"], "weights file not found", None),
    (["{garbage}", "{exported}"], "as a .safetensors file", None),
    (["{flipped}/nnet_ema.pth", "{exported}"], "does not match its checksum", None),
    (["{nnet}", "{exported}"], "No space left on device: {exported}", {"enospc": "exported.pth"}),
    (["{nnet}", "{work}"], "DST={work} is a folder", None),
    (["{nnet}", "{nnet}"], "is the input {nnet}", None),
    (["{nnet}", "{ckpt}/nnet_ema.safetensors"], "is a checkpoint", None),
    (["{nnet}", "{good}/exported.pth"], "is the training workdir", None),
    (["{ckpt}", "{exported}"], "is a folder, expected a .pth", None),
    (["{link_flipped}", "{exported}"], "does not match its checksum", None),
]
FID_ROWS = [
    (["{stats_rand}", "{stats_ok}"], "is not a readable .npz file", None),
    (["{stats_flip}", "{stats_ok}"], "is corrupt (BadZipFile", None),
    (["{stats_obj}", "{stats_ok}"], "holds a Python object array", None),
    (["{stats_neg}", "{stats_ok}"], "not positive semi-definite", None),
    (["{stats_asym}", "{stats_ok}"], "is not symmetric", None),
    (["{work}/missing.npz", "{stats_ok}"], "does not exist", None),
]
STATS_ROWS = [
    (["{stats_ok}", "{stats_ok}"], "is the input", None),
    (["{images}", "{ckpt}/ref.npz"], "is a checkpoint", None),
    (["{images}", "{good}/ref.npz"], "is the training workdir", None),
]
SCRIPTS = {"train.py": ("absl", TRAIN_ROWS), "eval.py": ("absl", EVAL_ROWS),
           "eval_ldm.py": ("absl", WRONG_SCRIPT_ROWS), "sample_t2i_discrete.py": ("absl", SAMPLE_ROWS),
           "scripts/export_weights.py": ("argparse", EXPORT_ROWS), "tools/fid.py": ("argparse", FID_ROWS),
           "tools/fid_stats.py": ("argparse", STATS_ROWS)}
BAD_INPUTS = [pytest.param(script, i, id=f"{script}: {row[1][:70]}")
              for script, (_, rows) in SCRIPTS.items() for i, row in enumerate(rows)]


def _bad_input_files(work, good_run) -> dict:
    """The files the rows name: {placeholder: path}."""
    import numpy as np

    ckpt = good_run / "ckpts/2.ckpt"
    paths = {"good": good_run, "ckpt": ckpt, "nnet": ckpt / "nnet_ema.pth", "work": work, "pid": os.getpid()}
    for name in ("a_file", "garbage", "nan", "evil", "flipped", "unlisted", "evalout", "exported", "busy",
                 "busy_eval", "badcfg", "mine", "images"):
        paths[name] = work / name
    (work / "a_file").write_text("not a folder")
    paths["garbage"] = work / "garbage.safetensors"
    paths["garbage"].write_bytes(b"\xff" * 64)
    sd = torch.load(ckpt / "nnet_ema.pth", weights_only=True)
    paths["nan"] = work / "nan.pth"
    save_weights({k: v.clone().fill_(float("nan")) if k == "pos_embed" else v for k, v in sd.items()}, paths["nan"])
    paths["evil"] = work / "evil.pth"
    torch.save({"w": types.SimpleNamespace(x=1)}, paths["evil"])  # a pickle of an object: weights_only refuses it
    paths["flipped"] = work / "flipped.ckpt"
    shutil.copytree(ckpt, paths["flipped"])
    flip_byte(paths["flipped"] / "nnet_ema.pth")
    paths["unlisted"] = work / "unlisted.ckpt"
    shutil.copytree(ckpt, paths["unlisted"])
    manifest = json.loads((paths["unlisted"] / "manifest.json").read_text())
    del manifest["files"]["nnet_ema.pth"]
    (paths["unlisted"] / "manifest.json").write_text(json.dumps(manifest))
    paths["evalout"].mkdir()
    (paths["evalout"] / "report.txt").write_text("previous report\n")
    (paths["evalout"] / "config.json").write_text('{"previous": true}\n')
    paths["exported"] = work / "exported.pth"
    paths["exported"].write_bytes(b"previous export")
    paths["exported_real"] = work / "exported_real.pth"  # weights outside a checkpoint: no config.json to compare
    shutil.copy(ckpt / "nnet_ema.pth", paths["exported_real"])
    shutil.copytree(good_run, paths["badcfg"])
    (paths["badcfg"] / "config.json").write_text("{not json")
    paths["mine"].mkdir()
    (paths["mine"] / "notes.txt").write_text("keep me")
    paths["images"] = work / "images.npz"
    np.savez(paths["images"], arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    d, asym = 2048, np.eye(2048)
    asym[0, 1] = 0.5
    for name, mu, sigma in (("ok", np.zeros(d), np.eye(d)), ("neg", np.zeros(d), -np.eye(d)),
                            ("asym", np.zeros(d), asym), ("small", np.zeros(16), np.eye(16))):
        paths[f"stats_{name}"] = work / f"stats_{name}.npz"
        np.savez(paths[f"stats_{name}"], mu=mu, sigma=sigma)
    paths["stats_obj"] = work / "stats_obj.npz"
    np.savez(paths["stats_obj"], mu=np.array([{"a": 1}] * 3, dtype=object), sigma=np.eye(3))
    data = bytearray(paths["stats_ok"].read_bytes())
    paths["stats_trunc"] = work / "stats_trunc.npz"
    paths["stats_trunc"].write_bytes(bytes(data[:len(data) // 2]))
    data[len(data) // 2] ^= 1
    paths["stats_flip"] = work / "stats_flip.npz"
    paths["stats_flip"].write_bytes(bytes(data))
    paths["stats_rand"] = work / "stats_rand.npz"
    paths["stats_rand"].write_bytes(os.urandom(4096))
    paths["precious"] = work / "precious.txt"  # a user's file that links point at
    paths["precious"].write_text("a user's file")
    paths["linklock"] = work / "linklock"
    paths["linklock"].mkdir()
    (paths["linklock"] / "run.lock").symlink_to(paths["precious"])
    paths["link_flipped"] = work / "link_flipped.pth"
    paths["link_flipped"].symlink_to(paths["flipped"] / "nnet_ema.pth")
    paths["link_nnet"] = work / "link_nnet.pth"
    paths["link_nnet"].symlink_to(ckpt / "nnet_ema.pth")
    paths["huge"] = work / "huge.pth"  # finite, but every output overflows
    save_weights({k: v.clone().fill_(1e30) if k == "pos_embed" else v for k, v in sd.items()}, paths["huge"])
    paths["prompts"] = work / "prompts.txt"
    paths["prompts"].write_text("a red bus\n")
    (work / "syntax_error.py").write_text("def get_config():\n    return d(=1)\n")
    (work / "no_get_config.py").write_text("x = 1\n")
    (work / "name_error.py").write_text("def get_config():\n    return undefined_name\n")
    return paths


def _fill(value, paths):
    if isinstance(value, dict):
        return {k: _fill(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, paths) for v in value]
    return value.format(**paths) if isinstance(value, str) else value


def _start(script, kind, rows, paths, work):
    spec = work / f"{Path(script).stem}_spec.json"
    spec.write_text(json.dumps({"script": script, "kind": kind,
                                "cases": [{"args": _fill(r[0], paths), "fault": _fill(r[2], paths)} for r in rows]}))
    results = work / f"{Path(script).stem}_results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ADADIFF_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.cli_runner", str(spec), str(results)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, results


@pytest.fixture(scope="module")
def bad_input_results(good_run, tmp_path_factory):
    """Every row of every script, run through the real CLIs (one process per script, in
    parallel) while live runs hold {busy} and {busy_eval}; with what was on disk before and after."""
    work = tmp_path_factory.mktemp("bad_inputs")
    paths = _bad_input_files(work, good_run)
    watched = (good_run, paths["evalout"], paths["mine"], paths["badcfg"])
    before = [snapshot(w) for w in watched]
    names_before = {p.name for p in work.iterdir()}
    results = {}
    with RunLock(paths["busy"]), RunLock(paths["busy_eval"], flag="--output_path"):
        procs = [(script, *_start(script, kind, rows, paths, work)) for script, (kind, rows) in SCRIPTS.items()]
        for script, proc, path in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            results[script] = json.loads(path.read_text())
    after = [snapshot(w) for w in watched]
    created = sorted(p.name for p in work.iterdir() if p.name not in names_before and p.is_dir()
                     and (any(p.rglob("*.pth")) or (p.name != "full" and (p / "config.json").exists())))
    return {"results": results, "paths": paths, "unchanged": before == after, "created": created}


@pytest.mark.slow
@pytest.mark.parametrize("script,index", BAD_INPUTS)
def test_bad_input(bad_input_results, script, index):
    """Exit status 2, one line naming the problem (no traceback), nothing valid changed on disk."""
    args, expect, _ = SCRIPTS[script][1][index]
    expect = _fill(expect, bad_input_results["paths"])
    r = bad_input_results["results"][script][index]
    prog = Path(script).name
    lines = [line for line in r["stderr"].splitlines() if line.startswith(f"{prog}: error:")]
    assert r["code"] == EXIT_USER_ERROR, (args, r)
    assert len(lines) == 1 and expect in lines[0], (args, expect, r["stderr"][-2000:])
    assert "Traceback" not in r["stderr"], (args, r["stderr"][-3000:])
    assert bad_input_results["unchanged"]  # the run, its checkpoints, the previous report, other folders
    assert bad_input_results["created"] == []  # no refused run saved a checkpoint or its record (config.json)
    assert bad_input_results["paths"]["exported"].read_bytes() == b"previous export"
    assert bad_input_results["paths"]["precious"].read_text() == "a user's file"  # never written through a link


@pytest.mark.slow
def test_real_cli_exit_status_and_one_line(tmp_path):
    r = subprocess.run([sys.executable, "train.py", *TRAIN, f"--workdir={tmp_path / 'w'}",
                        "--config.train.batch_size=0"], cwd=ROOT, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "ADADIFF_DEBUG"})
    assert r.returncode == EXIT_USER_ERROR
    assert r.stderr == "train.py: error: invalid config: config.train.batch_size=0: must be an integer >= 1\n"
    assert not (tmp_path / "w").exists()


STOPS = [("train.py", "SIGINT", 0.0), ("eval.py", "SIGINT", 0.0), ("train.py", "SIGTERM", 0.0),
         ("eval.py", "SIGTERM", 0.0), ("eval.py", "SIGTERM", 0.7), ("eval.py", "SIGTERM", 2.0),
         ("eval.py", "SIGHUP", 0.0), ("eval.py", "SIGHUP", 1.2)]


@pytest.mark.slow
@pytest.mark.parametrize("script,name,delay", STOPS)
def test_real_signal_stops_cleanly(good_run, tmp_path, script, name, delay):
    """Ctrl-C, SIGTERM or SIGHUP at several moments of a run (``delay`` seconds after it is
    under way): one line, status 128 + signal, no traceback, lock released, nothing staged left."""
    out = tmp_path / "out"
    args = TRAIN + [f"--workdir={out}", "--config.train.n_steps=100000"] if script == "train.py" else \
        TINY + ["--config.sample.fid_stat=", "--config.sample.n_samples=100000", "--config.sample.mini_batch_size=2",
                f"--nnet_path={good_run / 'ckpts/2.ckpt/nnet_ema.pth'}", f"--output_path={out}"]
    env = {k: v for k, v in os.environ.items() if k != "ADADIFF_DEBUG"}
    signum = getattr(signal, name)
    # A shell's background job starts with SIGINT ignored, and Python then installs no Ctrl-C
    # handler: give the child the default disposition, as a terminal's foreground job has.
    p = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    watchdog = threading.Timer(300, p.kill)  # never hang the suite: a run that ignores the signal fails below
    watchdog.start()
    try:
        for line in p.stderr:  # wait until the run is under way
            if " step 1 " in line or "evaluating" in line:
                break
        threading.Timer(delay, p.send_signal, (signum,)).start() if delay else p.send_signal(signum)
        err = p.stderr.read()
        p.wait(timeout=120)
    finally:
        watchdog.cancel()
        p.kill()
    what = "interrupted (Ctrl-C)" if name == "SIGINT" else f"stopped by {name}"
    assert p.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and err.count(f"{script}: {what}") == 1, err[-2000:]
    assert not (out / "run.lock").exists() and not (out / ".eval.tmp").exists()
    assert not [q for q in out.rglob("*") if q.name.endswith((".tmp", ".old"))]


# ----------------------------------------------------------------------------- several processes (gloo, CPU)
def _launch(script, args, timeout_s="30"):
    """``accelerate launch`` of 2 CPU processes, with the project's collective timeout."""
    env = {k: v for k, v in os.environ.items() if k != "ADADIFF_DEBUG"}
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", ADADIFF_COLLECTIVE_TIMEOUT=timeout_s)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", script, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _finish(p, limit=300):
    """Wait for the launcher, killing it (and failing) past ``limit`` seconds."""
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"the launch hung for over {limit} s: {err[-2000:]}")
    return p.returncode, out, err


@pytest.mark.slow
def test_two_processes_with_an_empty_shard_finish(good_run, tmp_path):
    """16 samples in one batch of 16 on 2 processes (one gets no batch): the evaluation ends,
    counting 16 images; periodic evaluation in training (2 samples) ends and saves."""
    nnet = good_run / "ckpts/2.ckpt/nnet_ema.pth"
    args = TINY + [f"--nnet_path={nnet}", "--exit_threshold=0.5", "--config.sample.fid_stat=",
                   "--config.sample.n_samples=16", "--config.sample.mini_batch_size=16",
                   "--config.sample.sample_steps=2"]
    code, _, err = _finish(_launch("eval.py", args + [f"--output_path={tmp_path / 'eval'}"]))
    assert code == 0, err[-3000:]
    one = subprocess.run([sys.executable, "eval.py", *args, f"--output_path={tmp_path / 'one'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    keys = ("policy", "n_images", "mean_blocks", "layer_ratio", "gflops_per_image", "exit_block_per_step")
    two, one = (json.loads((tmp_path / f"{d}/report.json").read_text()) for d in ("eval", "one"))
    assert [[r[k] for k in keys] for r in two] == [[r[k] for k in keys] for r in one]  # same counts as 1 process
    code, _, err = _finish(_launch("train.py", TRAIN + [f"--workdir={tmp_path / 'train'}", "--config.train.n_steps=1",
                                                        "--config.train.eval_interval=1", "--config.sample.fid_stat=",
                                                        "--config.sample.n_samples=2",
                                                        "--config.sample.mini_batch_size=2",
                                                        "--config.sample.sample_steps=2"]))
    assert code == 0, err[-3000:]
    assert list_checkpoints(tmp_path / "train/ckpts")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_stalled_or_killed_worker_ends_the_run_in_one_line(good_run, tmp_path, fault):
    """A worker stopped (SIGSTOP) or killed mid-evaluation: the other process stops within the
    collective timeout (5 s here) with one line naming what happened, no backend traceback."""
    import psutil

    p = _launch("eval.py", TINY + [f"--nnet_path={good_run / 'ckpts/2.ckpt/nnet_ema.pth'}", "--exit_threshold=0.5",
                                   "--config.sample.fid_stat=", "--config.sample.n_samples=400",
                                   "--config.sample.mini_batch_size=2", "--config.sample.sample_steps=2",
                                   f"--output_path={tmp_path / 'eval'}"], timeout_s="5")
    workers = []
    try:
        for line in p.stderr:  # the main process logs this once every process is set up
            if "evaluating" in line:
                break
        workers = [c for c in psutil.Process(p.pid).children(recursive=True) if "eval.py" in " ".join(c.cmdline())]
        assert len(workers) == 2
        victim = max(workers, key=lambda w: w.pid)
        victim.send_signal(getattr(signal, fault))
        deadline = threading.Timer(120, p.kill)
        deadline.start()
        err = ""
        for line in p.stderr:
            err += line
            if line.startswith("eval.py: ") and fault == "SIGSTOP":  # the survivor has spoken: end the stopped one
                victim.kill()
        deadline.cancel()
        p.wait(timeout=60)
    finally:
        for w in workers:
            try:
                w.send_signal(signal.SIGCONT)
                w.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        p.kill()
    said = [line for line in err.splitlines() if line.startswith("eval.py: ")]
    assert len(said) == 1, err[-3000:]
    if fault == "SIGSTOP":
        assert said[0].startswith("eval.py: error: process 0 of 2: process 1 stopped answering (no reply within 5 s")
    else:  # the launcher stops the survivor, or the survivor finds the connection closed first
        assert "stopped by SIGTERM (from the launcher" in said[0] or "lost process 1" in said[0], said
    assert "gloo" not in err.lower() and "DistBackendError" not in err, err[-3000:]
    assert not (tmp_path / "eval/run.lock").exists() and not (tmp_path / "eval/.eval.tmp").exists()


@pytest.mark.slow
def test_precision_and_process_count_are_recorded_and_a_changed_resume_warns(tmp_path):
    """fp16 asked for on a CPU: the log says it runs in fp32 and the checkpoint records fp32;
    resuming in bf16 warns that the result differs from an uninterrupted run's; the eval report
    records the precision and the process count."""
    env = {k: v for k, v in os.environ.items() if k != "ADADIFF_DEBUG"}
    work = tmp_path / "run"

    def train_in(precision, n_steps):
        r = subprocess.run([sys.executable, "train.py", *TRAIN, f"--workdir={work}", f"--config.train.n_steps={n_steps}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**env, "ACCELERATE_MIXED_PRECISION": precision})
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stderr

    err = train_in("fp16", 2)
    assert "mixed precision fp16 is not available on cpu: this run computes in fp32" in err
    assert "1 process(es) on cpu, precision fp32" in err
    assert json.loads((work / "ckpts/2.ckpt/run.json").read_text()) == {"precision": "fp32", "processes": 1}
    err = train_in("bf16", 3)
    assert "with precision fp32 -> bf16: the result will differ from an uninterrupted run's" in err
    assert json.loads((work / "ckpts/3.ckpt/run.json").read_text()) == {"precision": "bf16", "processes": 1}
    r = subprocess.run([sys.executable, "eval.py", *TINY, f"--nnet_path={work / 'ckpts/3.ckpt/nnet_ema.pth'}",
                        "--config.sample.fid_stat=", "--config.sample.n_samples=2", "--config.sample.mini_batch_size=2",
                        "--config.sample.sample_steps=2", f"--output_path={tmp_path / 'eval'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**env, "ACCELERATE_MIXED_PRECISION": "bf16"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "eval/report.json").read_text())
    assert {(row["precision"], row["processes"]) for row in rows} == {("bf16", 1)}
    assert "1 process(es), precision bf16" in r.stderr


@pytest.mark.slow
def test_multi_gpu_on_a_cpu_without_accelerate_use_cpu_is_refused(tmp_path):
    """Two processes that do not join would each train the whole run into one workdir."""
    env = {k: v for k, v in os.environ.items() if k not in ("ADADIFF_DEBUG", "ACCELERATE_USE_CPU")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "train.py", *TRAIN,
           f"--workdir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    said = [line for line in r.stderr.splitlines() if line.startswith("train.py: error:")]
    assert said and all("did not join into one run" in line and "ACCELERATE_USE_CPU=1" in line for line in said), \
        r.stderr[-3000:]
    assert not (tmp_path / "run/ckpts").exists() and not (tmp_path / "run/stats.jsonl").exists()
