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


def _eval(config, out, nnet):
    from libs.cli.entry import eval_main

    class Flags(types.SimpleNamespace):
        def __getattr__(self, name):  # flags this test does not set
            return None

        def __getitem__(self, name):
            return types.SimpleNamespace(config_filename="configs/digits_uvit_tiny.py")

    flags_obj = Flags(config=config, nnet_path=str(nnet), output_path=str(out), exit_threshold="0.5",
                      workdir=str(out.parent))
    return eval_main(flags_obj, lambda c: PixelTask(c, load_data=False), "eval.py")


def test_eval_report_and_its_config_belong_together(good_run, tmp_path, monkeypatch):
    import libs.evaluation.engine as engine

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
    assert snapshot(out, skip=("log.txt",)) == {k: v for k, v in first.items()} | {
        k: v for k, v in snapshot(out).items() if k.startswith(".eval.tmp")}  # old pair untouched

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
def _runner(script, cases, tmp_path, kind="absl"):
    spec = tmp_path / f"{Path(script).stem}_spec.json"
    spec.write_text(json.dumps({"script": script, "kind": kind, "cases": [{"args": c[0], "fault": c[2]}
                                                                           for c in cases]}))
    results = tmp_path / f"{Path(script).stem}_results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ADADIFF_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.cli_runner", str(spec), str(results)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, results


def _check(name, cases, proc, results):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(results.read_text())
    assert len(got) == len(cases)
    prog = Path(name).name
    for (args, expect, _), r in zip(cases, got):
        lines = [line for line in r["stderr"].splitlines() if line.startswith(f"{prog}: error:")]
        assert r["code"] == EXIT_USER_ERROR, (args, r)
        assert len(lines) == 1 and expect in lines[0], (args, expect, r["stderr"][-2000:])
        assert "Traceback" not in r["stderr"], (args, r["stderr"][-3000:])


