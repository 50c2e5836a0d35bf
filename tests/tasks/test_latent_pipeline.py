"""Latent and text-to-image pipelines end to end with tiny models (CPU, offline):
extract features -> train a few steps -> evaluate a two-threshold sweep with FID,
for class-conditional latents (continuous and discrete time) and text-to-image;
sample_t2i_discrete.py writes one image per prompt."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny_assets import TINY_CLIP_DIM, make_coco, make_imagenet

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TINY_NNET = ["--config.nnet.embed_dim=32", "--config.nnet.depth=2", "--config.nnet.num_heads=2",
             "--config.nnet.patch_size=4", "--config.nnet.use_checkpoint=False"]
TRAIN = ["--config.train.n_steps=3", "--config.train.batch_size=4", "--config.train.save_interval=3",
         "--config.train.sample_interval=0", "--config.train.num_workers=0", "--config.train.log_interval=1"]
SAMPLE = ["--config.sample.n_samples=4", "--config.sample.mini_batch_size=2", "--config.sample.sample_steps=3",
          "--config.sample.grid_size=4", "--config.sample.decode_chunk=1"]


def run(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, f"{script} failed:\n{r.stderr[-4000:]}"
    return r


def vae_flags(assets):
    return [f"--config.autoencoder.pretrained_path={assets / 'autoencoder_kl.pth'}",
            f"--config.autoencoder.config={assets / 'vae.json'}"]


def check_report(folder, thresholds):
    rows = list(csv.DictReader(open(folder / "report.csv")))
    assert [float(r["threshold"]) for r in rows] == thresholds
    for r in rows:
        assert np.isfinite(float(r["fid"])) and float(r["gflops_per_image"]) > 0
    assert (folder / "tradeoff.png").is_file() and (folder / "grid_full.png").is_file()


@pytest.mark.parametrize("time", ["continuous", "discrete"])
def test_class_conditional_latents(tmp_path, tiny_assets, time):
    make_imagenet(tmp_path / "imagenet")  # 2 classes, 5 images
    feats = tmp_path / "features"
    run("scripts/extract_imagenet_feature.py", "--path", tmp_path / "imagenet", "--output", feats, "--batch_size", 4,
        "--num_workers", 0, "--no_progress", "--autoencoder", tiny_assets / "autoencoder_kl.pth",
        "--autoencoder_config", tiny_assets / "vae.json", "--device", "cpu")
    run("tools/fid_stats.py", tmp_path / "imagenet", tmp_path / "ref.npz", "--device", "cpu")
    suffix = "" if time == "continuous" else "_discrete"
    config = "configs/imagenet256_uvit_large.py" if time == "continuous" else "configs/imagenet256_uvit_huge.py"
    common = [f"--config={config}", *TINY_NNET, "--config.nnet.num_classes=3", "--config.dataset.num_classes=2",
              *vae_flags(tiny_assets), f"--config.dataset.path={feats}", f"--workdir={tmp_path / 'run'}"]
    run(f"train_ldm{suffix}.py", *common, *TRAIN)
    ckpt = tmp_path / "run/ckpts/3.ckpt/nnet_ema.pth"
    assert ckpt.is_file()
    r = run(f"eval_ldm{suffix}.py", *common, *SAMPLE, f"--nnet_path={ckpt}", "--exit_threshold=0.5,0.9",
            f"--config.sample.fid_stat={tmp_path / 'ref.npz'}", f"--output_path={tmp_path / 'eval'}")
    assert "speedup" in r.stdout
    check_report(tmp_path / "eval", [1.0, 0.5, 0.9])
    # The other script refuses a config of the other time mode.
    other = "" if suffix else "_discrete"
    r = subprocess.run([sys.executable, f"train_ldm{other}.py", *common, *TRAIN], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode != 0 and f"train_ldm{suffix}.py" in r.stderr


def test_text_to_image(tmp_path, tiny_assets):
    coco, feats = tmp_path / "coco", tmp_path / "coco_features"
    make_coco(coco, "train")
    make_coco(coco, "val", n_captions=(1, 2))
    extract = ["--root", coco, "--output", feats, "--clip", tiny_assets / "clip", "--batch_size", 2, "--num_workers", 0,
               "--no_progress", "--autoencoder", tiny_assets / "autoencoder_kl.pth", "--autoencoder_config",
               tiny_assets / "vae.json", "--device", "cpu"]
    run("scripts/extract_mscoco_feature.py", "--split", "train", *extract)
    run("scripts/extract_mscoco_feature.py", "--split", "val", *extract)
    run("scripts/extract_empty_feature.py", "--output", feats / "empty_context.npy", "--clip", tiny_assets / "clip",
        "--device", "cpu")
    run("tools/fid_stats.py", coco / "val2014", tmp_path / "ref.npz", "--device", "cpu")
    common = ["--config=configs/mscoco_uvit_small.py", *TINY_NNET, f"--config.nnet.clip_dim={TINY_CLIP_DIM}",
              *vae_flags(tiny_assets), f"--config.dataset.path={feats}",
              f"--config.clip.version={tiny_assets / 'clip'}", f"--workdir={tmp_path / 'run'}"]
    run("train_t2i_discrete.py", *common, *TRAIN, "--config.train.batch_size=2")
    ckpt = tmp_path / "run/ckpts/3.ckpt/nnet_ema.pth"
    run("eval_t2i_discrete.py", *common, *SAMPLE, f"--nnet_path={ckpt}", "--exit_threshold=0.5,0.9",
        f"--config.sample.fid_stat={tmp_path / 'ref.npz'}", f"--output_path={tmp_path / 'eval'}")
    check_report(tmp_path / "eval", [1.0, 0.5, 0.9])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red bus\n\na cat on a sofa\ntwo dogs\n")
    r = run("sample_t2i_discrete.py", *common, *SAMPLE, f"--nnet_path={ckpt}", "--exit_threshold=0.7",
            f"--input_path={prompts}", f"--output_path={tmp_path / 'samples'}")
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["0.png", "1.png", "2.png"]
    assert "wrote 3 images" in r.stdout


def test_missing_autoencoder_is_reported_before_training(tmp_path):
    r = subprocess.run([sys.executable, "eval_ldm.py", "--config=configs/imagenet256_uvit_large.py",
                        "--config.autoencoder.pretrained_path=" + str(tmp_path / "none.pth"),
                        "--nnet_path=" + str(tmp_path / "x.pth"), f"--output_path={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "autoencoder weights not found" in r.stderr
