"""The body of every ``eval*.py``: flags -> config -> weights -> sweep -> report."""
from __future__ import annotations

import os
from pathlib import Path

from libs.config_utils import config_to_json, set_from_flags
from libs.train_engine import default_workdir


def resolve_eval_config(flags_obj):
    """Apply the flags that mirror config fields; fill path defaults."""
    config = flags_obj.config
    set_from_flags(config, {"nnet_path": flags_obj.nnet_path, "sample.exit_threshold": flags_obj.exit_threshold,
                            "output_path": flags_obj.output_path, "workdir": flags_obj.workdir})
    if not config.get("workdir"):
        set_from_flags(config, {"workdir": default_workdir(flags_obj["config"].config_filename)})
    if not config.get("output_path"):
        set_from_flags(config, {"output_path": os.path.join(config.workdir, "eval")})
    return config


def run_eval(flags_obj, make_task):
    import torch
    from accelerate import Accelerator

    from libs.checkpoint import load_weights
    from libs.eval_engine import evaluate, format_table, parse_thresholds
    from libs.nets import build_nnet
    from libs.run_log import setup_logger

    config = resolve_eval_config(flags_obj)
    thresholds = parse_thresholds(str(config.sample.exit_threshold))  # validate before any work
    if not config.get("nnet_path"):
        raise ValueError("no weights to evaluate: pass --nnet_path=<...>/<step>.ckpt/nnet_ema.pth "
                         "(or a released U-ViT/AdaDiff .pth)")
    accelerator = Accelerator()
    out = Path(config.output_path)
    logger = setup_logger("adadiff.eval", out, accelerator.is_main_process)
    task = make_task(config)
    torch.manual_seed(config.seed)
    net = build_nnet(config.nnet)
    report = load_weights(net, config.nnet_path)
    if report.kind == "uvit" and any(t < 1.0 for t in thresholds):
        logger.warning("%s has no uncertainty heads (plain U-ViT weights): only full depth is meaningful; "
                       "evaluating full depth only", config.nnet_path)
        thresholds = [1.0]
    net.to(accelerator.device).eval()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config_to_json(config))
    logger.info("evaluating %s at thresholds %s, %d samples, %d process(es)", config.nnet_path,
                ", ".join("full" if t >= 1 else f"{t:g}" for t in thresholds), config.sample.n_samples,
                accelerator.num_processes)
    results = evaluate(net, task, config, thresholds, accelerator, out, logger)
    if accelerator.is_main_process:
        print(format_table(results), flush=True)
        logger.info("report written to %s", out)
    return results
