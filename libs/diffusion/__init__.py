"""Diffusion maths: nothing here knows U-ViT, early exit or accelerate.

==================  ========================================================================
``schedules``       VP noise schedules (continuous linear, discrete betas): alpha, sigma, lambda
``noise``           the forward-noise process of training (continuous / discrete time)
``wrappers``        the sampler-side ``ModelFn``; wrappers: guidance, time conversion, conditions
``euler_maruyama``  Euler-Maruyama SDE / probability-flow ODE samplers
``solver_toolkit``  what the exponential solvers share: time grid, noise-to-data, step coefficients
``dpm_solver``      DPM-Solver / DPM-Solver++ update rules: three methods (fast, single, multi)
``unipc``           UniPC update rule (multistep predictor-corrector, bh1 / bh2)
``registry``        ``make_sampler(config.sample, schedule)``: a config's solver, bound;
                    ``parse_step_counts``: one step count or a comma-separated sweep
==================  ========================================================================
"""
