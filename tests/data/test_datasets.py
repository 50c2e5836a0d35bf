"""Contracts of the pixel datasets (libs/data/) on tiny fake copies of the real on-disk formats (CPU, seconds)."""

import pickle

import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from libs.data.paths import DatasetNotFoundError
from libs.data.reference import reference_images
from libs.data.registry import dataset_names, get_dataset
from libs.data.value_range import unpreprocess

# ----------------------------------------------------------------------------
# Fake data in the real formats.


def make_fake_cifar10(root, per_batch=2, seed=0):
    """Python pickles as in cifar-10-python.tar.gz; returns train images (N, 32, 32, 3), labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)  # R, G, B planes of 32x32
        lab = rng.integers(0, 10, size=per_batch).tolist()
        entry = {"batch_label": name, "labels": lab, "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        if name != "test_batch":
            images.append(data)
            labels += lab
    meta = {"num_cases_per_batch": per_batch, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    images = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.array(labels)


# Crop window of the 178x218 aligned faces: columns 25..153, rows 57..185.
LEFT, TOP, SIZE = 25, 57, 128


def make_fake_celeba(root, partitions=(0, 0, 1, 2, 0), seed=0):
    """celeba/img_align_celeba/*.jpg (178 wide, 218 high) + list_eval_partition.txt.

    Each image is a colour inside the crop window and its inverse outside, plus noise
    inside so that the crop position matters pixel by pixel.
    """
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    lines, colours = [], []
    for i, part in enumerate(partitions, start=1):
        colour = rng.integers(40, 216, size=3)
        img = np.empty((218, 178, 3), np.uint8)
        img[:] = 255 - colour
        img[TOP:TOP + SIZE, LEFT:LEFT + SIZE] = colour
        name = f"{i:06d}.jpg"
        Image.fromarray(img).save(folder / "img_align_celeba" / name, quality=95)
        lines.append(f"{name} {part}")
        colours.append(colour)
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return colours


# ----------------------------------------------------------------------------
# CIFAR-10.


def test_cifar10_loads_real_pickle_format(tmp_path):
    images, labels = make_fake_cifar10(tmp_path)
    ds = get_dataset("cifar10", path=str(tmp_path), random_flip=False)
    assert len(ds.train) == 10
    assert ds.data_shape == (3, 32, 32) and ds.num_classes == 0 and not ds.has_labels
    assert ds.class_names[0] == "airplane"
    for i in range(len(ds.train)):
        x, y = ds.train[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert x.min() >= -1 and x.max() <= 1
        expected = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(x, expected)
        assert y == 0


def test_cifar10_class_cond_and_config_dict(tmp_path):
    _, labels = make_fake_cifar10(tmp_path)
    config = ml_collections.ConfigDict(dict(name="cifar10", path=str(tmp_path), class_cond=True))
    ds = get_dataset(**config)
    assert ds.num_classes == 10 and ds.has_labels
    x, y = next(iter(DataLoader(ds.train, batch_size=10)))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


def test_relative_path_resolves_against_working_directory(tmp_path, monkeypatch):
    make_fake_cifar10(tmp_path / "data" / "cifar10")
    monkeypatch.chdir(tmp_path)
    assert len(get_dataset("cifar10", path="data/cifar10").train) == 10


def test_random_flip_is_seeded_and_takes_both_outcomes(tmp_path):
    make_fake_cifar10(tmp_path)
    ds = get_dataset("cifar10", path=str(tmp_path))  # random_flip defaults to True
    plain = ds.train.image(0)

    def draws():
        return [ds.train[0][0] for _ in range(32)]

    torch.manual_seed(0)
    first = draws()
    torch.manual_seed(0)
    second = draws()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    flipped = [torch.equal(x, plain.flip(-1)) for x in first]
    unflipped = [torch.equal(x, plain) for x in first]
    assert all(f != u for f, u in zip(flipped, unflipped))  # each draw is one of the two
    assert any(flipped) and any(unflipped)


def test_reference_images_are_unflipped_uint8_nhwc(tmp_path):
    images, _ = make_fake_cifar10(tmp_path)
    ds = get_dataset("cifar10", path=str(tmp_path))  # flips on for training
    batches = list(reference_images(ds, batch_size=4))
    assert [b.shape for b in batches] == [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), images)
    limited = np.concatenate(list(reference_images(ds, limit=7, batch_size=4)))
    np.testing.assert_array_equal(limited, images[:7])


# ----------------------------------------------------------------------------
# CelebA 64.


def test_celeba_train_split_crop_and_resize(tmp_path):
    colours = make_fake_celeba(tmp_path)
    ds = get_dataset("celeba64", path=str(tmp_path), random_flip=False)
    assert len(ds.train) == 3  # partition 0 only
    assert [f.name for f in ds.train.files] == ["000001.jpg", "000002.jpg", "000005.jpg"]
    assert ds.data_shape == (3, 64, 64) and not ds.has_labels
    for i, colour_index in enumerate([0, 1, 4]):
        x, y = ds.train[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 0
        assert x.min() >= -1 and x.max() <= 1
        # Only the inside of the crop window survives (JPEG blurs the border slightly).
        inside = torch.tensor(colours[colour_index], dtype=torch.float32) / 127.5 - 1
        err = (x[:, 2:-2, 2:-2] - inside[:, None, None]).abs()
        assert err.max() < 0.1


def test_celeba_matches_torchvision_pipeline(tmp_path):
    """Same pixels as U-ViT's transform: F.crop(top=57, left=25, 128) -> Resize(64) -> ToTensor -> Normalize."""
    make_fake_celeba(tmp_path)
    ds = get_dataset("celeba", path=str(tmp_path / "celeba"), random_flip=False)  # alias; folder itself
    tf = T.Compose([T.Lambda(lambda im: T.functional.crop(im, TOP, LEFT, SIZE, SIZE)),
                    T.Resize(64), T.ToTensor(), T.Normalize(0.5, 0.5)])
    for i, f in enumerate(ds.train.files):
        expected = tf(Image.open(f).convert("RGB"))
        torch.testing.assert_close(ds.train[i][0], expected, rtol=0, atol=1e-6)
    ref = np.concatenate(list(reference_images(ds)))
    assert ref.shape == (3, 64, 64, 3) and ref.dtype == np.uint8


def test_celeba_resolution_and_flip(tmp_path):
    make_fake_celeba(tmp_path)
    ds = get_dataset("celeba64", path=str(tmp_path), resolution=32)
    assert ds.data_shape == (3, 32, 32)
    plain = ds.train.image(0)
    torch.manual_seed(0)
    outs = [ds.train[0][0] for _ in range(16)]
    assert any(torch.equal(o, plain) for o in outs)
    assert any(torch.equal(o, plain.flip(-1)) for o in outs)


# ----------------------------------------------------------------------------
# Digits.


def test_digits_shapes_labels_range():
    from sklearn.datasets import load_digits

    ds = get_dataset("digits")
    digits = load_digits()
    assert len(ds.train) == 1797
    assert ds.data_shape == (1, 8, 8) and ds.num_classes == 10 and ds.has_labels
    x, y = ds.train[5]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(digits.images[5]).float() / 8 - 1)
    assert y == digits.target[5]
    xb, yb = next(iter(DataLoader(ds.train, batch_size=1797)))
    assert xb.min() == -1 and xb.max() == 1
    assert yb.dtype == torch.int64 and sorted(set(yb.tolist())) == list(range(10))
    assert torch.equal(ds.train[5][0], ds.train[5][0])  # no random flip


def test_digits_resolution_and_unconditional():
    from sklearn.datasets import load_digits

    ds = get_dataset("digits", resolution=16, class_cond=False)
    assert ds.data_shape == (1, 16, 16) and ds.num_classes == 0 and not ds.has_labels
    x, y = ds.train[3]
    assert x.shape == (1, 16, 16) and y == 0
    src = torch.from_numpy(load_digits().images[3]).float()[None, None] / 8 - 1
    expected = F.interpolate(src, size=(16, 16), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(x, expected)
    ref = next(reference_images(ds, batch_size=8))
    assert ref.shape == (8, 16, 16, 1) and ref.dtype == np.uint8


# ----------------------------------------------------------------------------
# Helpers and errors.


def test_unpreprocess():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0])
    torch.testing.assert_close(unpreprocess(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_missing_cifar10_error_explains(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar10", path=str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for part in ["'cifar10'", str(tmp_path / "nowhere" / "cifar-10-batches-py"),
                 "data_batch_5", "batches.meta", "cifar-10-python.tar.gz", "download=True"]:
        assert part in msg, part


def test_missing_celeba_error_explains(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("celeba64", path=str(tmp_path))
    msg = str(info.value)
    for part in ["'celeba64'", str(tmp_path / "celeba"), "img_align_celeba",
                 "list_eval_partition.txt", "download=True"]:
        assert part in msg, part


def test_missing_celeba_image_is_reported(tmp_path):
    make_fake_celeba(tmp_path)
    (tmp_path / "celeba" / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="000005.jpg"):
        get_dataset("celeba64", path=str(tmp_path))


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        get_dataset("imagenet_pixels")
    msg = str(info.value)
    assert "imagenet_pixels" in msg
    for name in ["cifar10", "celeba64", "digits"]:
        assert name in msg and name in dataset_names()
