"""``config.train.log_with``: training logs every loss term to TensorBoard and to Weights & Biases
(offline), and what the trackers stored is what ``stats.jsonl`` holds (CPU, no network)."""
import json
import struct

import pytest

from libs.tasks.pixel import PixelTask
from libs.training.engine import train
from tests.helpers.configs import tiny_config

TERMS = ("loss", "denoise", "uem", "layerwise")


def train_3_steps(workdir, log_with):
    config = tiny_config(workdir, n_steps=3, batch_size=8, log_interval=1, save_interval=3, log_with=log_with)
    train(config, PixelTask(config))
    rows = [json.loads(line) for line in (workdir / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    return rows


def test_tensorboard_event_file_holds_the_loss_terms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = train_3_steps(tmp_path / "run", "tensorboard")
    folders = {p.parent for p in (tmp_path / "run").rglob("events.out.tfevents.*")}
    scalars = {}
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in events.Scalars(tag)]
    for term in TERMS + ("lr", "grad_norm"):
        assert scalars[term] == [(r["step"], pytest.approx(r[term], rel=1e-6)) for r in rows], term


def read_wandb_history(path):
    """History rows of a ``run-<id>.wandb`` file: records in the LevelDB log format (32 KiB blocks,
    7-byte record headers: checksum u32, length u16, type u8 = full 1 / first 2 / middle 3 / last 4)
    after a 7-byte file header, each record a serialized wandb ``Record`` message."""
    from wandb.proto import wandb_internal_pb2

    data, block, head = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, parts, rows = 7, b"", []
    while pos + head <= len(data):
        if block - pos % block < head:  # block trailer: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + head])
        parts += data[pos + head:pos + head + length]
        pos += head + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind not in (2, 3):
            break
    return rows


@pytest.mark.slow
def test_wandb_offline_run_holds_the_loss_terms(tmp_path, monkeypatch):
    for key, value in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb_dir"), WANDB_SILENT="true",
                           WANDB_CONSOLE="off", WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
                           WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
                           ).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb_dir").mkdir()
    rows = train_3_steps(tmp_path / "run", "wandb")
    [run_file] = (tmp_path / "wandb_dir").glob("wandb/offline-run-*/run-*.wandb")
    history = read_wandb_history(run_file)
    assert [h["step"] for h in history] == [1, 2, 3]
    for h, r in zip(history, rows):
        for term in TERMS + ("lr", "grad_norm"):
            assert h[term] == pytest.approx(r[term], rel=1e-12), term
