"""libs/diffusers_exit/sweep.py: diffusers' hooks and this project's rules on the same images."""
import pytest
import torch

from configs.diffusers_digits import get_config
from libs.diffusers_exit import attach_exits
from libs.diffusers_exit.sweep import format_table, parse_methods, run_sweep
from libs.diffusers_exit.task import DiffusersTask
from libs.exits.policy import FULL


def test_sweep_runs_hooks_and_rules_on_the_same_noise_and_labels():
    c = get_config()
    c.nnet.model_config.update(num_attention_heads=2, attention_head_dim=8, num_layers=3)
    c.sample.update(n_samples=6, mini_batch_size=3)
    task = DiffusersTask(c, load_data=False)
    net = attach_exits(task.transformer)
    methods = parse_methods("static:1,deepcache:2:1,fbc:1e6,taylorseer:2", "DiTTransformer2DModel")
    assert methods[0] is FULL
    rows = run_sweep(net, task, c, methods + parse_methods("fbc:1e-9", "DiTTransformer2DModel")[1:], [4],
                     log=lambda *_: None)
    by = {r.method: r for r in rows}
    assert by["full"].distance == 0 and by["full"].compute_ratio == 1.0
    # a threshold no change ever reaches: the first-block cache never skips, the images are full depth's
    assert by["fbc:1e-09"].distance < 1e-10  # the model's own forward against the adapter's: float rounding
    assert by["fbc:1e-09"].gflops_per_image == by["full"].gflops_per_image
    # a threshold every change passes under: after the first call block 0 alone runs, (3 + 3 * 1) / (4 * 3)
    assert by["fbc:1e+06"].layer_ratio == 0.5 and by["fbc:1e+06"].gflops_per_image < 0.52 * by["full"].gflops_per_image
    assert 0 < by["taylorseer:2"].gflops_per_image < by["full"].gflops_per_image
    assert by["static:1"].layer_ratio == 2 / 3
    assert "pareto" in format_table(rows)


@pytest.mark.slow
def test_the_projects_evaluation_engine_and_compiled_sampling_run_on_the_adapter(tmp_path):
    from accelerate import Accelerator

    from libs.evaluation.engine import evaluate
    from libs.models.compile import compile_network

    c = get_config()
    c.nnet.model_config.update(num_attention_heads=2, attention_head_dim=8, num_layers=3)
    c.sample.update(n_samples=4, mini_batch_size=4, sample_steps=3, grid_size=4)
    task = DiffusersTask(c, load_data=False)
    net = attach_exits(task.transformer)
    results = evaluate(net, task, c, "static:1,0.5,deepcache:2:1", Accelerator(cpu=True), tmp_path, progress=False)
    assert [r.policy for r in results][0] == "full" and (tmp_path / "report.json").is_file()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([500.0, 20.0]), torch.tensor([1, 2])
    view = compile_network(net, "blocks", backend="eager")
    with torch.no_grad():
        assert torch.equal(view(x, t, y, exit_policy="static:1"), net(x, t, y, exit_policy="static:1"))
