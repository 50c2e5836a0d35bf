"""Contracts of the latent datasets and feature files (libs/data/) on tiny fake copies of
the feature formats (CPU, seconds)."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from libs.data.crops import center_crop_arr, center_crop_resize
from libs.data.feature_files import load_pair, save_npy, save_pair
from libs.data.feature_writers import imagenet_feature_indices
from libs.data.paths import DatasetNotFoundError
from libs.data.registry import get_dataset

# ----------------------------------------------------------------------------
# Fake data in the real formats.


def make_imagenet_features(root, n=6, h=32, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    moments = rng.standard_normal((n, 8, h, h)).astype(np.float32)
    labels = rng.integers(0, 1000, size=n)
    for i in range(n):
        save_pair(root / f"{i}.npy", moments[i], int(labels[i]))
    return moments, labels


def make_mscoco_features(root, captions=(2, 3, 1), val=(1, 2), prompts=("a cat", "two dogs"), d=16, seed=0):
    """train/ val/ with {i}.npy moments and {i}_{k}.npy contexts, empty_context.npy, run_vis/."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, counts in (("train", captions), ("val", val)):
        folder = root / split
        folder.mkdir(parents=True)
        data[split] = []
        for i, n_caps in enumerate(counts):
            m = rng.standard_normal((8, 32, 32)).astype(np.float32)
            np.save(folder / f"{i}.npy", m)
            cs = [rng.standard_normal((77, d)).astype(np.float32) for _ in range(n_caps)]
            for k, c in enumerate(cs):
                np.save(folder / f"{i}_{k}.npy", c)
            data[split].append((m, cs))
    empty = rng.standard_normal((77, d)).astype(np.float32)
    np.save(root / "empty_context.npy", empty)
    (root / "run_vis").mkdir()
    vis = []
    for i, p in enumerate(prompts):
        c = rng.standard_normal((77, d)).astype(np.float32)
        save_pair(root / "run_vis" / f"{i}.npy", p, c)
        vis.append(c)
    return data, empty, vis


def make_image_tree(root, classes=("n02", "n01"), per_class=(2, 3), seed=0):
    """root/train/<class>/*.JPEG with varied sizes; returns {path: label by sorted class}."""
    rng = np.random.default_rng(seed)
    sizes = [(90, 70), (64, 200), (300, 129), (128, 128), (75, 64)]
    labels = {}
    for c, n in zip(classes, per_class):
        folder = root / "train" / c
        folder.mkdir(parents=True)
        for j in range(n):
            w, h = sizes[(j + len(labels)) % len(sizes)]
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            path = folder / f"{c}_{j}.JPEG"
            Image.fromarray(arr).save(path, quality=95)
            labels[path] = sorted(classes).index(c)
    return labels


# ----------------------------------------------------------------------------
# File formats.


def test_pair_formats_round_trip_and_read_released_files(tmp_path):
    m = np.random.default_rng(0).standard_normal((8, 4, 4)).astype(np.float32)
    save_pair(tmp_path / "0.npy", m, 7)
    a, b = load_pair(tmp_path / "0.npy")
    assert np.array_equal(a, m) and a.dtype == np.float32 and b == 7
    # As numpy used to write np.save(path, (moments, label)): a 1-D object array.
    np.save(tmp_path / "1.npy", np.array([m, np.int64(3)], dtype=object), allow_pickle=True)
    a, b = load_pair(tmp_path / "1.npy")
    assert np.array_equal(a, m) and int(b) == 3
    with open(tmp_path / "2.npy", "wb") as f:  # a plain pickled tuple
        pickle.dump(("a prompt", m), f)
    assert load_pair(tmp_path / "2.npy")[0] == "a prompt"
    save_npy(tmp_path / "plain.npy", m)
    assert np.array_equal(np.load(tmp_path / "plain.npy"), m)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary left


def test_imagenet_feature_indices():
    assert imagenet_feature_indices(4, 2, 10, "global") == ([4, 5], [14, 15])
    assert imagenet_feature_indices(4, 2, 10, "per_batch") == ([8, 9], [10, 11])
    # per_batch: batches tile 0..2n-1 exactly (last batch shorter).
    idx = []
    for s in range(0, 10, 4):
        o, f = imagenet_feature_indices(s, min(4, 10 - s), 10, "per_batch")
        idx += o + f
    assert idx == list(range(20))
    with pytest.raises(ValueError):
        imagenet_feature_indices(0, 1, 1, "other")


