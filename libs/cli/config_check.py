"""Validate a config once, before any work. ``check_config(config, "train" | "eval")`` raises
``ConfigError`` listing every problem as ``config.<field>=<value>: <what is allowed>``. Absent
fields are skipped; ``config.nnet`` is checked by the network's ``check_args``, exit rules by
``parse_policies``, names against their registries, counts by ``COUNT_LIMITS``.
``check_script``: the script matches the config (``SCRIPTS``); ``check_fid_inputs``: the
sample counts and reference statistics that feed an FID."""
from __future__ import annotations

import math
from numbers import Real

from libs.diffusion.registry import SAMPLERS, parse_step_counts
from libs.evaluation.fid import load_statistics
from libs.evaluation.frontier import parse_compute_budget
from libs.exits.policy import ExitPolicyError, parse_policies
from libs.models.compile import MODES
from libs.models.registry import NETWORKS, check_nnet
from libs.tasks.conditions import CONDITIONS
from libs.tasks.time_modes import TIMES
from libs.training.engine import OPTIMIZERS
from libs.training.losses import LAYER_WEIGHTS
from libs.training.objectives import OBJECTIVES

LR_SCHEDULERS = ("customized",)  # linear warmup, then constant (U-ViT's schedule)


# (mode, time) -> the scripts that run such configs: train, eval, sample (see ``config_mode``)
SCRIPTS = {("pixel", "continuous"): ("train.py", "eval.py"),
           ("latent", "continuous"): ("train_ldm.py", "eval_ldm.py"),
           ("latent", "discrete"): ("train_ldm_discrete.py", "eval_ldm_discrete.py"),
           ("text", "discrete"): ("train_t2i_discrete.py", "eval_t2i_discrete.py", "sample_t2i_discrete.py")}


# Counts the code allocates or loops over, bounded so that a typo gives this one line instead
# of an OverflowError or MemoryError deep inside: field -> (largest value, why).
COUNT_LIMITS = {
    "seed": (2 ** 63 - 1, "a 64-bit seed"),
    "sample.sample_steps": (100_000, "a sampler step count; the time grid is allocated"),
    "sample.n_samples": (10_000_000, "images to sample; FID uses 50,000"),
    "sample.mini_batch_size": (1_000_000, "images per batch"),
    "sample.grid_size": (10_000, "images in one grid PNG"),
    "sample.calib_samples": (1_000_000, "calibration images"),
    "train.n_steps": (10 ** 10, "optimisation steps"),
    "train.batch_size": (10_000_000, "images per step"),
    "train.select_best_n_samples": (10_000_000, "images per FID of a checkpoint"),
    "train.num_workers": (1024, "data loader processes"),
}


class ConfigError(ValueError):
    """The config has values the code would refuse, misread or silently ignore."""


_MISSING = object()


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "get") or part not in node:
            return _MISSING
        node = node[part]
    return node


class _Checker:
    def __init__(self, config):
        self.config = config
        self.problems = []

    def _bad(self, dotted, value, allowed):
        self.problems.append(f"config.{dotted}={value!r}: {allowed}")

    def choice(self, dotted, choices):
        value = _get(self.config, dotted)
        if value is not _MISSING and value not in choices:
            self._bad(dotted, value, f"choose one of {', '.join(map(str, choices))}")

    def integer(self, dotted, low, what=""):
        """An integer >= ``low`` and, when ``COUNT_LIMITS`` bounds the field, <= its limit."""
        value = _get(self.config, dotted)
        if value is _MISSING:
            return
        high, why = COUNT_LIMITS.get(dotted, (None, ""))
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self._bad(dotted, value, f"must be an integer >= {low}{what}")
        elif high is not None and value > high:
            self._bad(dotted, value, f"must be at most {high:,} ({why})")

    def number(self, dotted, low, high=math.inf, low_open=False, high_open=False, what=""):
        value = _get(self.config, dotted)
        if value is _MISSING:
            return
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
            self._bad(dotted, value, f"must be a finite number in {lo}{low:g}, {high:g}{hi}{what}")

    def parsed(self, dotted, parse):
        """``parse(value)`` raises a ValueError naming the field and the fix."""
        value = _get(self.config, dotted)
        if value is not _MISSING:
            try:
                parse(value)
            except ValueError as e:
                self.problems.append(str(e))

    def ensure(self, condition, message):
        if not condition:
            self.problems.append(message)


def _check_nnet(c: _Checker):
    nnet = _get(c.config, "nnet")
    if nnet is not _MISSING and nnet.get("name") == "diffusers":  # an adapted diffusers model (libs/diffusers_exit)
        from libs.diffusers_exit.task import check_nnet as check_diffusers

        c.problems += check_diffusers(nnet)
        return
    c.choice("nnet.name", sorted(NETWORKS))
    if nnet is not _MISSING:
        c.problems += check_nnet(nnet)  # the network class's own check_args


