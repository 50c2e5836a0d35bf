"""The samplers a config can name (``config.sample.algorithm``), each as
``sample(model_fn, x_T, generator) -> x_0`` over a schedule (``libs/diffusion/schedules.py``)."""
from __future__ import annotations

SAMPLERS = ("euler_maruyama_sde", "euler_maruyama_ode", "dpm_solver", "dpm_solver_pp", "dpm_solver_pp_2m")


def make_sampler(sample_cfg, schedule):
    """``sample(model_fn, x_T, generator) -> x_0`` for ``sample_cfg.algorithm``."""
    from libs.diffusion.dpm_solver import dpm_solver_sample
    from libs.diffusion.euler_maruyama import euler_maruyama_ode, euler_maruyama_sde

    name, steps = sample_cfg.algorithm, sample_cfg.sample_steps
    if name == "euler_maruyama_sde":
        return lambda f, x, g: euler_maruyama_sde(f, x, schedule, steps, generator=g)
    if name == "euler_maruyama_ode":
        return lambda f, x, g: euler_maruyama_ode(f, x, schedule, steps)
    if name == "dpm_solver":  # released continuous setting: noise prediction, DPM-Solver-fast on logSNR steps
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=3, method="singlestep_fast",
                                                 predict="noise", skip_type="logSNR")
    if name == "dpm_solver_pp":  # released discrete setting: data prediction, fast orders, every call on one
        # (steps + 1)-point time-uniform grid (not 1/3, 2/3 of lambda intervals), see libs/diffusion/dpm_solver.py
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=3, method="singlestep",
                                                 predict="data", skip_type="time_uniform")
    if name == "dpm_solver_pp_2m":
        return lambda f, x, g: dpm_solver_sample(f, x, schedule, steps=steps, order=2, method="multistep",
                                                 predict="data", skip_type=sample_cfg.get("skip_type", "time_uniform"))
    raise ValueError(f"unknown sampler config.sample.algorithm={name!r}; choose one of {SAMPLERS}")