# ----------------------------------------------------------------------------
# ImageNet features.


def test_imagenet256_features(tmp_path):
    moments, labels = make_imagenet_features(tmp_path / "feat")
    ds = get_dataset("imagenet256_features", path=str(tmp_path / "feat"))
    assert len(ds.train) == 6 and ds.data_shape == (4, 32, 32) and ds.moments_shape == (8, 32, 32)
    assert ds.has_labels and ds.num_classes == 1000
    assert ds.fid_stat == "assets/fid_stats/fid_stats_imagenet256_guided_diffusion.npz"
    x, y = ds.train[3]
    assert x.dtype == torch.float32 and x.shape == (8, 32, 32) and isinstance(y, int)
    assert np.array_equal(x.numpy(), moments[3]) and y == labels[3]
    xb, yb = next(iter(DataLoader(ds.train, batch_size=4)))
    assert xb.shape == (4, 8, 32, 32) and yb.dtype == torch.int64
    with pytest.raises(IndexError):
        ds.train[6]
    assert "imagenet256_features" in repr(ds)


def test_imagenet512_features_and_shape_check(tmp_path):
    make_imagenet_features(tmp_path / "f512", n=2, h=64)
    ds = get_dataset("imagenet512_features", path=str(tmp_path / "f512"))
    assert ds.data_shape == (4, 64, 64) and ds.train[1][0].shape == (8, 64, 64)
    with pytest.raises(ValueError, match="another resolution"):
        get_dataset("imagenet256_features", path=str(tmp_path / "f512"))


def test_imagenet_features_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("imagenet256_features", path=str(tmp_path / "missing"))
    msg = str(e.value)
    assert "0.npy" in msg and "extract_imagenet_feature.py" in msg and str(tmp_path / "missing") in msg
    make_imagenet_features(tmp_path / "gap", n=4)
    (tmp_path / "gap" / "2.npy").unlink()
    with pytest.raises(ValueError, match=r"missing e\.g\. \[2\]"):
        get_dataset("imagenet256_features", path=str(tmp_path / "gap"))


# ----------------------------------------------------------------------------
# MS-COCO features.


def test_mscoco256_features(tmp_path):
    data, empty, vis = make_mscoco_features(tmp_path / "coco")
    ds = get_dataset("mscoco256_features", path=str(tmp_path / "coco"))
    assert len(ds.train) == 3 and ds.data_shape == (4, 32, 32) and ds.moments_shape == (8, 32, 32)
    assert not ds.has_labels and ds.num_classes == 0
    assert ds.context_shape == (77, 16)
    assert ds.fid_stat == "assets/fid_stats/fid_stats_mscoco256_val.npz"
    assert ds.train.num_captions == [2, 3, 1]
    m, c = ds.train[0]
    assert m.dtype == torch.float32 and m.shape == (8, 32, 32) and c.shape == (77, 16)
    assert np.array_equal(m.numpy(), data["train"][0][0])
    assert np.array_equal(ds.empty_context.numpy(), empty)
    assert ds.vis_prompts == ["a cat", "two dogs"]
    assert ds.vis_contexts.shape == (2, 77, 16) and np.array_equal(ds.vis_contexts[1].numpy(), vis[1])
    # val: the same format.
    assert len(ds.val) == 2 and ds.val.num_captions == [1, 2]
    assert np.array_equal(ds.val.moments(1).numpy(), data["val"][1][0])
    mb, cb = next(iter(DataLoader(ds.train, batch_size=3)))
    assert mb.shape == (3, 8, 32, 32) and cb.shape == (3, 77, 16)