def _check_sample(c: _Checker):
    c.choice("sample.algorithm", SAMPLERS)
    c.parsed("sample.sample_steps", parse_step_counts)  # one count or a comma-separated list
    steps = _get(c.config, "sample.sample_steps")
    if steps is not _MISSING and not c.problems:
        high, why = COUNT_LIMITS["sample.sample_steps"]
        c.ensure(max(parse_step_counts(steps)) <= high,
                 f"config.sample.sample_steps={steps!r}: every count must be at most {high:,} ({why})")
    c.parsed("sample.compute_budget", parse_compute_budget)
    c.integer("sample.n_samples", 1)
    c.integer("sample.mini_batch_size", 1)
    c.integer("sample.grid_size", 0)
    c.number("sample.scale", 0)
    c.integer("sample.calib_samples", 1)
    c.choice("sample.conditions", CONDITIONS)
    c.choice("sample.compile", MODES)
    policy = _get(c.config, "sample.exit_policy")
    if policy is not _MISSING:
        try:
            parse_policies(str(policy))
        except ExitPolicyError as e:
            c.ensure(False, f"config.sample.exit_policy={str(policy)!r}: {e}")


def _check_train(c: _Checker):
    c.integer("train.n_steps", 1)
    c.integer("train.batch_size", 1)
    for field in ("log_interval", "sample_interval", "eval_interval", "save_interval"):
        c.integer(f"train.{field}", 0, " (0 = never)")
    c.integer("train.keep_ckpts", 0, " (0 = keep all)")
    c.integer("train.num_workers", 0)
    c.number("train.grad_clip", 0, what=" (0 = no clipping)")
    c.number("train.ema_rate", 0, 1)
    c.number("train.max_abs_weight", 0, what=" (0 = no bound)")
    c.integer("train.select_best_n_samples", 1)
    c.choice("optimizer.name", OPTIMIZERS)
    c.number("optimizer.lr", 0, low_open=True)
    c.number("optimizer.weight_decay", 0)
    betas = _get(c.config, "optimizer.betas")
    if betas is not _MISSING:
        ok = isinstance(betas, (tuple, list)) and len(betas) == 2 and all(
            isinstance(b, Real) and math.isfinite(b) and 0 <= b < 1 for b in betas)
        c.ensure(ok, f"config.optimizer.betas={betas!r}: must be two numbers in [0, 1)")
    c.choice("lr_scheduler.name", LR_SCHEDULERS)
    c.integer("lr_scheduler.warmup_steps", 0)
    c.choice("loss.objective", OBJECTIVES)
    c.choice("loss.layer_weight", LAYER_WEIGHTS)
    c.number("loss.uem_coef", 0)
    c.number("loss.layer_coef", 0)
    c.number("loss.p_uncond", 0, 1, high_open=True)


def config_mode(config) -> str:
    """'text' (prompts: config.clip), 'latent' (an autoencoder: config.autoencoder) or 'pixel'."""
    if "clip" in config or config.get("nnet", {}).get("name") == "uvit_t2i":
        return "text"
    return "latent" if "autoencoder" in config else "pixel"


def check_script(config, script: str) -> None:
    """The script must be the one for the config's mode and time (``SCRIPTS``); else refused naming the right one."""
    mode, time = config_mode(config), config.get("time", "continuous")
    scripts = SCRIPTS.get((mode, time))
    if scripts is None:
        times = [t for m, t in SCRIPTS if m == mode]
        raise ValueError(f"no script runs {mode}-space models with config.time={time!r}: set config.time to "
                         f"{' or '.join(repr(t) for t in times)}")
    if script in scripts:
        return
    job = script.split("_")[0].split(".")[0]  # train, eval or sample
    fits = [s for s in scripts if s.startswith(job)]
    use = f"use {fits[0]}" if fits else f"its scripts are {', '.join(scripts)}"
    raise ValueError(f"{script} does not run this config ({mode}-space model, config.time={time!r}): {use}")


def check_fid_inputs(config, kind: str, statistics: bool = True) -> None:
    """Every sample count feeding an FID is at least 2 and, with ``statistics``, the reference
    statistics are readable and valid."""
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
        load_statistics(sc.fid_stat)


def check_config(config, kind: str) -> None:
    """Raise ``ConfigError`` unless every checked field of ``config`` is valid for a
    'train' or 'eval' command."""
    if kind not in ("train", "eval"):
        raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}")
    c = _Checker(config)
    c.choice("time", TIMES)
    c.integer("seed", 0)
    _check_nnet(c)
    _check_sample(c)
    if kind == "train":
        _check_train(c)
    if c.problems:
        raise ConfigError("invalid config: " + "; ".join(c.problems))
