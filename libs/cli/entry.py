"""What every top-level script shares: its flags (each mirrors one config field) and its body.

    train*.py:  --config, --workdir (config.workdir), --pretrained_weight (config.train.pretrained_weight)
    eval*.py:   --config, --nnet_path (config.nnet_path), --exit_policy (config.sample.exit_policy),
                --exit_threshold (the same field, thresholds only, as the released flag),
                --output_path (config.output_path), --workdir (config.workdir),
                --allow_config_mismatch (run weights whose checkpoint config.json differs from
                config.nnet, with a warning, instead of refusing)

Every script ends with ``run(main)``: a user error (bad flag or config value, unreadable
file, unwritable folder, full disk, ...) prints one line with the problem and the fix and
exits with status 2; Ctrl-C stops with one line and status 130 (staged outputs removed,
locks released); ``ADADIFF_DEBUG=1`` shows the traceback (see libs/run/errors.py).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from libs.run.errors import EXIT_USER_ERROR, debug_enabled, guarded, one_line, report_interrupt
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
        # the compute budget (libs/evaluation/frontier.py)
        flags.DEFINE_string("compute_budget", None, "Fraction in (0, 1] of the reference run's GFLOPs/img: evaluate "
                            "the sweep's best candidate under it (config.sample.compute_budget).")
        flags.DEFINE_bool("allow_config_mismatch", False,
                          "Run weights from a checkpoint whose config.json differs from config.nnet, with a "
                          "warning naming the fields (default: refuse).")
    flags.mark_flags_as_required(["config"])
    return flags.FLAGS


def parse_flags(argv):
    """absl's flag parsing, with a bad flag, config file or config override reported in one line."""
    prog = os.path.basename(argv[0]) if argv else "adadiff"
    try:
        return flags.FLAGS(argv)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors below; anything else re-raised
        if debug_enabled():
            raise
        message = flag_error_message(exc, argv)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def flag_error_message(exc: BaseException, argv) -> str:
    """The one-line message of an error raised while parsing flags and loading the config
    file, or None for a bug: a bad flag, a config file with a syntax error or one that fails
    to run (file and line), no ``get_config``, an override of a field the config lacks."""
    config_file = next((a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")), None)
    if isinstance(exc, SyntaxError):
        return (f"config file {exc.filename}, line {exc.lineno}: {exc.msg}: fix the syntax "
                f"(python -m py_compile {exc.filename} shows it)")
    if isinstance(exc, flags.Error):
        return f"{one_line(str(exc))} (see --helpfull for the flags)"
    if isinstance(exc, AttributeError) and "get_config" in str(exc):
        return (f"config file {config_file} defines no get_config(): a config file must define get_config() "
                f"returning an ml_collections.ConfigDict (see configs/*.py)")
    if isinstance(exc, (AttributeError, KeyError)) and not _raised_in(exc, config_file):
        inner = exc
        while isinstance(inner, BaseException) and inner.args:  # AttributeError(KeyError("'x'\nDid you mean"))
            inner = inner.args[0]
        text = str(inner)
        if "Attempting to lookup: " in text:  # --config.a.b.c where a.b is a value
            path = text.split("Attempting to lookup: ")[-1].strip()
            return (f"unknown config field '--config.{path}': config.{path.rsplit('.', 1)[0]} is a value, not a "
                    f"group of fields; check the spelling against the config file")
        field, _, rest = text.strip("\"'").partition("\n")
        field = field.strip("\"'")
        hint = rest.strip().replace('"', "'")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and a.split("=")[0].endswith(f".{field}")]
        where = given[0] if given else f"--config.{field}"
        return (f"unknown config field {where!r}: the config has no field {field!r}"
                f"{'; ' + hint[0].lower() + hint[1:] if hint else ''}; check the spelling against the config file")
    line = _raised_in(exc, config_file)
    if line:
        return (f"config file {config_file}, line {line}: {type(exc).__name__}: {one_line(str(exc))}: fix the "
                f"config file")
    return None


def _raised_in(exc: BaseException, filename) -> int:
    """The line of ``filename`` in the traceback of ``exc`` (0 when it is not there)."""
    if not filename:
        return 0
    want = os.path.abspath(filename)
    tb, line = exc.__traceback__, 0
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == want:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def run(main, argv=None):
    """``app.run(main)`` for every top-level script: user errors in one line, Ctrl-C as one line
    and status 130 (libs/run/errors.py)."""
    try:
        app.run(guarded(main), argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt:  # while the flags and the config file load
        if debug_enabled():
            raise
        report_interrupt(os.path.basename((argv or sys.argv)[0] or "adadiff"))


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
    check_fid_inputs(config, "train")
    sampling = bool(config.train.get("sample_interval") or config.train.get("eval_interval")
                    or config.train.get("select_best_by_fid"))
    return train(config, make_task(config, sampling))


def check_fid_inputs(config, kind: str, statistics: bool = True) -> None:
    """Before any work: every sample count that feeds an FID is at least 2 (a covariance needs
    two images) and, with ``statistics``, the FID reference statistics a run will use are
    readable and valid (``libs.evaluation.fid.load_statistics``; an evaluation leaves that to
    ``evaluate``, which loads them once, before it samples)."""
    sc, tc = config.sample, config.train
    if not sc.get("fid_stat"):
        return
    counts = {}
    if kind == "eval" or tc.get("eval_interval"):
        counts["config.sample.n_samples"] = sc.n_samples
    if kind == "train" and tc.get("select_best_by_fid"):
        counts["config.train.select_best_n_samples"] = tc.get("select_best_n_samples")
    if kind == "train" and not counts:
        return
    for field, n in counts.items():
        if isinstance(n, int) and n < 2:
            raise ValueError(f"{field}={n}: an FID needs at least 2 samples (the covariance of their features): "
                             f"set {field} >= 2, or --config.sample.fid_stat= for no FID")
    if statistics:
        from libs.evaluation.fid import load_statistics

        load_statistics(sc.fid_stat)


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
    """Body of every eval*.py: flags -> config -> checks -> (locked report folder) -> weights ->
    sweep -> report. The report folder may not be a checkpoint or a training workdir, holds
    ``run.lock`` while the evaluation runs, and ends with the files of this run only."""
    from accelerate import Accelerator

    from libs.evaluation.engine import sweep_policies
    from libs.run.lock import RunLock
    from libs.run.output_guard import check_report_folder

    config = resolve_eval_config(flags_obj)
    check_time(config, script, expected_time)
    check_config(config, "eval")
    policies = sweep_policies(str(config.sample.exit_policy))  # validate before any work
    require_weights(config)
    check_fid_inputs(config, "eval", statistics=False)
    inputs = [config.nnet_path] + ([config.sample.fid_stat] if config.sample.get("fid_stat") else [])
    out = check_report_folder(config.output_path, "--output_path", inputs)
    accelerator = Accelerator()
    with RunLock(out, enabled=accelerator.is_main_process, flag="--output_path") as lock:
        return _evaluate_into(out, lock, config, policies, accelerator, make_task,
                              bool(flags_obj.allow_config_mismatch))


def _evaluate_into(out, lock, config, policies, accelerator, make_task, allow_config_mismatch: bool):
    """The locked part of ``eval_main``: the sweep is staged in ``out/.eval.tmp`` and published
    when complete (``config.json`` last); the staging folder never outlives the run."""
    import shutil

    from libs.evaluation.engine import evaluate
    from libs.evaluation.report import format_table
    from libs.run.atomic import publish_folder
    from libs.run.config_io import config_to_json
    from libs.run.log import setup_logger

    is_main = accelerator.is_main_process
    logger = setup_logger("adadiff.eval", out, is_main)
    if lock.takeover_message():
        logger.warning("%s", lock.takeover_message())
    task = make_task(config)
    net, policies = load_net_for_sampling(config, policies, logger, allow_config_mismatch)
    net.to(accelerator.device).eval()
    staging = out / ".eval.tmp"  # the new report gathers here; published beside its config.json when complete
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("evaluating %s under exit policies %s, %d samples, %d process(es)", config.nnet_path,
                ", ".join(p.spec for p in policies), config.sample.n_samples, accelerator.num_processes)
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
    """Build ``config.nnet``, check the exit policies against it, load ``config.nnet_path`` into
    it and compare the config with the checkpoint's own (``check_checkpoint_config``). Plain U-ViT weights (no uncertainty heads):
    the policies that need heads are dropped with a warning. Returns (net on the CPU, policies)."""
    import torch

    from libs.models.registry import build_nnet
    from libs.run.checkpoint import load_weights

    require_weights(config)
    torch.manual_seed(config.seed)
    net = build_nnet(config.nnet)
    for p in policies:
        p.check(net.num_blocks)
    report = load_weights(net, config.nnet_path)  # tensors that do not fit: named keys and shapes
    check_checkpoint_config(config, logger, allow_config_mismatch)  # fields that fit but differ
    if report.kind == "uvit":
        skipped = [p.spec for p in policies if p.uses_heads or p.needs_calibration]
        if skipped:
            logger.warning("%s has no uncertainty heads (plain U-ViT weights): skipping %s, which need them; "
                           "static:K and full depth run", config.nnet_path, ", ".join(skipped))
        policies = [p for p in policies if p.spec not in skipped]
    return net, policies


class ConfigMismatchError(ValueError):
    """config.nnet differs from the config.json of the checkpoint the weights come from."""


def check_checkpoint_config(config, logger, allow: bool = False) -> None:
    """Weights from a checkpoint folder with a ``config.json``: that config is the reference. A
    ``config.nnet`` that differs from it is refused naming every differing field, or with
    ``allow`` (--allow_config_mismatch) run with a warning."""
    from pathlib import Path

    from libs.run.config_io import load_config_json, nnet_differences
    from libs.run.manifest import verify_files
    from libs.run.output_guard import folder_kind

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
