"""What every top-level script shares: its flags (each mirrors one config field) and its body.

    train*.py:  --config, --workdir (config.workdir), --pretrained_weight (config.train.pretrained_weight)
    eval*.py:   --config, --nnet_path (config.nnet_path), --exit_policy (config.sample.exit_policy),
                --exit_threshold (the same field, thresholds only, as the released flag),
                --output_path (config.output_path), --workdir (config.workdir)

Every script ends with ``run(main)``: a user error (bad flag or config value, unreadable
file, unwritable folder, full disk, ...) prints one line with the problem and the fix and
exits with status 2; ``ADADIFF_DEBUG=1`` shows the traceback (see libs/run/errors.py).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from libs.run.errors import EXIT_USER_ERROR, debug_enabled, guarded, one_line
from libs.cli.config_check import check_config
from libs.run.config_io import default_workdir, set_from_flags


def define_flags(kind: str) -> flags.FlagValues:
    """Define the flags of a 'train' or 'eval' script; returns absl's FLAGS."""
    config_flags.DEFINE_config_file("config", None, "Configuration (configs/*.py).", lock_config=False)
    flags.DEFINE_string("workdir", None, "Run directory (config.workdir; default workdir/<config name>).")
    if kind == "train":
        flags.DEFINE_string("pretrained_weight", None,
                            "U-ViT/AdaDiff weights to start from (config.train.pretrained_weight).")
    else:
        flags.DEFINE_string("nnet_path", None, "Weights to evaluate (config.nnet_path).")
        flags.DEFINE_string("exit_policy", None,
                            "Exit policy or comma-separated sweep: threshold:T (or T), static:K, profile:T, budget:R, "
                            "full (config.sample.exit_policy).")
        flags.DEFINE_string("exit_threshold", None,
                            "Threshold or comma-separated sweep of thresholds, 1.0/none = full depth "
                            "(sets config.sample.exit_policy).")
        flags.DEFINE_string("output_path", None, "Report folder (config.output_path, default <workdir>/eval).")
        # issue 18: the compute budget (libs/evaluation/frontier.py)
        flags.DEFINE_string("compute_budget", None, "Fraction in (0, 1] of the reference run's GFLOPs/img: evaluate "
                            "the sweep's best candidate under it (config.sample.compute_budget).")
    flags.mark_flags_as_required(["config"])
    return flags.FLAGS


def parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported in one line."""
    prog = os.path.basename(argv[0]) if argv else "adadiff"
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError) as exc:
        if debug_enabled():
            raise
        if isinstance(exc, flags.Error):
            message = f"{one_line(str(exc))} (see --helpfull for the flags)"
        else:  # ml_collections: an override of a field the config does not have
            field = str(exc).strip("\"'")
            given = [a.split("=")[0] for a in argv if a.startswith("--config.") and f".{field}" in a.split("=")[0]]
            message = (f"unknown config field {given[0] if given else field!r}: the config has no field {field!r}; "
                       f"check the spelling against the config file")
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def run(main, argv=None):
    """``app.run(main)`` for every top-level script: user errors in one line (libs/run/errors.py)."""
    app.run(guarded(main), argv=argv, flags_parser=parse_flags)


def check_time(config, script: str, expected: str) -> None:
    """train_ldm.py vs train_ldm_discrete.py etc.: the config's time mode must match the script."""
    time = config.get("time", "continuous")
    if time != expected:
        other = script.replace("_discrete", "") if time == "continuous" else script.replace(".py", "_discrete.py")
        raise ValueError(f"{script} trains/evaluates {expected}-time models but the config says "
                         f"config.time={time!r}; use {other}")


def apply_flags(flags_obj, fields):
    """Set the config fields that flags mirror; default workdir/<config name>."""
    config = flags_obj.config
    set_from_flags(config, fields)
    if not config.get("workdir"):
        set_from_flags(config, {"workdir": default_workdir(flags_obj["config"].config_filename)})
    return config


