"""Checkpoint choice by FID (config.train.select_best_by_fid)."""
import json
import logging

import numpy as np
import pytest

from configs.digits_uvit_tiny import get_config
from libs.training import best_checkpoint
from libs.tasks.pixel import PixelTask
from libs.training.engine import train


def write_records(workdir, records, alive):
    (workdir / "ckpts").mkdir(parents=True)
    for step in alive:
        (workdir / "ckpts" / f"{step}.ckpt").mkdir()
    (workdir / best_checkpoint.FID_FILE).write_text(json.dumps(
        [{"step": s, "fid": f, "checkpoint": f"{s}.ckpt"} for s, f in records]))


def test_choose_best_lowest_fid_earliest_on_ties(tmp_path):
    write_records(tmp_path, [(10, 5.0), (20, 3.0), (30, 3.0), (40, float("nan"))], alive=[10, 20, 30, 40])
    best = best_checkpoint.choose_best(tmp_path, n_samples=100)
    assert best == {"step": 20, "fid": 3.0, "checkpoint": "20.ckpt", "n_samples": 100}
    assert json.loads((tmp_path / "ckpts" / "best.json").read_text()) == best


def test_choose_best_skips_pruned_checkpoints(tmp_path, caplog):
    write_records(tmp_path, [(10, 5.0), (20, 3.0), (30, 4.0)], alive=[10, 30])
    with caplog.at_level(logging.WARNING):
        assert best_checkpoint.choose_best(tmp_path, logger=logging.getLogger("t"))["step"] == 30
    assert "checkpoint 20 had a lower FID" in caplog.text
    assert best_checkpoint.choose_best(tmp_path / "nothing") is None


def test_config_checks(tmp_path):
    config = get_config()
    assert config.train.select_best_by_fid is False  # off for the digits main job
    best_checkpoint.check_selection(config)
    config.train.select_best_by_fid = True
    config.sample.fid_stat = ""
    with pytest.raises(ValueError, match="config.sample.fid_stat"):
        best_checkpoint.check_selection(config)
    config.sample.fid_stat = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        best_checkpoint.check_selection(config)


@pytest.mark.slow
def test_training_selects_the_best_checkpoint_on_digits(tmp_path, monkeypatch):
    import libs.evaluation.fid
    from libs.evaluation.fid import save_statistics

    # The 2048 x 2048 matrix square root of FID takes ~10 s on a busy CPU (tests/evaluation/test_fid.py
    # checks FID itself); here the mean term alone stands in, as the choice only needs an order.
    monkeypatch.setattr(libs.evaluation.fid, "frechet_distance", lambda mu1, s1, mu2, s2: float(((mu1 - mu2) ** 2).sum()))
    save_statistics(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))  # tiny made-up reference
    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.workdir = str(tmp_path / "run")
    config.train.update(n_steps=4, batch_size=16, log_interval=2, save_interval=2, select_best_by_fid=True,
                        select_best_n_samples=4)
    config.sample.update(fid_stat=str(tmp_path / "ref.npz"), mini_batch_size=4, sample_steps=2, grid_size=4)
    chosen = train(config, PixelTask(config))
    records = json.loads((tmp_path / "run" / "checkpoint_fid.json").read_text())
    assert [r["step"] for r in records] == [2, 4] and all(np.isfinite(r["fid"]) for r in records)
    best = min(records, key=lambda r: (r["fid"], r["step"]))
    assert chosen == tmp_path / "run" / "ckpts" / best["checkpoint"]
    marker = json.loads((tmp_path / "run" / "ckpts" / "best.json").read_text())
    assert marker["step"] == best["step"] and marker["n_samples"] == 4
    assert (tmp_path / "run" / "eval" / "select_step_4" / "report.csv").is_file()