def test_mscoco_caption_is_drawn_with_torchs_global_generator(tmp_path):
    data, _, _ = make_mscoco_features(tmp_path / "coco")
    ds = get_dataset("mscoco256_features", path=str(tmp_path / "coco"))
    caps = data["train"][1][1]

    def which(c):
        return [k for k, ref in enumerate(caps) if np.array_equal(c.numpy(), ref)]

    torch.manual_seed(0)
    seen = [which(ds.train[1][1]) for _ in range(30)]
    assert all(len(s) == 1 for s in seen)  # always one of the item's own captions
    assert {s[0] for s in seen} == {0, 1, 2}
    torch.manual_seed(0)
    assert [which(ds.train[1][1]) for _ in range(30)] == seen  # reproducible from the global seed
    torch.manual_seed(0)
    want = [int(torch.randint(3, ())) for _ in range(30)]
    assert [s[0] for s in seen] == want


def test_mscoco_features_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("mscoco256_features", path=str(tmp_path / "none"))
    assert "empty_context.npy" in str(e.value) and "extract_mscoco_feature.py" in str(e.value)

    make_mscoco_features(tmp_path / "a")
    (tmp_path / "a" / "empty_context.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match="empty_context.npy is missing"):
        get_dataset("mscoco256_features", path=str(tmp_path / "a"))

    make_mscoco_features(tmp_path / "b")
    (tmp_path / "b" / "train" / "2_0.npy").unlink()
    with pytest.raises(ValueError, match="without any caption"):
        get_dataset("mscoco256_features", path=str(tmp_path / "b"))

    make_mscoco_features(tmp_path / "c")
    for p in (tmp_path / "c" / "run_vis").iterdir():
        p.unlink()
    import shutil
    shutil.rmtree(tmp_path / "c" / "val")
    ds = get_dataset("mscoco256_features", path=str(tmp_path / "c"))  # train is enough to train
    with pytest.raises(DatasetNotFoundError, match="run_vis"):
        ds.vis_prompts
    with pytest.raises(DatasetNotFoundError, match="val"):
        ds.val


# ----------------------------------------------------------------------------
# ImageNet 64 pixels and the crops.


def test_center_crop_arr_adm():
    # Short side 300 >= 2 * 64: BOX halving 500x300 -> 250x150 -> 125x75, then BICUBIC to 107x64.
    arr = np.zeros((300, 500, 3), dtype=np.uint8)
    arr[:, :60] = 255  # white left band, well outside the central 300 columns (100..400)
    out = center_crop_arr(Image.fromarray(arr), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.max() < 20  # only the black centre survives
    img = Image.fromarray(arr)
    ref = img.resize((250, 150), Image.BOX).resize((125, 75), Image.BOX).resize((107, 64), Image.BICUBIC)
    assert np.array_equal(out, np.asarray(ref)[:, 21:85])
    # Upscaling a small image.
    assert center_crop_arr(Image.fromarray(arr[:40, :50]), 64).shape == (64, 64, 3)


def test_center_crop_resize_coco():
    arr = np.zeros((200, 300, 3), dtype=np.uint8)
    arr[:, :50] = 255
    arr[:, 250:] = 255
    out = center_crop_resize(Image.fromarray(arr), 32)
    assert out.shape == (32, 32, 3) and out.max() == 0
    ref = Image.fromarray(arr[:, 50:250]).resize((32, 32), Image.LANCZOS)
    assert np.array_equal(out, np.asarray(ref))


def test_imagenet64_pixels(tmp_path):
    labels = make_image_tree(tmp_path / "imagenet")
    ds = get_dataset("imagenet64", path=str(tmp_path / "imagenet"), random_flip=False)
    assert ds.class_names == ["n01", "n02"] and ds.num_classes == 2 and ds.data_shape == (3, 64, 64)
    assert len(ds.train) == 5
    assert [ds.train.label(i) for i in range(5)] == [0, 0, 0, 1, 1]  # sorted folders, then files
    for i, path in enumerate(ds.train.files):
        assert labels[path] == ds.train.label(i)
    x, y = ds.train[4]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    with Image.open(ds.train.files[4]) as img:
        ref = center_crop_arr(img.convert("RGB"), 64)
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    flipped = get_dataset("imagenet64", path=str(tmp_path / "imagenet" / "train"), random_flip=True)
    torch.manual_seed(0)
    outs = [flipped.train[4][0] for _ in range(16)]
    assert any(torch.equal(o, x) for o in outs) and any(torch.equal(o, x.flip(-1)) for o in outs)
    with pytest.raises(DatasetNotFoundError, match="n01440764"):
        get_dataset("imagenet64", path=str(tmp_path / "nothing"))
