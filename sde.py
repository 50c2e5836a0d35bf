"""The released layout's ``sde`` module, kept as a thin alias: the forward-noise processes
live in ``libs.diffusion.noise``, the training objectives in ``libs.training.objectives``."""
from libs.diffusion.noise import ContinuousNoise, DiscreteNoise  # noqa: F401
from libs.training.objectives import OBJECTIVES, training_losses  # noqa: F401
