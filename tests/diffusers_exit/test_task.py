"""libs/diffusers_exit/task.py and features.py through the training engine: data-free heads
leave the diffusers weights bitwise unchanged, the 'exits' strength trains against a frozen
teacher, and a data-free run resumes exactly."""
import pytest
import torch

from configs.diffusers_digits import get_config
from libs.diffusers_exit.demo import heads_config
from libs.diffusers_exit.task import DiffusersTask
from libs.training.engine import train


def _tiny(tmp_path, steps=4):
    c = get_config()
    c.nnet.model_config.update(num_attention_heads=2, attention_head_dim=8, num_layers=2)
    c.workdir = str(tmp_path / "train")
    c.distill.update(n_images=16, steps=3, mini_batch_size=16, n_steps=steps)
    c.train.update(batch_size=8, n_steps=steps, save_interval=2, log_interval=2)
    return c


def _model_folder(tmp_path, c):
    """A 'pretrained' diffusers folder: the config's model, untrained (seeded)."""
    task = DiffusersTask(c, load_data=False)
    folder = tmp_path / "model"
    task.transformer.save_pretrained(str(folder))
    return folder


def test_heads_only_training_leaves_the_diffusers_weights_bitwise(tmp_path):
    c = _tiny(tmp_path)
    hc = heads_config(c, _model_folder(tmp_path, c), tmp_path)
    task = DiffusersTask(hc)
    before = {k: v.clone() for k, v in task.transformer.state_dict().items()}
    ckpt = train(hc, task)
    saved = torch.load(ckpt / "nnet.pth")
    heads = [k for k in saved if k.startswith("uem_heads.")]
    assert heads and any(not torch.equal(saved[k], _fresh_heads(hc)[k]) for k in heads)  # the heads learned
    for k, v in before.items():
        assert torch.equal(saved["transformer." + k], v), k
        assert torch.equal(task.transformer.state_dict()[k], v), k
    assert len(task.train_dataset) == 16  # the model's own samples, cached
    assert (tmp_path / "self_samples.safetensors").is_file()


def _fresh_heads(hc):
    torch.manual_seed(hc.seed)
    task = DiffusersTask(hc, load_data=False)
    torch.manual_seed(hc.seed)
    return {k: v for k, v in task.build_network().state_dict().items()}


@pytest.mark.slow
def test_data_free_training_resumes_exactly(tmp_path):
    c = _tiny(tmp_path)
    folder = _model_folder(tmp_path, c)
    straight = heads_config(c, folder, tmp_path / "a")
    straight.nnet.train = "exits"  # the stronger mode: blocks, final layer and heads against a frozen teacher
    straight.loss.layer_coef = 1.0
    end = train(straight, DiffusersTask(straight))
    halves = heads_config(c, folder, tmp_path / "b")
    halves.nnet.train, halves.loss.layer_coef = "exits", 1.0
    halves.train.n_steps = 2
    train(halves, DiffusersTask(halves))
    halves.train.n_steps = 4
    resumed = train(halves, DiffusersTask(halves))
    a, b = torch.load(end / "nnet.pth"), torch.load(resumed / "nnet.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if k.startswith("transformer.transformer_blocks") and
               not torch.equal(a[k], _fresh_heads(straight).get(k, a[k]))]
    assert changed  # the 'exits' strength trains the blocks
    assert all(torch.equal(a[k], v) for k, v in _fresh_heads(straight).items() if k.startswith("transformer.pos_embed"))


def test_config_problems_are_listed_one_line_each_and_an_empty_source_is_refused():
    import pytest

    from libs.diffusers_exit.task import check_nnet, load_transformer
    from libs.run.errors import UserError

    c = get_config()
    assert check_nnet(c.nnet) == []
    c.nnet.update(cls="UNet2DModel", train="most", img_size=0)
    problems = check_nnet(c.nnet)
    assert len(problems) == 3 and all("\n" not in p for p in problems) and "DiTTransformer2DModel" in problems[0]
    c = get_config()
    c.nnet.model_config = {}
    with pytest.raises(UserError, match="config.nnet.pretrained"):
        load_transformer(c.nnet, 0)
