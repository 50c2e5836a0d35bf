"""Checkpoint choice by FID (``config.train.select_best_by_fid``), as the released training
does it: each saved checkpoint's EMA network is evaluated at full depth on
``config.train.select_best_n_samples`` images; at the end the lowest FID wins.
``checkpoint_fid.json`` holds one entry per evaluated save, ``ckpts/best.json`` the choice
(``train()`` returns its directory). Checkpoints pruned by ``keep_ckpts`` are not candidates."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

FID_FILE, BEST_FILE = "checkpoint_fid.json", "best.json"  # in the workdir / in ckpts/


def enabled(config) -> bool:
    return bool(config.train.get("select_best_by_fid", False))


def check_selection(config) -> None:
    """Fail before training when the option cannot work (no reference statistics)."""
    if not enabled(config):
        return
    stat = config.sample.get("fid_stat", "")
    if not stat:
        raise ValueError("config.train.select_best_by_fid needs FID reference statistics: set "
                         "config.sample.fid_stat (see scripts/make_fid_stats.py)")
    if not Path(stat).is_file():
        raise FileNotFoundError(f"config.train.select_best_by_fid: FID statistics {stat} (config.sample.fid_stat) "
                                f"not found; make them with scripts/make_fid_stats.py")
    n = _n_samples(config)
    if n < 2:
        raise ValueError(f"config.train.select_best_n_samples={n}: FID needs at least 2 images")


def read_records(workdir) -> List[dict]:
    path = Path(workdir) / FID_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _write_json(path: Path, obj) -> None:
    from libs.run.atomic import atomic_write
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _n_samples(config) -> int:
    return int(config.train.get("select_best_n_samples", 10000))


def evaluate_checkpoint(net_ema, task, config, accelerator, workdir, step: int, logger=None) -> float:
    """FID of the EMA network saved at ``step`` (every process calls this); the main
    process records it in ``checkpoint_fid.json``. Returns the FID (NaN on other processes)."""
    from libs.evaluation.engine import evaluate

    workdir = Path(workdir)
    cfg = config.copy_and_resolve_references()
    cfg.sample.n_samples = _n_samples(config)
    fid = evaluate(net_ema, task, cfg, [1.0], accelerator, workdir / "eval" / f"select_step_{step}", logger,
                   progress=False)[0].fid
    if accelerator.is_main_process:
        records = [r for r in read_records(workdir) if r["step"] != step]
        records.append({"step": step, "fid": fid, "checkpoint": f"{step}.ckpt"})
        _write_json(workdir / FID_FILE, sorted(records, key=lambda r: r["step"]))
        if logger:
            logger.info("checkpoint %d: FID %.4g on %d images (best-checkpoint choice)", step, fid, cfg.sample.n_samples)
    accelerator.wait_for_everyone()
    return fid


def choose_best(workdir, n_samples: Optional[int] = None, logger=None) -> Optional[dict]:
    """Write ``ckpts/best.json`` for the lowest recorded FID among existing checkpoints
    (ties: the earlier step) and return it; None when nothing was recorded."""
    ckpt_root = Path(workdir) / "ckpts"
    records = [r for r in read_records(workdir) if not math.isnan(r["fid"])]
    if not records:
        return None
    key = lambda r: (r["fid"], r["step"])  # noqa: E731
    alive = [r for r in records if (ckpt_root / r["checkpoint"]).is_dir()]
    if not alive:
        raise FileNotFoundError(f"no checkpoint with a recorded FID is left in {ckpt_root} "
                                f"(pruned by config.train.keep_ckpts? set it to 0 with select_best_by_fid)")
    overall, best = min(records, key=key), dict(min(alive, key=key), n_samples=n_samples)
    if overall["step"] != best["step"] and logger:
        logger.warning("checkpoint %d had a lower FID (%.4g) but was pruned (config.train.keep_ckpts)",
                       overall["step"], overall["fid"])
    _write_json(ckpt_root / BEST_FILE, best)
    if logger:
        logger.info("best checkpoint by FID: %s (FID %.4g)", ckpt_root / best["checkpoint"], best["fid"])
    return best


def finish(config, accelerator, workdir, last_ckpt, logger=None):
    """End of training: the main process writes ``ckpts/best.json``; every process returns
    the chosen checkpoint's directory (``last_ckpt`` when nothing was evaluated)."""
    ckpt_root = Path(workdir) / "ckpts"
    if accelerator.is_main_process and choose_best(workdir, _n_samples(config), logger) is None:
        (ckpt_root / BEST_FILE).unlink(missing_ok=True)  # no stale choice from an earlier run
    accelerator.wait_for_everyone()
    path = ckpt_root / BEST_FILE
    return ckpt_root / json.loads(path.read_text())["checkpoint"] if path.is_file() else last_ckpt
