"""The feature-extraction scripts end to end on generated JPEGs, with a tiny VAE (factor 8,
saved in CompVis naming + a config JSON) and a tiny CLIP saved as a local folder (CPU, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from libs.autoencoder import load_autoencoder
from libs.clip import FrozenCLIPEmbedder
from libs.data.crops import center_crop_arr, center_crop_resize
from libs.data.feature_files import load_pair
from libs.data.paths import DatasetNotFoundError
from libs.data.registry import get_dataset

from tests.helpers.tiny_assets import TINY_VAE, make_coco, make_imagenet

REPO = Path(__file__).resolve().parents[2]


def load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




def vae_args(assets):
    return ["--autoencoder", str(assets / "autoencoder_kl.pth"), "--autoencoder_config", str(assets / "vae.json"),
            "--device", "cpu"]




def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in Path(folder).iterdir()}


# ----------------------------------------------------------------------------
# ImageNet.




def test_extract_imagenet_features_end_to_end_and_resume(tmp_path, tiny_assets):
    make_imagenet(tmp_path / "imagenet")
    out = tmp_path / "imagenet256_features"
    script = load_script("extract_imagenet_feature")
    argv = ["--path", str(tmp_path / "imagenet"), "--output", str(out), "--batch_size", "2", "--num_workers", "0",
            "--no_progress", *vae_args(tiny_assets)]
    assert script.main(argv) == 10
    assert sorted(os.listdir(out), key=lambda s: int(s.split(".")[0])) == [f"{i}.npy" for i in range(10)]

    # File i = image i (class folders sorted: n01 first), file 5 + i = its flip (global layout).
    vae = load_autoencoder(tiny_assets / "autoencoder_kl.pth", config=TINY_VAE)
    files = sorted((tmp_path / "imagenet" / "train").glob("*/*.JPEG"))
    x = []
    for f in files:
        with Image.open(f) as img:
            x.append(torch.from_numpy(center_crop_arr(img.convert("RGB"), 256)).permute(2, 0, 1).float() / 127.5 - 1)
    x = torch.stack(x)
    want = vae.encode_moments(torch.cat([x, x.flip(-1)])).numpy()
    for i in range(10):
        m, label = load_pair(out / f"{i}.npy")
        assert m.dtype == np.float32 and m.shape == (8, 32, 32)
        assert label == [0, 0, 0, 1, 1][i % 5]
        np.testing.assert_allclose(m, want[i], rtol=1e-4, atol=1e-5)

    # Resumable: a second run writes nothing; a lost file re-runs only its batch.
    before = mtimes(out)
    assert script.main(argv) == 0
    assert mtimes(out) == before
    (out / "7.npy").unlink()  # flip of image 2 -> batch of images 2, 3
    assert script.main(argv) == 4
    assert (out / "7.npy").is_file()

    ds = get_dataset("imagenet256_features", path=str(out))
    assert len(ds.train) == 10 and ds.train[7][0].shape == (8, 32, 32)


def test_extract_imagenet_per_batch_layout(tmp_path, tiny_assets):
    make_imagenet(tmp_path / "imagenet")
    out = tmp_path / "released"
    script = load_script("extract_imagenet_feature")
    script.main(["--path", str(tmp_path / "imagenet"), "--output", str(out), "--batch_size", "2", "--num_workers",
                 "0", "--no_progress", "--layout", "per_batch", *vae_args(tiny_assets)])
    global_out = tmp_path / "global"
    script.main(["--path", str(tmp_path / "imagenet"), "--output", str(global_out), "--batch_size", "4",
                 "--num_workers", "0", "--no_progress", *vae_args(tiny_assets)])
    # Released order with batches of 2: [0, 1, 0f, 1f, 2, 3, 2f, 3f, 4, 4f].
    order = [0, 1, 5, 6, 2, 3, 7, 8, 4, 9]
    for i, j in enumerate(order):
        a, la = load_pair(out / f"{i}.npy")
        b, lb = load_pair(global_out / f"{j}.npy")
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert la == lb


def test_extract_imagenet_wrong_layout(tmp_path, tiny_assets):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    script = load_script("extract_imagenet_feature")
    with pytest.raises(DatasetNotFoundError, match="n01440764"):
        script.main(["--path", str(tmp_path / "imagenet"), "--output", str(tmp_path / "o"), *vae_args(tiny_assets)])
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------
# MS-COCO.




def test_extract_mscoco_end_to_end(tmp_path, tiny_assets):
    coco, out = tmp_path / "coco", tmp_path / "coco256_features"
    expected = make_coco(coco, "train")
    make_coco(coco, "val", n_captions=(1, 2))
    common = ["--root", str(coco), "--output", str(out), "--clip", str(tiny_assets / "clip"), "--batch_size", "2",
              "--num_workers", "0", "--no_progress", *vae_args(tiny_assets)]
    script = load_script("extract_mscoco_feature")
    assert script.main(["--split", "train", *common]) == 3
    assert script.main(["--split", "val", *common]) == 2
    assert sorted(os.listdir(out / "train")) == sorted(["0.npy", "0_0.npy", "1.npy", "1_0.npy", "1_1.npy", "1_2.npy",
                                                       "2.npy", "2_0.npy", "2_1.npy"])

    vae = load_autoencoder(tiny_assets / "autoencoder_kl.pth", config=TINY_VAE)
    clip = FrozenCLIPEmbedder(str(tiny_assets / "clip"), device="cpu")
    for i, (path, captions) in enumerate(expected):  # image 7, 19, 42
        with Image.open(path) as img:
            x = torch.from_numpy(center_crop_resize(img.convert("RGB"), 256)).permute(2, 0, 1).float() / 127.5 - 1
        m = np.load(out / "train" / f"{i}.npy")
        assert m.dtype == np.float32 and m.shape == (8, 32, 32)
        np.testing.assert_allclose(m, vae.encode_moments(x[None])[0].numpy(), rtol=1e-4, atol=1e-5)
        contexts = clip.encode(captions).numpy()
        for k in range(len(captions)):
            c = np.load(out / "train" / f"{i}_{k}.npy")
            assert c.dtype == np.float32 and c.shape == (77, 16)
            np.testing.assert_allclose(c, contexts[k], rtol=1e-4, atol=1e-5)

    # Resumable.
    before = mtimes(out / "train")
    assert script.main(["--split", "train", *common]) == 0
    assert mtimes(out / "train") == before
    (out / "train" / "2_1.npy").unlink()
    assert script.main(["--split", "train", *common]) == 1

    # Empty context and sample-grid prompts, then the dataset reads the whole layout.
    empty = load_script("extract_empty_feature")
    assert empty.main(["--output", str(out / "empty_context.npy"), "--clip", str(tiny_assets / "clip"),
                       "--device", "cpu"])
    assert not empty.main(["--output", str(out / "empty_context.npy"), "--clip", str(tiny_assets / "clip")])
    np.testing.assert_allclose(np.load(out / "empty_context.npy"), clip.encode([""])[0].numpy(), rtol=1e-5, atol=1e-6)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red bus\n\na cat on a sofa\n")
    vis = load_script("extract_test_prompt_feature")
    vis_args = ["--prompts", str(prompts), "--output", str(out / "run_vis"), "--clip", str(tiny_assets / "clip"),
                "--device", "cpu"]
    assert vis.main(vis_args) == 2
    assert vis.main(vis_args) == 0
    prompts.write_text("another prompt\n")
    with pytest.raises(ValueError, match="holds the prompt 'a red bus'"):
        vis.main(vis_args)

    ds = get_dataset("mscoco256_features", path=str(out))
    assert len(ds.train) == 3 and len(ds.val) == 2 and ds.train.num_captions == [1, 3, 2]
    assert ds.vis_prompts == ["a red bus", "a cat on a sofa"] and ds.vis_contexts.shape == (2, 77, 16)
    np.testing.assert_allclose(ds.vis_contexts.numpy(), clip.encode(ds.vis_prompts).numpy(), rtol=1e-4, atol=1e-5)
    assert ds.empty_context.shape == (77, 16)


def test_extract_mscoco_wrong_layout(tmp_path, tiny_assets):
    script = load_script("extract_mscoco_feature")
    (tmp_path / "coco" / "train2014").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="captions_train2014.json"):
        script.main(["--root", str(tmp_path / "coco"), "--output", str(tmp_path / "o"), *vae_args(tiny_assets)])
    make_coco(tmp_path / "coco2")
    next((tmp_path / "coco2" / "train2014").iterdir()).unlink()
    with pytest.raises(DatasetNotFoundError, match="1 of the 3 images"):
        script.main(["--root", str(tmp_path / "coco2"), "--output", str(tmp_path / "o"), *vae_args(tiny_assets)])
    (tmp_path / "coco2" / "annotations" / "captions_train2014.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        script.main(["--root", str(tmp_path / "coco2"), "--output", str(tmp_path / "o"), *vae_args(tiny_assets)])


@pytest.mark.slow
def test_script_runs_as_a_file_from_another_directory(tmp_path, tiny_assets):
    """`python scripts/X.py` finds the project's modules whatever the working directory."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_empty_feature.py"), "--output",
                             "out/empty_context.npy", "--clip", str(tiny_assets / "clip"), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "out" / "empty_context.npy").shape == (77, 16)
