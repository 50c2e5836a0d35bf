"""Fixtures shared by several test modules."""
import gc
import logging

import pytest
import torch

from configs.digits_uvit_tiny import get_config


def _freeze_survivors():
    """Collect the garbage, then move every object still alive out of the cyclic garbage
    collector's reach (``gc.freeze``), so that its later full collections do not scan them
    again. The test process holds millions of long-lived objects (torch, diffusers,
    transformers, dynamo's tracer): scanned again and again, they took ~10% of the fast tier's
    CPU time, a quarter of collecting it. Frozen objects were alive and stay alive either way."""
    gc.collect()
    gc.freeze()


def pytest_configure(config):
    # pytest attaches its log capture to every logger that does not propagate. Torch's structured
    # trace logger (for tlparse) is one, always at DEBUG and at work whenever it has a handler, so
    # each dynamo compile serialised its graphs and stacks into the captured logs (~8% of the
    # compile tests' CPU time). Propagating, it gets no handler of pytest's and stays idle.
    logging.getLogger("torch.__trace").propagate = True
    _freeze_survivors()  # torch and the configs, imported with this file


def pytest_collectreport(report):
    _freeze_survivors()  # what a test module imported


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The same after each test module's last test, once pytest has torn down its fixtures and
    dropped the test's fixture values (a module-scoped fixture's teardown runs while they are
    still held, so it froze them, and the garbage they became was never collected): what
    survives the module, mostly modules imported on first use (dynamo's tracer, sympy)."""
    result = yield
    if nextitem is None or nextitem.path != item.path:
        _freeze_survivors()
    return result


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test runs on one intra-op thread, torch's and BLAS's: the tests' tensors are tiny, so
    more threads only add contention, and on a CPU shared with other work a lot of it (several
    times the wall time). Subprocesses get OMP_NUM_THREADS=1 from their tests."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """A folder with a tiny VAE (``autoencoder_kl.pth`` in CompVis names + ``vae.json``) and a
    tiny CLIP text encoder (``clip/``), see tests/helpers/tiny_assets.py. Read-only for the tests."""
    from tests.helpers.tiny_assets import save_tiny_clip, save_tiny_vae

    root = tmp_path_factory.mktemp("tiny_assets")
    save_tiny_vae(root)
    save_tiny_clip(root / "clip")
    return root


@pytest.fixture(scope="session")
def trained_weights(tmp_path_factory):
    """The EMA weights of a tiny digits AdaDiff model trained for 100 steps of 32 images (once per session)."""
    from libs.tasks.pixel import PixelTask
    from libs.training.engine import train

    tmp = tmp_path_factory.mktemp("digits")
    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.workdir = str(tmp / "run")
    config.train.update(n_steps=100, batch_size=32, log_interval=50, save_interval=100)
    train(config, PixelTask(config))
    return tmp / "run/ckpts/100.ckpt/nnet_ema.pth"


@pytest.fixture(scope="session")
def trained(trained_weights):
    """The ``trained_weights``, and reference statistics of 40 digits beside them."""
    from libs.data.reference import reference_images
    from libs.data.registry import get_dataset
    from libs.evaluation.fid import FIDAccumulator, save_statistics
    from libs.evaluation.inception import load_inception

    ref = trained_weights.parents[3] / "ref.npz"
    acc = FIDAccumulator(load_inception())
    for batch in reference_images(get_dataset(name="digits"), limit=40):
        acc.update(batch.transpose(0, 3, 1, 2))
    save_statistics(ref, *acc.compute())
    return trained_weights, ref


@pytest.fixture
def trained_digits(trained_weights):
    """(network, config) of the ``trained_weights``, loaded on the CPU in eval mode."""
    from libs.run.checkpoint import load_weights
    from libs.models.registry import build_nnet

    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    net = build_nnet(config.nnet)
    load_weights(net, trained_weights)
    return net.eval(), config
