"""The released layout's ``dpm_solver_pp`` module, kept as a thin alias of
``libs.diffusion.dpm_solver`` (DPM-Solver and DPM-Solver++ over a VP schedule)."""
from libs.diffusion.dpm_solver import (METHODS, SKIP_TYPES, dpm_solver_sample, get_time_steps,  # noqa: F401
                                       singlestep_orders)
