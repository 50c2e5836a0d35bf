"""Tiny, offline stand-ins for the latent / text-to-image assets, shared by the tests:
a factor-8 SD-style VAE with CompVis key names, a tiny CLIP text encoder folder, and small
ImageNet / MS-COCO style image trees."""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from libs.models.autoencoder import FrozenAutoencoderKL, diffusers_to_compvis
from libs.run.checkpoint import atomic_save

# Four levels: downsample factor 8 as in SD, so 256 px images give (8, 32, 32) moments.
TINY_VAE = dict(block_out_channels=[4, 8, 8, 8], norm_num_groups=4, layers_per_block=1)
TINY_CLIP_DIM = 16


def save_tiny_vae(root: Path) -> None:
    """root/autoencoder_kl.pth (CompVis names) + root/vae.json (its architecture)."""
    torch.manual_seed(0)
    vae = FrozenAutoencoderKL(TINY_VAE)
    atomic_save(diffusers_to_compvis(vae.state_dict()), root / "autoencoder_kl.pth")
    (root / "vae.json").write_text(json.dumps(TINY_VAE))


def save_tiny_clip(folder):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # Byte-level alphabet of CLIP's BPE, no merges: every word is spelled byte by byte.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(c) for c in bs] + [chr(256 + i) for i in range(256 - len(bs))]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TINY_CLIP_DIM, intermediate_size=24, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)

def write_jpeg(path, w, h, seed):
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)

def make_imagenet(root):
    """train/<class>/ with 3 + 2 images of assorted sizes."""
    sizes = {"n02": [(300, 280), (256, 400)], "n01": [(520, 600), (260, 256), (400, 300)]}
    for seed, (c, whs) in enumerate(sizes.items()):
        (root / "train" / c).mkdir(parents=True)
        for j, (w, h) in enumerate(whs):
            write_jpeg(root / "train" / c / f"{c}_{j}.JPEG", w, h, seed=10 * seed + j)

def make_coco(root, split="train", n_captions=(2, 1, 3)):
    """<split>2014/*.jpg + annotations/captions_<split>2014.json, image ids listed out of order."""
    (root / f"{split}2014").mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    ids = [42, 7, 19][: len(n_captions)]
    images, anns = [], []
    for j, (image_id, n) in enumerate(zip(ids, n_captions)):
        name = f"COCO_{split}2014_{image_id:012d}.jpg"
        write_jpeg(root / f"{split}2014" / name, 300 + 40 * j, 260, seed=image_id)
        images.append({"id": image_id, "file_name": name, "width": 300 + 40 * j, "height": 260})
        anns += [{"id": 1000 * image_id + k, "image_id": image_id, "caption": f"image {image_id} caption {k}"}
                 for k in range(n)]
    anns = anns[::2] + anns[1::2]  # captions of an image are not contiguous in the file
    (root / "annotations" / f"captions_{split}2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    # Captions of each image in file order, images by id.
    by_id = {i: [a["caption"] for a in anns if a["image_id"] == i] for i in ids}
    return [(root / f"{split}2014" / im["file_name"], by_id[im["id"]]) for im in sorted(images, key=lambda m: m["id"])]
