"""The samplers a config can name (``config.sample.algorithm``), each as
``sample(model_fn, x_T) -> x_0`` over a schedule (``libs/diffusion/schedules.py``),
and the step counts a config can ask for (``config.sample.sample_steps``: one count, or a
comma-separated list that a sweep runs each of)."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

SAMPLERS = ("euler_maruyama_sde", "euler_maruyama_ode", "dpm_solver", "dpm_solver_pp", "dpm_solver_pp_2m", "unipc")


class StepCountError(ValueError):
    """``config.sample.sample_steps`` is not a positive step count or a list of them."""


def parse_step_counts(value) -> Tuple[int, ...]:
    """The step counts of ``config.sample.sample_steps`` (50, '10,15,20,50' or a list), in order,
    duplicates dropped; each an integer >= 1, else ``StepCountError``."""
    fix = "give a step count >= 1 or a comma-separated list of them, e.g. --config.sample.sample_steps=10,15,20,50"
    if isinstance(value, bool):
        raise StepCountError(f"config.sample.sample_steps={value!r}: {fix}")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise StepCountError(f"config.sample.sample_steps={value!r}: {fix}")
    if not items:
        raise StepCountError(f"config.sample.sample_steps={value!r} is empty: {fix}")
    counts = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            what = "an empty item" if item == "" else f"the item {item!r}"
            raise StepCountError(f"config.sample.sample_steps={value!r} has {what}: {fix}")
        if item not in counts:
            counts.append(item)
    return tuple(counts)


def reference_steps(value) -> int:
    """The largest step count of ``config.sample.sample_steps``: the sweep's reference run (and
    what a single sampling run, e.g. training's sample grids, uses)."""
    return max(parse_step_counts(value))


def make_sampler(sample_cfg, schedule, steps: Optional[int] = None, generator=None):
    """``sample(model_fn, x_T) -> x_0``: the solver of ``sample_cfg.algorithm`` bound with ``steps``
    (default: the largest of ``sample_steps``) and the SDE's ``generator``."""
    from libs.diffusion.dpm_solver import dpm_solver_sample
    from libs.diffusion.euler_maruyama import euler_maruyama_ode, euler_maruyama_sde
    from libs.diffusion.unipc import unipc_sample

    name = sample_cfg.algorithm
    steps = reference_steps(sample_cfg.sample_steps) if steps is None else int(steps)
    skip_type = sample_cfg.get("skip_type", "time_uniform")
    solvers = {
        "euler_maruyama_sde": (euler_maruyama_sde, dict(generator=generator)),
        "euler_maruyama_ode": (euler_maruyama_ode, {}),
        # released continuous setting: noise prediction, DPM-Solver-fast on logSNR steps
        "dpm_solver": (dpm_solver_sample, dict(order=3, method="singlestep_fast", predict="noise", skip_type="logSNR")),
        # released discrete setting: data prediction, fast orders, every call on one (steps + 1)-point
        # time-uniform grid (not 1/3, 2/3 of lambda intervals), see libs/diffusion/dpm_solver.py
        "dpm_solver_pp": (dpm_solver_sample, dict(order=3, method="singlestep", predict="data",
                                                  skip_type="time_uniform")),
        # DPM-Solver++(2M): data prediction, second-order multistep
        "dpm_solver_pp_2m": (dpm_solver_sample, dict(order=2, method="multistep", predict="data",
                                                     skip_type=skip_type)),
        # UniPC-2 (B2(h)): data prediction, second-order predictor with corrector
        "unipc": (unipc_sample, dict(order=2, predict="data", skip_type=skip_type)),
    }
    if name not in solvers:
        raise ValueError(f"unknown sampler config.sample.algorithm={name!r}; choose one of {SAMPLERS}")
    solver, options = solvers[name]
    return functools.partial(solver, schedule=schedule, steps=steps, **options)
