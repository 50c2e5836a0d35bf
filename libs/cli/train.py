"""The body of every ``train*.py``: flags -> config -> checks -> task -> the training engine."""
from __future__ import annotations

from libs.cli.config_check import check_config, check_fid_inputs, check_script
from libs.cli.flags import apply_flags
from libs.training.engine import train


def train_main(flags_obj, make_task, script: str):
    """Resolve the config from the flags, check it (before any work) and train;
    ``make_task(config, sampling)`` builds the task (``sampling``: the run samples images)."""
    config = apply_flags(flags_obj, {"workdir": flags_obj.workdir,
                                     "train.pretrained_weight": flags_obj.pretrained_weight})
    check_script(config, script)
    check_config(config, "train")
    check_fid_inputs(config, "train")
    sampling = bool(config.train.get("sample_interval") or config.train.get("eval_interval")
                    or config.train.get("select_best_by_fid"))
    return train(config, make_task(config, sampling))
