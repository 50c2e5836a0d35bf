"""The body of every ``eval*.py`` (and the weight loading of ``sample_t2i_discrete.py``):
flags -> config -> checks -> (locked report folder) -> weights -> sweep -> report."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from libs.cli.config_check import check_config, check_fid_inputs, check_script
from libs.cli.flags import resolve_eval_config
from libs.evaluation.engine import evaluate, sweep_policies
from libs.evaluation.report import format_table
from libs.evaluation.sampling import initial_noise
from libs.models.registry import load_nnet
from libs.run.atomic import publish_folder
from libs.run.config_io import config_to_json, load_config_json, nnet_differences
from libs.run.distributed import check_launch, precision_note, precision_used, process_group_kwargs
from libs.run.lock import RunLock
from libs.run.log import setup_logger
from libs.run.manifest import verify_files
from libs.run.output_guard import check_report_folder, check_sample_tree, folder_kind


def eval_main(flags_obj, make_task, script: str):
    """Evaluate the sweep the flags and config describe, into a report folder that is no checkpoint or
    workdir, locked while it runs and holding only this run's files."""
    config = resolve_eval_config(flags_obj)
    check_script(config, script)
    check_config(config, "eval")
    policies = sweep_policies(str(config.sample.exit_policy))  # validate before any work
    require_weights(config)
    check_fid_inputs(config, "eval", statistics=False)
    inputs = [config.nnet_path] + ([config.sample.fid_stat] if config.sample.get("fid_stat") else [])
    out = check_report_folder(config.output_path, "--output_path", inputs)
    if config.sample.get("path"):
        check_sample_tree(config.sample.path, "--config.sample.path")
    accelerator = Accelerator(kwargs_handlers=process_group_kwargs())
    check_launch(accelerator)  # processes that did not join would each write the whole report here
    with RunLock(out, enabled=accelerator.is_main_process, flag="--output_path") as lock:
        return _evaluate_into(out, lock, config, policies, accelerator, make_task,
                              bool(flags_obj.allow_config_mismatch))


def _evaluate_into(out, lock, config, policies, accelerator, make_task, allow_config_mismatch: bool):
    """The locked part of ``eval_main``: the sweep is staged in ``out/.eval.tmp`` and published
    when complete (``config.json`` last); the staging folder never outlives the run."""
    is_main = accelerator.is_main_process
    logger = setup_logger("adadiff.eval", out, is_main)
    if lock.takeover_message():
        logger.warning("%s", lock.takeover_message())
    task = make_task(config)
    net, policies = load_net_for_sampling(config, policies, logger, allow_config_mismatch)
    net.to(accelerator.device).eval()
    probe_outputs(net, task, config, accelerator.device)
    staging = out / ".eval.tmp"  # the new report gathers here; published beside its config.json when complete
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("evaluating %s under exit policies %s, %d samples, %d process(es), precision %s", config.nnet_path,
                ", ".join(p.spec for p in policies), config.sample.n_samples, accelerator.num_processes,
                precision_used(accelerator))
    note = precision_note(accelerator)
    if note:
        logger.warning("%s", note)
    try:
        results = evaluate(net, task, config, policies, accelerator, staging, logger)
        if is_main:
            publish_folder(staging, out, "config.json", config_to_json(config), keep=("log.txt", "run.lock"))
    finally:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
    if is_main:
        print(format_table(results), flush=True)
        logger.info("report written to %s", out)
    return results


def require_weights(config) -> None:
    if not config.get("nnet_path"):
        raise ValueError("no weights to evaluate: pass --nnet_path=<...>/<step>.ckpt/nnet_ema.pth "
                         "(or a released U-ViT/AdaDiff .pth)")


def load_net_for_sampling(config, policies, logger, allow_config_mismatch: bool = False):
    """Load ``config.nnet_path``; check policies and config against it (policies needing heads are dropped
    with a warning when it has none). Returns (net on the CPU, policies)."""
    require_weights(config)
    net, report = load_nnet(config.nnet, config.nnet_path, config.seed)  # tensors that do not fit: named
    for p in policies:
        p.check(net.num_blocks)
    check_checkpoint_config(config, logger, allow_config_mismatch)  # fields that fit but differ
    if report.kind == "uvit":
        skipped = [p.spec for p in policies if p.uses_heads or p.needs_calibration]
        if skipped:
            logger.warning("%s has no uncertainty heads (plain U-ViT weights): skipping %s, which need them; "
                           "static:K and full depth run", config.nnet_path, ", ".join(skipped))
        policies = [p for p in policies if p.spec not in skipped]
    return net, policies


@torch.no_grad()
def probe_outputs(net, task, config, device) -> None:
    """One call at mid time on the first image's noise: every block's prediction and certainty must be
    finite (NaN certainties would silently never exit); else refused naming the blocks."""
    x = initial_noise(task, [0], config.seed, device)  # (1, C, H, W)
    t = torch.full((1,), 0.5 * task.time_scale, device=device)
    out = net.forward_all_exits(x, t, task.conditions([0], device))  # (N, 1, ...) each
    for name, values in (("predictions", out.preds), ("certainties", out.certainties)):
        bad = [i for i, v in enumerate(values) if not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"the weights {config.nnet_path} give non-finite {name} at block(s) {', '.join(map(str, bad))} on a "
                f"probe input: they overflow (values too large for the network's arithmetic) and would sample NaN or "
                f"never exit; use other weights (an earlier checkpoint)")


class ConfigMismatchError(ValueError):
    """config.nnet differs from the config.json of the checkpoint the weights come from."""


def check_checkpoint_config(config, logger, allow: bool = False) -> None:
    """A ``config.nnet`` differing from the checkpoint folder's ``config.json`` is refused naming every
    field, or with ``allow`` (--allow_config_mismatch) run with a warning."""
    folder = Path(config.nnet_path).parent
    saved_path = folder / "config.json"
    if not saved_path.is_file() or folder_kind(folder) != "checkpoint":
        return
    verify_files(folder, ["config.json"])
    saved = load_config_json(saved_path).to_dict().get("nnet")
    diffs = nnet_differences(saved if isinstance(saved, dict) else {}, config.nnet.to_dict())
    if not diffs:
        return
    text = f"config.nnet differs from the checkpoint's own {saved_path} in {'; '.join(diffs)}"
    if allow:
        logger.warning("%s; running anyway (--allow_config_mismatch)", text)
        return
    raise ConfigMismatchError(f"{text}: the weights were trained with that config; drop the overrides or use the "
                              f"config they were saved with, or pass --allow_config_mismatch to run anyway")
