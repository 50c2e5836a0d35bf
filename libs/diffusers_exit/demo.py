"""The diffusers demo in three stages, each through the project's engines.

``train``: a diffusers ``DiTTransformer2DModel`` trained on the digits through the adapter (EMA
saved to ``<workdir>/model/transformer``); ``heads``: fresh heads for that frozen model trained
without data (objective 'distill', ``<workdir>/heads.safetensors``); ``sweep``: step counts x
methods (``<workdir>/sweep/sweep.txt``). Driven by ``scripts/diffusers_demo.sh``::

    python -m libs.diffusers_exit.demo --config=configs/diffusers_digits.py --workdir=workdir/diffusers_demo"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import time
from pathlib import Path

from libs.diffusers_exit.adapter import attach_exits
from libs.diffusers_exit.sweep import fid_function, parse_methods, run_sweep, write_report
from libs.diffusers_exit.features import default_device
from libs.diffusers_exit.task import DiffusersTask, load_transformer
from libs.diffusion.registry import parse_step_counts
from libs.run.checkpoint import load_weights
from libs.run.errors import guarded
from libs.training.engine import train

STAGES = ("train", "heads", "sweep", "exits")  # 'exits' (not in the default run): the stronger data-free mode


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("diffusers_demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def stage_train(config, workdir: Path) -> Path:
    """Stage 1; returns the diffusers folder of the trained model."""
    config = copy.deepcopy(config)
    config.workdir = str(workdir / "train")
    task = DiffusersTask(config)
    ckpt = train(config, task)
    net = task.build_network()
    load_weights(net, str(ckpt / "nnet_ema.pth"))
    folder = workdir / "model" / "transformer"
    net.transformer.save_pretrained(str(folder))
    net.save_heads(workdir / "heads_from_data.safetensors")  # AdaDiff's heads, for comparison with stage 2's
    return folder


def heads_config(config, model_folder: Path, workdir: Path, run: str = "heads"):
    """Stage 2's config: the frozen model from its folder, fresh heads, the 'distill' objective;
    the run in ``<workdir>/<run>``, the model's own samples shared in ``<workdir>``."""
    c = copy.deepcopy(config)
    c.workdir = str(workdir / run)
    c.distill.feature_file = c.distill.get("feature_file") or str(workdir / "self_samples.safetensors")
    c.nnet.update(pretrained=str(model_folder), subfolder="", train="heads", heads="")
    c.loss.update(objective="distill", layer_coef=0.0)  # heads only: the layer-wise term has nothing to train
    c.train.update(n_steps=int(c.distill.n_steps), save_interval=int(c.distill.n_steps))
    c.optimizer.lr = float(c.distill.lr)
    return c


def stage_heads(config, model_folder: Path, workdir: Path, strength: str = "heads") -> Path:
    """Stage 2 (``strength='heads'``) or 'exits' (blocks, final layer and heads fine-tuned against a frozen
    teacher, saved to ``<workdir>/model_exits/transformer`` and ``heads_exits.safetensors``)."""
    c = heads_config(config, model_folder, workdir, run=strength)
    if strength == "exits":
        c.nnet.train, c.loss.layer_coef, c.optimizer.lr = "exits", 1.0, float(c.optimizer.lr) / 10
    task = DiffusersTask(c)
    ckpt = train(c, task)
    net = task.build_network()
    load_weights(net, str(ckpt / "nnet_ema.pth"))
    if strength == "heads":
        path = workdir / "heads.safetensors"
    else:
        net.transformer.save_pretrained(str(workdir / "model_exits" / "transformer"))
        path = workdir / "heads_exits.safetensors"
    net.save_heads(path)
    return path


def stage_sweep(config, model_folder: Path, heads: Path, workdir: Path, methods: str, fid_stat: str) -> str:
    c = copy.deepcopy(config)
    c.nnet.update(pretrained=str(model_folder), subfolder="")
    device = default_device()
    transformer = load_transformer(c.nnet, c.seed).to(device)
    net = attach_exits(transformer, heads=heads, time_shift=c.nnet.get("time_shift", 0.0))
    task = DiffusersTask(c, load_data=False, transformer=transformer)
    steps = list(parse_step_counts(c.sample.sample_steps))
    fid = fid_function(fid_stat, device) if fid_stat else None
    rows = run_sweep(net, task, c, parse_methods(methods, type(transformer).__name__), steps, fid=fid)
    return write_report(rows, workdir / "sweep", extra=dict(methods=methods, n_samples=int(c.sample.n_samples)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m libs.diffusers_exit.demo", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/diffusers_digits.py")
    p.add_argument("--workdir", default="workdir/diffusers_demo")
    p.add_argument("--stages", default="train,heads,sweep", help="comma-separated, in order, of " + ", ".join(STAGES))
    p.add_argument("--methods", default="0.9,deepcache:2:1,fbc:0.1,fbc:0.2,taylorseer:2,taylorseer:3",
                   help="exit/reuse rules and diffusers caches of the sweep (full depth is always in)")
    p.add_argument("--fid_stat", default="", help="FID reference statistics (.npz); '' = image distance only")
    p.add_argument("--model", default="", help="the transformer's diffusers folder (its config.json inside) for "
                   "the heads and sweep stages; default <workdir>/model/transformer (stage train's)")
    p.add_argument("--heads", default="", help="head file for the sweep; default <workdir>/heads.safetensors")
    p.add_argument("--set", action="append", default=[], help="config override key=value (python literal)")
    args = p.parse_args(argv)
    config = load_config(args.config)
    for item in args.set:
        _override(config, item)
    workdir, stages = Path(args.workdir), [s for s in args.stages.split(",") if s]
    model = Path(args.model) if args.model else workdir / "model" / "transformer"
    heads = Path(args.heads) if args.heads else workdir / "heads.safetensors"
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "train":
            model = stage_train(config, workdir)
        elif stage == "heads":
            heads = stage_heads(config, model, workdir)
        elif stage == "exits":
            stage_heads(config, model, workdir, strength="exits")
        elif stage == "sweep":
            print(stage_sweep(config, model, heads, workdir, args.methods, args.fid_stat))
        else:
            raise ValueError(f"--stages: unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        print(f"stage {stage}: {time.perf_counter() - t0:.1f} s", flush=True)


def _override(config, item: str) -> None:
    key, _, value = item.partition("=")
    with contextlib.suppress(ValueError, SyntaxError):  # not a Python literal: the string itself
        value = ast.literal_eval(value)
    *path, last = key.split(".")
    node = config
    for k in path:
        node = node[k]
    node[last] = value


if __name__ == "__main__":
    guarded(main, "libs.diffusers_exit.demo")()
