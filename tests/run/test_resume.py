"""Resume always falls back: any unreadable or inconsistent file of the latest checkpoint makes
``newest_intact_checkpoint`` skip it with a warning naming the file; checkpoints that are intact
but do not fit the run are one-line errors (libs/run/resume.py)."""
import json
import logging
import os
import pickle
import shutil

import pytest
import torch

from libs.run.checkpoint import newest_intact_checkpoint, read_checkpoint, save_checkpoint
from libs.run.manifest import MANIFEST, CorruptCheckpointError, write_manifest
from libs.run.resume import ResumeMismatchError, check_resume_step, load_training_state

FILES = ("nnet.pth", "nnet_ema.pth", "optimizer.pth", "lr_scheduler.pth", "step.pth", "config.json")


def make_state(n_params=2):
    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(n_params)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    params[0].grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sched


def save(root, step):
    opt, sched = make_state()
    sd = {"w": torch.full((3,), float(step)), "b": torch.zeros(2)}
    save_checkpoint(root, step, {"nnet.pth": sd, "nnet_ema.pth": sd, "optimizer.pth": opt.state_dict(),
                                 "lr_scheduler.pth": sched.state_dict(), "step.pth": step},
                    {"config.json": json.dumps({"nnet": {"depth": 2}})})


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tsave(obj):
    def write(path):
        torch.save(obj, path)
    return write


def raw(data):
    def write(path):
        path.write_bytes(data)
    return write


# (case id, file, how to change it, rewrite the manifest so that it matches, expected text in the warning)
CORRUPTIONS = [
    ("optimizer pickle with code, matching manifest", "optimizer.pth", "evil", True,
     "optimizer.pth is unreadable"),
    ("optimizer garbage, matching manifest", "optimizer.pth", raw(b"\x00garbage" * 9), True,
     "optimizer.pth is unreadable"),
    ("optimizer garbage, stale manifest", "optimizer.pth", raw(b"\x00garbage" * 9), False,
     "does not match its checksum"),
    ("optimizer an empty dict", "optimizer.pth", tsave({}), True, "optimizer.pth is inconsistent"),
    ("scheduler garbage, matching manifest", "lr_scheduler.pth", raw(b"PK\x03\x04junk"), True,
     "lr_scheduler.pth is unreadable"),
    ("scheduler a list", "lr_scheduler.pth", tsave([1, 2]), True, "lr_scheduler.pth is inconsistent"),
    ("step garbage, matching manifest", "step.pth", raw(b"\x80\x02junk"), True, "step.pth is unreadable"),
    ("step a dict", "step.pth", tsave({"step": 2}), True, "step.pth is inconsistent"),
    ("step of another folder", "step.pth", tsave(7), True, "holds step 7 in the folder of step 2"),
    ("step negative", "step.pth", tsave(-1), True, "step.pth is inconsistent"),
    ("weights garbage, matching manifest", "nnet.pth", raw(b"not a zip"), True, "nnet.pth is unreadable"),
    ("ema of other shapes", "nnet_ema.pth", tsave({"w": torch.zeros(4), "b": torch.zeros(2)}), True,
     "nnet_ema.pth is inconsistent"),
    ("ema non-finite", "nnet_ema.pth", tsave({"w": torch.full((3,), float("nan")), "b": torch.zeros(2)}), True,
     "non-finite"),
    ("config.json garbage, matching manifest", "config.json", raw(b"{not json"), True, "config.json is unreadable"),
    ("manifest misses an entry", MANIFEST, "drop step.pth", False, "step.pth is not listed in"),
    ("manifest is a folder", MANIFEST, "folder", False, "manifest.json is not a file"),
    ("manifest garbage", MANIFEST, raw(b"\xff\xfe"), False, "manifest.json is unreadable"),
    ("manifest entry not a checksum", MANIFEST, "entry not a dict", False, "is not a checksum"),
    ("a file missing, manifest without it", "step.pth", "delete", True, "step.pth is missing"),
]


@pytest.mark.parametrize("case,name,change,rewrite,expect", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_resume_skips_a_bad_latest_checkpoint_naming_the_file(tmp_path, caplog, case, name, change, rewrite, expect):
    root = tmp_path / "ckpts"
    save(root, 1)
    save(root, 2)
    bad = root / "2.ckpt"
    path = bad / name
    marker = tmp_path / "payload_ran"
    if change == "evil":
        torch.save({"state": {}, "param_groups": [Evil(marker)]}, path)
    elif change == "delete":
        path.unlink()
    elif change == "folder":
        path.unlink()
        path.mkdir()
    elif change == "drop step.pth":
        m = json.loads(path.read_text())
        del m["files"]["step.pth"]
        path.write_text(json.dumps(m))
    elif change == "entry not a dict":
        m = json.loads(path.read_text())
        m["files"]["nnet.pth"] = "abc"
        path.write_text(json.dumps(m))
    else:
        change(path)
    if rewrite:
        write_manifest(bad, [n for n in FILES if (bad / n).is_file()])
    with pytest.raises(CorruptCheckpointError, match=expect):
        read_checkpoint(bad)
    with caplog.at_level(logging.WARNING, logger="libs.run.checkpoint"):
        ckpt, contents = newest_intact_checkpoint(root)
    assert ckpt.name == "1.ckpt" and contents["step.pth"] == 1 and contents["verified"] is True
    assert f"skipping checkpoint {bad}" in caplog.text and expect.split(" ")[0] in caplog.text
    assert not marker.exists()


def test_no_intact_checkpoint_is_one_error_naming_them(tmp_path):
    root = tmp_path / "ckpts"
    save(root, 1)
    (root / "1.ckpt/step.pth").write_bytes(b"junk")
    with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint in .*1\.ckpt"):
        newest_intact_checkpoint(root)


def test_a_checkpoint_without_manifest_still_loads_unverified(tmp_path):
    root = tmp_path / "ckpts"
    save(root, 1)
    (root / "1.ckpt" / MANIFEST).unlink()
    assert read_checkpoint(root / "1.ckpt")["verified"] is False


MISMATCHES = [  # (case, optimizer of this run, saved step, config n_steps, expected message)
    ("other trained tensors (loss.objective changed)", 3, 2, 5,
     "optimizer.pth trains 2 tensors, this run's config trains 3"),
    ("n_steps below the saved step", 2, 4, 3, "config.train.n_steps=3 is below step 4"),
]


@pytest.mark.parametrize("case,n_params,step,n_steps,expect", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_intact_checkpoint_that_does_not_fit_the_run(tmp_path, case, n_params, step, n_steps, expect):
    root = tmp_path / "ckpts"
    save(root, 2)
    saved = read_checkpoint(root / "2.ckpt")
    opt, sched = make_state(n_params)
    with pytest.raises(ResumeMismatchError, match=expect):
        load_training_state(opt, sched, saved, root / "2.ckpt")
        check_resume_step(step, n_steps, root / "2.ckpt")
    assert check_resume_step(2, 2, root) == 2  # a finished run re-run: nothing to do, no error
