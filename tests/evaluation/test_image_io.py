"""Saved images: sample grids enlarge small images (nearest neighbour), PNGs for FID keep their size."""
import numpy as np
import torch
from PIL import Image

from libs.evaluation.image_io import save_grid, save_png, upscale


def random_images(n, c, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (c, size, size), dtype=torch.uint8, generator=g) for _ in range(n)]


def test_upscale_is_nearest_neighbour_by_an_integer_factor():
    im = random_images(1, 3, 8)[0]
    big = upscale(im, 32)
    assert big.shape == (3, 32, 32) and big.dtype == torch.uint8
    assert np.array_equal(big.numpy(), np.kron(im.numpy(), np.ones((1, 4, 4), dtype=np.uint8)))
    assert upscale(im, 20).shape == (3, 24, 24)  # the smallest factor reaching 20: 3
    assert upscale(im, 8) is im and upscale(random_images(1, 1, 40)[0], 32).shape == (1, 40, 40)


def test_grid_of_small_images_is_enlarged(tmp_path):
    images = random_images(4, 1, 8)  # digits-sized
    save_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 33 + 1, 2 * 33 + 1, 3)  # 2 x 2 images of 32 px, 1-px separators
    for k, im in enumerate(images):
        r, c = divmod(k, 2)
        tile = grid[1 + 33 * r: 33 + 33 * r, 1 + 33 * c: 33 + 33 * c, 0]
        assert np.array_equal(tile, np.kron(im[0].numpy(), np.ones((4, 4), dtype=np.uint8)))
    assert (grid[0] == 255).all() and (grid[:, 33] == 255).all()  # white separators


def test_grid_of_large_images_and_fid_pngs_keep_their_size(tmp_path):
    images = random_images(2, 3, 40)
    save_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (42, 2 * 41 + 1, 3)
    assert np.array_equal(grid[1:41, 42:82], images[1].permute(1, 2, 0).numpy())
    small = random_images(1, 1, 8)[0]
    save_png(small, tmp_path / "0.png")  # what the evaluation writes per image for FID
    assert np.array_equal(np.asarray(Image.open(tmp_path / "0.png")), small[0].numpy())