@pytest.mark.slow
def test_bad_inputs_table(good_run, tmp_path):
    work = tmp_path
    good = str(good_run)
    a_file = work / "a_file"
    a_file.write_text("not a folder")
    garbage = work / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    nan = work / "nan.pth"
    sd = torch.load(good_run / "ckpts/2.ckpt/nnet_ema.pth", weights_only=True)
    save_weights({k: v.clone().fill_(float("nan")) if k == "pos_embed" else v for k, v in sd.items()}, nan)
    flipped = work / "flipped.ckpt"
    shutil.copytree(good_run / "ckpts/2.ckpt", flipped)
    flip_byte(flipped / "nnet_ema.pth")
    evalout = work / "evalout"
    evalout.mkdir()
    (evalout / "report.txt").write_text("previous report\n")
    (evalout / "config.json").write_text('{"previous": true}\n')
    exported = work / "exported.pth"
    exported.write_bytes(b"previous export")
    busy = work / "busy"
    gw = f"--workdir={good}"

    # (arguments, expected text in the one error line, simulated fault)
    train_cases = [
        (TRAIN + [gw, "--config.train.batch_size=0"], "config.train.batch_size=0: must be an integer >= 1", None),
        (TRAIN + [gw, "--config.train.batch_size=-4"], "config.train.batch_size=-4", None),
        (TRAIN + [gw, "--config.train.n_steps=0"], "config.train.n_steps=0: must be an integer >= 1", None),
        (TRAIN + [gw, "--config.train.n_steps=-5"], "config.train.n_steps=-5", None),
        (TRAIN + [gw, "--config.train.save_interval=-1"], "config.train.save_interval=-1: must be an integer >= 0",
         None),
        (TRAIN + [gw, "--config.train.log_interval=-10"], "config.train.log_interval=-10", None),
        (TRAIN + [gw, "--config.train.keep_ckpts=-1"], "config.train.keep_ckpts=-1", None),
        (TRAIN + [gw, "--config.train.ema_rate=2.0"], "config.train.ema_rate=2.0: must be a finite number in [0, 1]",
         None),
        (TRAIN + [gw, "--config.train.ema_rate=-0.5"], "config.train.ema_rate=-0.5", None),
        (TRAIN + [gw, "--config.train.grad_clip=-1.0"], "config.train.grad_clip=-1.0", None),
        (TRAIN + [gw, "--config.optimizer.lr=inf"], "config.optimizer.lr=inf: must be a finite number in (0, inf)",
         None),
        (TRAIN + [gw, "--config.optimizer.lr=0.0"], "config.optimizer.lr=0.0", None),
        (TRAIN + [gw, "--config.optimizer.lr=-0.001"], "config.optimizer.lr=-0.001", None),
        (TRAIN + [gw, "--config.optimizer.name=sgd"], "config.optimizer.name='sgd': choose one of adamw", None),
        (TRAIN + [gw, "--config.lr_scheduler.name=cosine"], "config.lr_scheduler.name='cosine': choose one of "
                                                            "customized", None),
        (TRAIN + [gw, "--config.lr_scheduler.warmup_steps=-1"], "config.lr_scheduler.warmup_steps=-1", None),
        (TRAIN + [gw, "--config.loss.objective=ddpm"], "config.loss.objective='ddpm': choose one of adadiff, uvit",
         None),
        (TRAIN + [gw, "--config.loss.layer_weight=mean"], "config.loss.layer_weight='mean': choose one of", None),
        (TRAIN + [gw, "--config.loss.p_uncond=1.5"], "config.loss.p_uncond=1.5", None),
        (TRAIN + [gw, "--config.sample.algorithm=ddim"], "config.sample.algorithm='ddim': choose one of", None),
        (TRAIN + [gw, "--config.nnet.num_heads=3"], "embed_dim=32 is not divisible by config.nnet.num_heads=3", None),
        (TRAIN + [gw, "--config.nnet.patch_size=3"], "img_size=8 is not divisible by config.nnet.patch_size=3", None),
        (TRAIN + [gw, "--config.nnet.name=vit"], "config.nnet.name='vit': choose one of uvit, uvit_t2i", None),
        (TRAIN + [gw, "--config.time=discrete"], "use train_discrete.py", None),
        (TRAIN + [gw, "--config.train.no_such_key=1"], "unknown config field '--config.train.no_such_key'", None),
        (TRAIN + [gw, "--config.train.batch_size=abc"], "--config.train.batch_size=abc", None),
        (["--config=configs/no_such_config.py", gw], "no_such_config.py", None),
        (TRAIN + [gw, "--config.train.n_steps=3", "--config.nnet.embed_dim=64"], "shape mismatch pos_embed", None),
        (TRAIN + [f"--workdir={a_file}"], "is a file, not a folder", None),
        (TRAIN + [f"--workdir={a_file}/run"], "is a file, not a folder", None),
        (TRAIN + [f"--workdir={busy}"], f"in use by another run: pid {os.getpid()}", None),
        (TRAIN + [gw, "--config.train.n_steps=3"], "Read-only file system", {"erofs": good}),
        (TRAIN + [f"--workdir={work / 'ro' / 'run'}"], "Read-only file system", {"erofs": str(work / "ro")}),
        (TRAIN + [gw, "--config.train.n_steps=3"], "No space left on device: " + good + "/config.json",
         {"enospc": "config.json"}),
        (TRAIN + [f"--workdir={work / 'full'}"], "No space left on device", {"enospc": ".pth"}),
        (TRAIN + [f"--workdir={work / 'pre1'}", f"--pretrained_weight={garbage}"],
         f"cannot read {garbage} as a .safetensors file", None),
        (TRAIN + [f"--workdir={work / 'pre2'}", f"--pretrained_weight={work / 'missing.pth'}"],
         "weights file not found", None),
        (TRAIN + [f"--workdir={work / 'pre3'}", f"--pretrained_weight={nan}"], "non-finite", None),
    ]
    ev = ["--config.sample.fid_stat=", "--config.sample.n_samples=4", "--config.sample.mini_batch_size=4",
          "--config.sample.sample_steps=2", f"--output_path={evalout}"]
    nnet = f"--nnet_path={good_run / 'ckpts/2.ckpt/nnet_ema.pth'}"
    eval_cases = [
        (TINY + ev + [nnet, "--exit_threshold=1.3"], "exit policy '1.3': the threshold is out of range", None),
        (TINY + ev + [nnet, "--exit_threshold=abc"], "'abc' is not a number", None),
        (TINY + ev + [nnet, "--exit_threshold=static:1"], "use --exit_policy for static:K", None),
        (TINY + ev + [nnet, "--exit_policy=0.9", "--exit_threshold=0.9"], "not both", None),
        (TINY + ev + [nnet, "--exit_policy=0.9,cosine:1"], "unknown exit policy 'cosine:1'", None),
        (TINY + ev + [nnet, "--exit_policy=static:9"], "static:9: the network has", None),
        (TINY + ev + [nnet, "--exit_policy=budget:0"], "budget:0", None),
        (TINY + ev, "no weights to evaluate", None),
        (TINY + ev + [f"--nnet_path={work / 'missing.pth'}"], "weights file not found", None),
        (TINY + ev + [f"--nnet_path={garbage}"], f"cannot read {garbage} as a .safetensors file", None),
        (TINY + ev + [f"--nnet_path={nan}"], "holds non-finite values", None),
        (TINY + ev + [f"--nnet_path={flipped / 'nnet_ema.pth'}"], "does not match its checksum", None),
        (TINY + ev + [nnet, "--config.nnet.embed_dim=64"], "shape mismatch pos_embed", None),
        (TINY + ev + [nnet, "--config.nnet.num_heads=5"], "not divisible by config.nnet.num_heads=5", None),
        (TINY + ev + [nnet, "--config.sample.algorithm=ddim"], "config.sample.algorithm='ddim'", None),
        (TINY + ev + [nnet, "--config.sample.n_samples=0"], "config.sample.n_samples=0", None),
        (TINY + ev + [nnet, "--config.sample.sample_steps=0"], "config.sample.sample_steps=0", None),
        (TINY + ev + [nnet, f"--output_path={a_file}"], "is a file, not a folder", None),
        (TINY + ev + [nnet, f"--output_path={work / 'ro2' / 'eval'}"], "Read-only file system",
         {"erofs": str(work / "ro2")}),
    ]
    src = str(good_run / "ckpts/2.ckpt/nnet_ema.pth")
    export_cases = [
        ([str(work / "missing.pth"), str(exported)], "weights file not found", None),
        ([str(garbage), str(exported)], "as a .safetensors file", None),
        ([str(flipped / "nnet_ema.pth"), str(exported)], "does not match its checksum", None),
        ([src, str(exported)], f"No space left on device: {exported}", {"enospc": "exported.pth"}),
        ([src, str(work)], "Is a directory", None),
    ]
    good_before, eval_before = snapshot(good_run), snapshot(evalout)
    with RunLock(busy):  # a live run holds this workdir
        procs = [(name, cases, *_runner(name, cases, work, kind))
                 for name, cases, kind in (("train.py", train_cases, "absl"), ("eval.py", eval_cases, "absl"),
                                           ("scripts/export_weights.py", export_cases, "argparse"))]
        for name, cases, proc, results in procs:
            _check(name, cases, proc, results)
    assert len(train_cases) + len(eval_cases) + len(export_cases) >= 25
    assert snapshot(good_run) == good_before  # checkpoints, config.json, stats.jsonl untouched
    assert snapshot(evalout) == eval_before  # the previous report and its config.json untouched
    assert exported.read_bytes() == b"previous export"
    assert not (work / "full" / "ckpts").exists() or not any((work / "full" / "ckpts").iterdir())
    for fresh in ("pre1", "pre2", "pre3"):  # refused before the run's record was written
        assert not (work / fresh / "config.json").exists()


@pytest.mark.slow
def test_real_cli_exit_status_and_one_line(tmp_path):
    r = subprocess.run([sys.executable, "train.py", *TRAIN, f"--workdir={tmp_path / 'w'}",
                        "--config.train.batch_size=0"], cwd=ROOT, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "ADADIFF_DEBUG"})
    assert r.returncode == EXIT_USER_ERROR
    assert r.stderr == "train.py: error: invalid config: config.train.batch_size=0: must be an integer >= 1\n"
    assert not (tmp_path / "w").exists()
