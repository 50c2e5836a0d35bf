"""Collectives for shards of any size, the collective timeout and the one line of a lost
process (libs/run/distributed.py): two gloo processes on the CPU, bounded in time."""
import os
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.run import distributed
from libs.run.distributed import collective_failure, collective_timeout, sum_rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, rows, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=30))
    acc = types.SimpleNamespace(num_processes=world, device=torch.device("cpu"))
    mine = torch.arange(rows[rank] * 3, dtype=torch.long).reshape(rows[rank], 3) + 100 * rank
    results[rank] = sum_rows(mine, acc).tolist()
    results[f"silent{rank}"] = collective_failure(RuntimeError("[gloo] Timed out waiting 5000ms for recv"))
    results[f"lost{rank}"] = collective_failure(RuntimeError("[pair.cc:534] Connection closed by peer [::1]:1"))
    results[f"bug{rank}"] = collective_failure(RuntimeError("shape mismatch in matmul"))
    dist.destroy_process_group()


@pytest.mark.parametrize("rows", [(0, 3), (2, 0), (0, 0), (4, 1)])
def test_uneven_and_empty_shards_sum(rows):
    """Two processes holding 0..4 rows: no hang, the sum pads with zero rows."""
    results = mp.Manager().dict()
    ctx = mp.start_processes(_worker, args=(2, _free_port(), rows, results), nprocs=2, join=False,
                             start_method="fork")
    for p in ctx.processes:
        p.join(60)  # the watchdog: a hang fails here instead of holding the suite
    alive = [p for p in ctx.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive and all(p.exitcode == 0 for p in ctx.processes)
    shards = [torch.arange(n * 3).reshape(n, 3) + 100 * r for r, n in enumerate(rows)]
    total = torch.zeros(max(rows), 3, dtype=torch.long)
    for s in shards:
        total[:s.shape[0]] += s
    for rank in range(2):
        assert results[rank] == total.tolist()
        assert results[f"silent{rank}"].startswith(f"process {rank} of 2: process {1 - rank} stopped answering")
        assert results[f"lost{rank}"].startswith(f"process {rank} of 2: lost process {1 - rank} (its connection")
        assert results[f"bug{rank}"] is None  # a bug keeps its traceback


def test_one_process_is_the_identity_and_not_a_collective_failure():
    acc = types.SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    t = torch.ones(0, 4)
    assert sum_rows(t, acc) is t
    assert collective_failure(RuntimeError("Connection closed by peer")) is None  # no process group here


def test_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert collective_timeout() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert collective_timeout() == 7.5
    assert distributed.process_group_kwargs()[0].timeout.total_seconds() == 7.5
    for bad in ("0", "-3", "abc", "inf", "1e309", "nan"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=rf"ADADIFF_COLLECTIVE_TIMEOUT='{bad}': must be a number of seconds"):
            collective_timeout()


def _acc(mixed, native, n=1, device="cpu"):
    return types.SimpleNamespace(mixed_precision=mixed, native_amp=native, num_processes=n,
                                 device=torch.device(device))


def test_the_precision_recorded_is_the_one_used():
    assert distributed.precision_used(_acc("no", False)) == "fp32"
    assert distributed.precision_used(_acc("bf16", True)) == "bf16"
    assert distributed.precision_used(_acc("fp16", False)) == "fp32"  # fp16 asked for on a CPU: accelerate runs fp32
    assert distributed.precision_note(_acc("bf16", True)) is None
    assert distributed.precision_note(_acc("fp16", False)) == ("mixed precision fp16 is not available on cpu: this "
                                                               "run computes in fp32 (recorded as fp32)")
    assert distributed.run_record(_acc("fp16", False, 2)) == {"precision": "fp32", "processes": 2}
    assert distributed.record_change({"precision": "fp32", "processes": 2}, {"precision": "bf16", "processes": 1}) \
        == "precision fp32 -> bf16; processes 2 -> 1"
    assert distributed.record_change({}, {"precision": "bf16", "processes": 1}) is None  # an older checkpoint


def test_processes_that_did_not_join_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"launched as 2 processes \(WORLD_SIZE=2\) that did not join into one run.*"
                                         r"ACCELERATE_USE_CPU=1"):
        distributed.check_launch(_acc("no", False, 1))
    distributed.check_launch(_acc("no", False, 2))  # joined: fine
    monkeypatch.delenv("WORLD_SIZE")
    distributed.check_launch(_acc("no", False, 1))  # plain python train.py
