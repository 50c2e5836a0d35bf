"""Validate a config once, before any work: names against their valid choices, numbers against
their ranges. ``check_config(config, "train" | "eval")`` raises ``ConfigError`` listing every
problem found, each as ``config.<field>=<value>: <what is allowed>``.

Fields a config does not have are skipped (each task's config carries what it needs). Values
whose rules live with the code that uses them are checked by that code's validator, not
re-implemented here: ``config.nnet`` by the network class's ``check_args``
(``libs.models.registry.check_nnet``), ``config.sample.exit_policy`` by ``parse_policies``, the
optimizer name against ``libs.training.engine.OPTIMIZERS``, the other names against their
registries (samplers, objectives, layer weights, conditions, time modes).
"""
from __future__ import annotations

import math
from numbers import Real

LR_SCHEDULERS = ("customized",)  # linear warmup, then constant (U-ViT's schedule)


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
        value = _get(self.config, dotted)
        if value is _MISSING:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self._bad(dotted, value, f"must be an integer >= {low}{what}")

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
    from libs.models.registry import NETWORKS, check_nnet

    nnet = _get(c.config, "nnet")
    if nnet is not _MISSING and nnet.get("name") == "diffusers":  # an adapted diffusers model (libs/diffusers_exit)
        from libs.diffusers_exit.task import check_nnet as check_diffusers

        c.problems += check_diffusers(nnet)
        return
    c.choice("nnet.name", sorted(NETWORKS))
    if nnet is not _MISSING:
        c.problems += check_nnet(nnet)  # the network class's own check_args


def _check_sample(c: _Checker):
    from libs.diffusion.registry import SAMPLERS, parse_step_counts
    from libs.evaluation.frontier import parse_compute_budget
    from libs.exits.policy import ExitPolicyError, parse_policies
    from libs.models.compile import MODES
    from libs.tasks.conditions import CONDITIONS

    c.choice("sample.algorithm", SAMPLERS)
    c.parsed("sample.sample_steps", parse_step_counts)  # one count or a comma-separated list
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
    from libs.training.engine import OPTIMIZERS
    from libs.training.losses import LAYER_WEIGHTS
    from libs.training.objectives import OBJECTIVES

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


def check_config(config, kind: str) -> None:
    """Raise ``ConfigError`` unless every checked field of ``config`` is valid for a
    'train' or 'eval' command."""
    from libs.tasks.time_modes import TIMES

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
