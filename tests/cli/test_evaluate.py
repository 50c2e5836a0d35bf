"""The eval scripts' body (libs/cli/evaluate.py): the probe call that refuses weights whose
outputs or certainties are not finite before anything is sampled or scored."""

import pytest
import torch

from configs.digits_uvit_tiny import get_config
from libs.cli.evaluate import probe_outputs
from libs.models.registry import build_nnet
from libs.tasks.pixel import PixelTask


def tiny():
    config = get_config()
    config.nnet.update(embed_dim=32, depth=2, num_heads=2)
    config.nnet_path = "w.pth"
    return config


def test_finite_weights_pass_the_probe():
    config = tiny()
    probe_outputs(build_nnet(config.nnet).eval(), PixelTask(config, load_data=False), config, "cpu")


@pytest.mark.parametrize("what", ["predictions", "certainties"])
def test_non_finite_outputs_or_certainties_are_refused_naming_the_blocks(what):
    config = tiny()
    net = build_nnet(config.nnet).eval()
    real = net.forward_all_exits

    def poisoned(*a, **k):
        out = real(*a, **k)
        values = out.preds if what == "predictions" else out.certainties
        values[1].view(-1)[0] = float("nan")  # block 1 only
        return out

    net.forward_all_exits = poisoned
    with pytest.raises(FloatingPointError, match=rf"w.pth give non-finite {what} at block\(s\) 1 on a probe input"):
        probe_outputs(net, PixelTask(config, load_data=False), config, "cpu")


def test_huge_but_finite_weights_are_refused():
    config = tiny()
    net = build_nnet(config.nnet).eval()
    with torch.no_grad():
        net.pos_embed.fill_(1e30)  # finite, passes the weight check; every output overflows
    with pytest.raises(FloatingPointError, match=r"non-finite predictions at block\(s\) 0, 1, 2"):
        probe_outputs(net, PixelTask(config, load_data=False), config, "cpu")


# ----------------------------------------------------------------------------- the path of one sampling call
MOST_FILES = {"dpm_solver": 9, "euler_maruyama_sde": 8}  # eval.py ... uvit_core.py, see the test


@pytest.mark.parametrize("algorithm", ["dpm_solver", pytest.param("euler_maruyama_sde", marks=pytest.mark.slow)])
def test_the_path_from_eval_py_to_a_block_crosses_few_files(algorithm, tmp_path):
    """``eval.py`` of a tiny network (full depth and a threshold rule) run as from the command
    line: at every block it runs while sampling, the project files of the stack from eval.py
    down (tests/helpers/sampling_path.py) stay within MOST_FILES. dpm_solver (the digits
    default) has the longest path: eval.py, cli/evaluate.py, evaluation/engine.py,
    evaluation/sampling.py, the solver and the solver toolkit, exits/sampling_run.py (unguided:
    no guidance wrapper; the run scales time itself), models/exit_loop.py (the backbone's
    forward_early_exit is defined there), models/uvit_core.py. Euler-Maruyama has no toolkit."""
    from tests.helpers.sampling_path import sampling_paths

    config = tiny()
    (tmp_path / "w").mkdir()
    torch.save(build_nnet(config.nnet).state_dict(), tmp_path / "w/nnet.pth")
    nnet = {k: config.nnet[k] for k in ("embed_dim", "depth", "num_heads")}
    sample = dict(n_samples=1, mini_batch_size=1, sample_steps=1, grid_size=1, fid_stat="", algorithm=algorithm)
    paths = sampling_paths("eval.py", [
        "--config=configs/digits_uvit_tiny.py", f"--nnet_path={tmp_path / 'w/nnet.pth'}",
        f"--output_path={tmp_path / 'eval'}", f"--workdir={tmp_path / 'wd'}", "--exit_threshold=0.5",
        *[f"--config.nnet.{k}={v}" for k, v in nnet.items()], *[f"--config.sample.{k}={v}" for k, v in sample.items()]])
    assert len(paths) >= 2  # the full-depth reference and the threshold rule
    for path in paths:
        assert path["files"][0] == "eval.py" and path["files"][-1] == "libs/models/uvit_core.py"
        assert len(path["files"]) <= MOST_FILES[algorithm], " -> ".join(path["files"])