def train_main(FLAGS, make_task, script: str, expected_time: str = "continuous"):
    """Body of every train*.py: flags -> config -> task -> training engine."""
    from libs.training.engine import train

    config = apply_flags(FLAGS, {"workdir": FLAGS.workdir, "train.pretrained_weight": FLAGS.pretrained_weight})
    check_time(config, script, expected_time)
    check_config(config, "train")
    sampling = bool(config.train.get("sample_interval") or config.train.get("eval_interval")
                    or config.train.get("select_best_by_fid"))
    return train(config, make_task(config, sampling))


def exit_policy_flag(flags_obj):
    """The value of --exit_policy or of its alias --exit_threshold (thresholds only); None if neither."""
    from libs.exits.policy import parse_thresholds_only

    if flags_obj.exit_policy is not None and flags_obj.exit_threshold is not None:
        raise ValueError("pass --exit_policy or --exit_threshold, not both (--exit_threshold=0.9 is "
                         "--exit_policy=threshold:0.9)")
    if flags_obj.exit_threshold is not None:
        parse_thresholds_only(flags_obj.exit_threshold)
        return flags_obj.exit_threshold
    return flags_obj.exit_policy


def resolve_eval_config(flags_obj):
    """Apply the flags that mirror config fields; fill path defaults."""
    config = apply_flags(flags_obj, {"nnet_path": flags_obj.nnet_path, "workdir": flags_obj.workdir,
                                     "sample.exit_policy": exit_policy_flag(flags_obj),
                                     "output_path": flags_obj.output_path,
                                     "sample.compute_budget": flags_obj.compute_budget})
    if not config.get("output_path"):
        set_from_flags(config, {"output_path": os.path.join(config.workdir, "eval")})
    return config


def eval_main(flags_obj, make_task, script: str, expected_time: str = "continuous"):
    """Body of every eval*.py: flags -> config -> weights -> sweep -> report."""
    import shutil
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    from libs.run.atomic import publish_folder
    from libs.run.checkpoint import load_weights
    from libs.run.config_io import config_to_json
    from libs.evaluation.engine import evaluate, sweep_policies
    from libs.evaluation.report import format_table
    from libs.models.registry import build_nnet
    from libs.run.lock import make_writable_dir
    from libs.run.log import setup_logger

    config = resolve_eval_config(flags_obj)
    check_time(config, script, expected_time)
    check_config(config, "eval")
    policies = sweep_policies(str(config.sample.exit_policy))  # validate before any work
    if not config.get("nnet_path"):
        raise ValueError("no weights to evaluate: pass --nnet_path=<...>/<step>.ckpt/nnet_ema.pth "
                         "(or a released U-ViT/AdaDiff .pth)")
    accelerator = Accelerator()
    out = make_writable_dir(config.output_path, "--output_path") if accelerator.is_main_process \
        else Path(config.output_path)
    logger = setup_logger("adadiff.eval", out, accelerator.is_main_process)
    task = make_task(config)
    torch.manual_seed(config.seed)
    net = build_nnet(config.nnet)
    for p in policies:
        p.check(net.num_blocks)
    report = load_weights(net, config.nnet_path)
    if report.kind == "uvit":
        skipped = [p.spec for p in policies if p.uses_heads or p.needs_calibration]
        if skipped:
            logger.warning("%s has no uncertainty heads (plain U-ViT weights): skipping %s, which need them; "
                           "static:K and full depth run", config.nnet_path, ", ".join(skipped))
        policies = [p for p in policies if p.spec not in skipped]
    net.to(accelerator.device).eval()
    staging = out / ".eval.tmp"  # the new report gathers here; published beside its config.json when complete
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("evaluating %s under exit policies %s, %d samples, %d process(es)", config.nnet_path,
                ", ".join(p.spec for p in policies), config.sample.n_samples, accelerator.num_processes)
    results = evaluate(net, task, config, policies, accelerator, staging, logger)
    if accelerator.is_main_process:
        publish_folder(staging, out, "config.json", config_to_json(config))
        print(format_table(results), flush=True)
        logger.info("report written to %s", out)
    return results
