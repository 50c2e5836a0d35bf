"""The evaluation report (libs/evaluation/report.py) on hand-made rows: the reuse columns of
report.txt and report.csv (reused, forecast, cache memory) and blocks_per_step.csv (blocks
computed, reused and forecast per sampling step of each row)."""
import csv
import math

import numpy as np
import pytest

from libs.evaluation.report import COLUMNS, PolicyResult, write_report


def _row(policy, family, steps, computed, reused, forecast, cache_kib):
    n = len(computed)
    return PolicyResult(policy=policy, family=family, threshold=math.nan, n_images=4, fid=math.nan,
                        mean_blocks=sum(computed) / n, layer_ratio=sum(computed) / n / 7, gflops_per_image=1.0,
                        seconds=1.0, images_per_s=4.0, sample_steps=steps, exit_block_per_step=[6.0] * n,
                        blocks_reused=sum(reused) / n, blocks_forecast=sum(forecast) / n,
                        cache_kib_per_image=cache_kib, blocks_computed_per_step=computed,
                        blocks_reused_per_step=reused, blocks_forecast_per_step=forecast)


ROWS = [_row("full", "full", 4, [7, 7, 7, 7], [0, 0, 0, 0], [0, 0, 0, 0], 0.0),
        _row("forecast:2:1:1", "forecast", 4, [7, 2, 7, 2], [0, 5, 0, 5], [0, 0, 0, 5], 18.0),
        _row("deepcache:2:1", "deepcache", 3, [7, 2, 7], [0, 5, 0], [0, 0, 0], 9.0)]


def test_report_txt_has_reused_forecast_and_cache_columns(tmp_path):
    pytest.importorskip("matplotlib")
    write_report(ROWS, tmp_path)
    lines = (tmp_path / "report.txt").read_text().splitlines()
    head = lines[0].split()
    assert head[head.index("reused") + 1:head.index("reused") + 3] == ["forecast", "cacheKiB"]
    fc = next(x.split() for x in lines[1:4] if "forecast:2:1:1" in x)
    at = head.index("reused")  # the columns line up with the header's words
    assert fc[at:at + 3] == ["2.50", "1.25", "18.0"]
    dc = next(x.split() for x in lines[1:4] if "deepcache:2:1" in x)
    assert dc[at:at + 3] == ["1.67", "0.00", "9.0"]


def test_report_csv_keeps_its_columns_and_adds_blocks_forecast(tmp_path):
    pytest.importorskip("matplotlib")
    write_report(ROWS, tmp_path)
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    assert COLUMNS.index("blocks_forecast") == COLUMNS.index("blocks_reused") + 1
    assert [float(r["blocks_forecast"]) for r in rows] == [0.0, 1.25, 0.0]
    assert [float(r["blocks_reused"]) for r in rows] == pytest.approx([0.0, 2.5, 5 / 3])


def test_blocks_per_step_csv_holds_computed_reused_and_forecast_per_row(tmp_path):
    pytest.importorskip("matplotlib")
    write_report(ROWS, tmp_path)
    path = tmp_path / "blocks_per_step.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert header == [f"{r.label} {k}" for r in ROWS for k in ("computed", "reused", "forecast")]
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    assert table.shape == (4, 9)
    assert table[:, 3:6].T.tolist() == [[7, 2, 7, 2], [0, 5, 0, 5], [0, 0, 0, 5]]
    assert table[:3, 6:9].T.tolist() == [[7, 2, 7], [0, 5, 0], [0, 0, 0]] and np.isnan(table[3, 6:9]).all()
    steps = np.loadtxt(tmp_path / "exit_block_per_step.csv", delimiter=",", skiprows=1)  # unchanged beside it
    assert steps.shape == (4, 3) and steps[0].tolist() == [6, 6, 6]
