"""libs/diffusers_exit/prompts.py: a PixArt model's heads trained data-free from a prompt file
encoded by the pipeline's encoder, then swept with a diffusers cache, on a tiny random PixArt."""
import torch

from configs.diffusers_digits import get_config
from libs.diffusers_exit import attach_exits
from libs.diffusers_exit.demo import heads_config
from libs.diffusers_exit.prompts import PromptTable, encode_prompt_file
from libs.diffusers_exit.sweep import parse_methods, run_sweep
from libs.diffusers_exit.task import DiffusersTask
from libs.training.engine import train
from tests.diffusers_exit.tiny_models import tiny_pixart


class FakePipeline:
    """``encode_prompt`` as PixArt's pipeline returns it: (embeds (P, S, C), mask (P, S), None, None)."""

    def encode_prompt(self, prompts, do_classifier_free_guidance, max_sequence_length):
        g = torch.Generator().manual_seed(len(prompts))
        mask = torch.ones(len(prompts), 5, dtype=torch.long)
        mask[-1, 1:] = 0  # the empty prompt: one token
        return torch.randn(len(prompts), 5, 12, generator=g), mask, None, None


def test_pixart_heads_train_data_free_from_a_prompt_file_and_sweep(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n\na boat\n")
    table = encode_prompt_file(FakePipeline(), tmp_path / "prompts.txt", tmp_path / "contexts.safetensors")
    assert len(PromptTable(table).context) == 3 + 1  # the blank line skipped, the empty prompt last
    model = tiny_pixart(learn_sigma=True, layers=2)
    model.save_pretrained(str(tmp_path / "model"))
    c = get_config()
    c.nnet.update(cls="PixArtTransformer2DModel", in_chans=4, num_classes=4, prompts=str(table))
    c.workdir = str(tmp_path / "run")
    c.distill.update(n_images=8, steps=2, mini_batch_size=8, n_steps=2)
    c.train.update(batch_size=4, n_steps=2, save_interval=2)
    hc = heads_config(c, tmp_path / "model", tmp_path)
    task = DiffusersTask(hc)
    before = {k: v.clone() for k, v in task.transformer.state_dict().items()}
    train(hc, task)
    assert all(torch.equal(v, task.transformer.state_dict()[k]) for k, v in before.items())
    net = attach_exits(task.transformer)
    hc.sample.update(n_samples=4, mini_batch_size=4)
    rows = run_sweep(net, task, hc, parse_methods("static:0,fbc:1e6,taylorseer:2", "PixArtTransformer2DModel"), [3],
                     log=lambda *_: None)
    by = {r.method: r for r in rows}
    assert by["full"].distance == 0 and by["static:0"].layer_ratio == 0.5
    assert by["fbc:1e+06"].gflops_per_image < by["full"].gflops_per_image
