"""Text-to-image sampling under a chosen exit policy: one PNG per line of a prompts file.

    python sample_t2i_discrete.py --config=configs/mscoco_uvit_small.py --nnet_path=<...>/nnet_ema.pth \
        --input_path=prompts.txt --output_path=samples/ --exit_threshold=0.87

Flags mirror config fields: --nnet_path (config.nnet_path), --exit_policy or --exit_threshold
(config.sample.exit_policy, one policy; profile: and budget: calibrate on the first
config.sample.calib_samples prompts), --output_path (config.output_path); --input_path
is the prompts file (one prompt per line, blank lines skipped). Images are written as
<output_path>/<line index>.png with prompts.txt beside them, published when all are done: the
folder then holds this run's files only (a folder holding other files is refused); the CLIP text encoder is
config.clip.version (a local folder or a cached model name).
"""
import shutil
from pathlib import Path

from absl import flags

from libs.cli.flags import define_flags, run

FLAGS = define_flags("eval")
flags.DEFINE_string("input_path", None, "Prompts file, one prompt per line.")
flags.mark_flags_as_required(["input_path"])


def main(argv):
    from libs.cli.config_check import check_config, check_script
    from libs.cli.flags import resolve_eval_config
    from libs.exits.policy import parse_policies
    from libs.run.atomic import publish_folder
    from libs.run.lock import RunLock
    from libs.run.output_guard import check_report_folder, is_sample_file

    config = resolve_eval_config(FLAGS)
    check_script(config, "sample_t2i_discrete.py")
    check_config(config, "eval")
    policies = parse_policies(str(config.sample.exit_policy))
    if len(policies) != 1:
        raise ValueError(f"sample_t2i_discrete.py samples under one exit policy, got "
                         f"{', '.join(p.spec for p in policies)}")
    prompts = [line.strip() for line in Path(FLAGS.input_path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{FLAGS.input_path} holds no prompts (one per line)")
    inputs = [FLAGS.input_path] + ([config.nnet_path] if config.nnet_path else [])
    out = check_report_folder(config.output_path, "--output_path", inputs, owned=is_sample_file,
                              kind="sampling run")  # a folder of this command's files only
    with RunLock(out, flag="--output_path"):
        staging = out / ".sample.tmp"  # published (stale images of a longer earlier run removed) when complete
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary = sample(config, policies, prompts, staging)
            publish_folder(staging, out, "prompts.txt", "\n".join(prompts) + "\n", keep=("run.lock", "log.txt"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"wrote {len(prompts)} images to {out} ({summary})")


def sample(config, policies, prompts, out: Path) -> str:
    """Encode the prompts, load the network (``load_net_for_sampling``), calibrate the policy
    and write ``out/<i>.png``; returns what the images cost, in words."""
    import logging

    import torch

    from libs.cli.evaluate import load_net_for_sampling, probe_outputs
    from libs.evaluation.engine import calibrate_policy, check_finite_images, generate
    from libs.evaluation.image_io import images_to_uint8, save_png
    from libs.exits.recorder import ExitRecorder
    from libs.models.clip import FrozenCLIPEmbedder
    from libs.tasks.text import PromptTask

    net, kept = load_net_for_sampling(config, policies, logging.getLogger("libs.sample"),
                                      bool(FLAGS.allow_config_mismatch))
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
        for b, s in enumerate(range(0, len(prompts), bs)):
            idx = list(range(s, min(s + bs, len(prompts))))
            images = generate(net, task, config.sample, idx, policy, recorder, config.seed, b, device)
            check_finite_images(images, f"{policy.spec}, prompts {idx[0]}..{idx[-1]}", config.sample)
            images = images_to_uint8(images)
            for i, im in zip(idx, images):
                save_png(im, out / f"{i}.png")
    summary = recorder.summary(net.flops(), len(prompts))
    return (f"{policy.spec}: {summary['mean_blocks']:.2f} of {net.num_blocks} blocks per call, "
            f"{summary['gflops_per_image']:.4g} GFLOPs per image")


if __name__ == "__main__":
    run(main)
