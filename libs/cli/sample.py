"""The body of ``sample_t2i_discrete.py``: one PNG per prompt under one exit policy, written
into a staging folder and published when every image is done, so that the output folder
holds this run's files only (``libs/run/output_guard.is_sample_file``)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from libs.cli.config_check import check_config, check_script
from libs.cli.evaluate import load_net_for_sampling, probe_outputs
from libs.cli.flags import resolve_eval_config
from libs.evaluation.engine import calibrate_policy, check_finite_images, generate
from libs.evaluation.image_io import images_to_uint8, save_png
from libs.evaluation.sampling import index_batches
from libs.exits.policy import parse_policies
from libs.exits.recorder import ExitRecorder
from libs.models.clip import FrozenCLIPEmbedder
from libs.run.atomic import publish_folder
from libs.run.lock import RunLock
from libs.run.output_guard import check_report_folder, is_sample_file
from libs.tasks.text import PromptTask

SCRIPT = "sample_t2i_discrete.py"


def sample_main(flags_obj, input_path: str) -> None:
    """Flags -> config -> checks -> (locked output folder) -> images -> published folder."""
    config = resolve_eval_config(flags_obj)
    check_script(config, SCRIPT)
    check_config(config, "eval")
    policies = parse_policies(str(config.sample.exit_policy))
    if len(policies) != 1:
        raise ValueError(f"{SCRIPT} samples under one exit policy, got {', '.join(p.spec for p in policies)}")
    prompts = [line.strip() for line in Path(input_path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{input_path} holds no prompts (one per line)")
    inputs = [input_path] + ([config.nnet_path] if config.nnet_path else [])
    out = check_report_folder(config.output_path, "--output_path", inputs, owned=is_sample_file,
                              kind="sampling run")  # a folder of this command's files only
    with RunLock(out, flag="--output_path"):
        staging = out / ".sample.tmp"  # published (stale images of a longer earlier run removed) when complete
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = sample(config, policies, prompts, staging, bool(flags_obj.allow_config_mismatch))
            publish_folder(staging, out, "prompts.txt", "\n".join(prompts) + "\n", keep=("run.lock", "log.txt"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(prompts)} images to {out} ({summary})")


def sample(config, policies, prompts, out: Path, allow_config_mismatch: bool = False) -> str:
    """Encode the prompts, load the network (``load_net_for_sampling``), calibrate the policy
    and write ``out/<i>.png``; returns what the images cost, in words."""
    net, kept = load_net_for_sampling(config, policies, logging.getLogger("libs.sample"), allow_config_mismatch)
    if not kept:
        raise ValueError(f"{config.nnet_path} holds plain U-ViT weights (no uncertainty heads), which "
                         f"{policies[0].spec} needs: use --exit_policy=static:K or full, or AdaDiff weights")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = FrozenCLIPEmbedder(config.clip.version, device=device)
    with torch.no_grad():
        contexts = torch.cat([clip.encode(prompts[i:i + 64]) for i in range(0, len(prompts), 64)]).float().cpu()
        empty = clip.encode([""])[0].float().cpu()
    del clip
    task = PromptTask(config, contexts, empty)
    net.to(device).eval()
    probe_outputs(net, task, config, device)
    policy = calibrate_policy(kept[0], net, task, config, device)
    out.mkdir(parents=True, exist_ok=True)
    recorder = ExitRecorder(net.num_blocks, device)
    bs = int(config.sample.mini_batch_size)
    with torch.no_grad():
        for b, idx in enumerate(index_batches(len(prompts), bs)):
            images = generate(net, task, config.sample, idx, policy, recorder, config.seed, b, device)
            check_finite_images(images, f"{policy.spec}, prompts {idx[0]}..{idx[-1]}", config.sample)  # never saved
            for i, im in zip(idx, images_to_uint8(images)):
                save_png(im, out / f"{i}.png")
    summary = recorder.summary(net.flops(), len(prompts))
    return (f"{policy.spec}: {summary['mean_blocks']:.2f} of {net.num_blocks} blocks per call, "
            f"{summary['gflops_per_image']:.4g} GFLOPs per image")
