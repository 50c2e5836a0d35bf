"""Destinations that cannot hurt a run (libs/run/output_guard.py): refused inside checkpoints
and training workdirs and over their own inputs; allowed elsewhere, also in a new folder of a
workdir (the default report folder <workdir>/eval)."""
import json

import pytest

from libs.run.output_guard import (UnsafeDestinationError, check_output_file, check_output_folder,
                                   check_report_folder, fresh_sample_tree, is_sample_file)


@pytest.fixture
def tree(tmp_path):
    """A training workdir with one checkpoint, an eval folder, a lone locked training folder."""
    w = tmp_path / "run"
    (w / "ckpts/2.ckpt").mkdir(parents=True)
    for name in ("nnet.pth", "nnet_ema.pth", "manifest.json", "config.json"):
        (w / "ckpts/2.ckpt" / name).write_text("x")
    (w / "config.json").write_text("{}")
    (w / "stats.jsonl").write_text("")
    (w / "samples").mkdir()
    (w / "eval").mkdir()
    (w / "eval/report.txt").write_text("old")
    fresh = tmp_path / "fresh_training"
    fresh.mkdir()
    (fresh / "run.lock").write_text(json.dumps({"pid": 1, "command": "python train.py --config=x"}))
    loose = tmp_path / "loose_ckpt"
    loose.mkdir()
    (loose / "nnet_ema.pth").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    return tmp_path


FOLDERS = [  # (case, folder under the tree, refused message or None)
    ("the workdir", "run", "is the training workdir"),
    ("a checkpoint", "run/ckpts/2.ckpt", "is a checkpoint"),
    ("inside a checkpoint", "run/ckpts/2.ckpt/sub", "lies inside .*2.ckpt, which is a checkpoint"),
    ("the ckpts folder", "run/ckpts", "lies in .*ckpts of the training workdir"),
    ("inside the samples folder", "run/samples/x", "lies in .*samples of the training workdir"),
    ("a folder of loose checkpoint files", "loose_ckpt", "is a checkpoint"),
    ("a workdir known only by its training lock", "fresh_training", "is the training workdir"),
    ("the default report folder", "run/eval", None),
    ("a new folder in a workdir", "run/eval_0.9/new", None),
    ("elsewhere", "elsewhere/new", None),
]


@pytest.mark.parametrize("case,rel,refused", FOLDERS, ids=[f[0] for f in FOLDERS])
def test_output_folders(tree, case, rel, refused):
    if refused is None:
        assert check_output_folder(tree / rel, "--output_path") == tree / rel
    else:
        with pytest.raises(UnsafeDestinationError, match=f"--output_path={tree / rel} {refused}"):
            check_output_folder(tree / rel, "--output_path")


def test_links_do_not_hide_a_checkpoint(tree):
    (tree / "link").symlink_to(tree / "run/ckpts/2.ckpt")
    with pytest.raises(UnsafeDestinationError, match="is a checkpoint"):
        check_output_file(tree / "link/out.pth", "DST")


FILES = [  # (case, destination, inputs, refused message or None)
    ("its own input", "run/eval/w.pth", ["run/eval/w.pth"], "is the input"),
    ("into a checkpoint", "run/ckpts/2.ckpt/nnet_ema.safetensors", ["elsewhere.pth"], "is a checkpoint"),
    ("over the run's config.json", "run/config.json", [], "is the training workdir"),
    ("a folder", "mine", [], "is a folder"),
    ("a new file elsewhere", "mine/export.pth", ["run/ckpts/2.ckpt/nnet_ema.pth"], None),
]


@pytest.mark.parametrize("case,rel,inputs,refused", FILES, ids=[f[0] for f in FILES])
def test_output_files(tree, case, rel, inputs, refused):
    (tree / "run/eval/w.pth").write_text("w")
    inputs = [tree / i for i in inputs]
    if refused is None:
        check_output_file(tree / rel, "DST", inputs)
    else:
        with pytest.raises(UnsafeDestinationError, match=refused):
            check_output_file(tree / rel, "DST", inputs)


REPORTS = [  # (case, report folder, inputs, refused message or None)
    ("a previous report", "run/eval", [], None),
    ("a folder of other files", "mine", [], r"holds files no evaluation wrote \(notes.txt\)"),
    ("holding the weights evaluated", "run/eval", ["run/eval/w.pth"], "holds the input"),
]


@pytest.mark.parametrize("case,rel,inputs,refused", REPORTS, ids=[r[0] for r in REPORTS])
def test_report_folders(tree, case, rel, inputs, refused):
    if inputs:
        (tree / inputs[0]).write_text("w")
    if refused is None:
        check_report_folder(tree / rel, "--output_path", [tree / i for i in inputs])
    else:
        with pytest.raises(UnsafeDestinationError, match=refused):
            check_report_folder(tree / rel, "--output_path", [tree / i for i in inputs])


WORKDIRS = [  # (case, training workdir under the tree, refused message or None)
    ("its own workdir (resume)", "run", None),
    ("a new folder", "new_run", None),
    ("a checkpoint", "run/ckpts/2.ckpt", "is a checkpoint"),
    ("inside a checkpoint", "run/ckpts/2.ckpt/run", "lies inside .*2.ckpt, which is a checkpoint"),
    ("a loose checkpoint folder", "loose_ckpt", "is a checkpoint"),
    ("in another run's ckpts", "run/ckpts/other", "lies in .*ckpts of the training workdir"),
]


@pytest.mark.parametrize("case,rel,refused", WORKDIRS, ids=[w[0] for w in WORKDIRS])
def test_training_workdirs(tree, case, rel, refused):
    if refused is None:
        check_output_folder(tree / rel, "--workdir", workdir=True)
    else:
        with pytest.raises(UnsafeDestinationError, match=refused):
            check_output_folder(tree / rel, "--workdir", workdir=True)


def test_a_sample_folder_holds_one_runs_files_only(tree):
    out = tree / "samples_out"
    (out / "full").mkdir(parents=True)
    (out / "full/0.png").write_bytes(b"old")
    (out / "full/12.png").write_bytes(b"old")
    user = tree / "mine/notes.txt"
    (out / "1.png").symlink_to(user)  # a link is removed, its target untouched
    fresh_sample_tree(out, "--config.sample.path")
    assert list(out.iterdir()) == [] and user.read_text() == "keep me"
    with pytest.raises(UnsafeDestinationError, match=r"holds files no sampling run wrote \(notes.txt\)"):
        fresh_sample_tree(tree / "mine", "--config.sample.path")
    assert user.read_text() == "keep me"
    assert [n for n in ("0.png", "17.png", "prompts.txt", "a.png", "0.png.bak", "notes.txt") if is_sample_file(n)] \
        == ["0.png", "17.png", "prompts.txt"]
    with pytest.raises(UnsafeDestinationError, match=r"holds files no sampling run wrote \(notes.txt\)"):
        check_report_folder(tree / "mine", "--output_path", owned=is_sample_file, kind="sampling run")
