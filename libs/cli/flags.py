"""The flags of the top-level scripts (each sets one config field), their one-line errors, and
``run(main)``, how every script starts and ends (``libs/run/errors.py``).

    train*.py:  --config, --workdir, --pretrained_weight
    eval*.py:   --config, --nnet_path, --exit_policy, --exit_threshold (thresholds only),
                --output_path, --workdir, --compute_budget, --allow_config_mismatch"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from libs.exits.policy import parse_thresholds_only
from libs.exits.registry import spelling_help
from libs.run.config_io import default_workdir, resolve_input_links, set_from_flags
from libs.run.errors import EXIT_USER_ERROR, debug_enabled, guarded, one_line, report_interrupt, stop_signals

# The help lists every rule the spelling registry holds (libs/exits/registry.py), one per line.
EXIT_POLICY_HELP = ("Exit policy or comma-separated sweep (config.sample.exit_policy), each item one of:\n"
                    + spelling_help())


def define_flags(kind: str) -> flags.FlagValues:
    """Define the flags of a 'train' or 'eval' script; returns absl's FLAGS."""
    config_flags.DEFINE_config_file("config", None, "Configuration (configs/*.py).", lock_config=False)
    flags.DEFINE_string("workdir", None, "Run directory (config.workdir; default workdir/<config name>).")
    if kind == "train":
        flags.DEFINE_string("pretrained_weight", None,
                            "U-ViT/AdaDiff weights to start from (config.train.pretrained_weight).")
    else:
        flags.DEFINE_string("nnet_path", None, "Weights to evaluate (config.nnet_path).")
        flags.DEFINE_string("exit_policy", None, EXIT_POLICY_HELP)
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
    """The one-line message of an error from parsing flags or loading the config file, or None for a bug."""
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
        return _unknown_field_message(exc, argv)
    line = _raised_in(exc, config_file)
    if line:
        return (f"config file {config_file}, line {line}: {type(exc).__name__}: {one_line(str(exc))}: fix the "
                f"config file")
    return None


def _unknown_field_message(exc: BaseException, argv) -> str:
    """``--config.a.b=...`` naming a field the config lacks (or a value used as a group)."""
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
    """``app.run(main)`` for every top-level script: user errors in one line; Ctrl-C, SIGTERM and
    SIGHUP as one line and status 128 + signal (libs/run/errors.py)."""
    try:
        with stop_signals():
            app.run(guarded(main), argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt as exc:  # while the flags and the config file load
        if debug_enabled():
            raise
        report_interrupt(os.path.basename((argv or sys.argv)[0] or "adadiff"), exc)


def apply_flags(flags_obj, fields):
    """Set the config fields that flags mirror; default workdir/<config name>; input files
    reached through links replaced by their real paths (``resolve_input_links``)."""
    config = flags_obj.config
    set_from_flags(config, fields)
    if not config.get("workdir"):
        set_from_flags(config, {"workdir": default_workdir(flags_obj["config"].config_filename)})
    resolve_input_links(config)
    return config


def exit_policy_flag(flags_obj):
    """The value of --exit_policy or of its alias --exit_threshold (thresholds only); None if neither."""
    if flags_obj.exit_policy is not None and flags_obj.exit_threshold is not None:
        raise ValueError("pass --exit_policy or --exit_threshold, not both (--exit_threshold=0.9 is "
                         "--exit_policy=threshold:0.9)")
    if flags_obj.exit_threshold is not None:
        parse_thresholds_only(flags_obj.exit_threshold)
        return flags_obj.exit_threshold
    return flags_obj.exit_policy


def resolve_eval_config(flags_obj):
    """Apply the flags of an eval script that mirror config fields; fill path defaults."""
    config = apply_flags(flags_obj, {"nnet_path": flags_obj.nnet_path, "workdir": flags_obj.workdir,
                                     "sample.exit_policy": exit_policy_flag(flags_obj),
                                     "output_path": flags_obj.output_path,
                                     "sample.compute_budget": flags_obj.compute_budget})
    if not config.get("output_path"):
        set_from_flags(config, {"output_path": os.path.join(config.workdir, "eval")})
    return config
