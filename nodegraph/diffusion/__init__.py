"""nodegraph.diffusion: schedules, the Gaussian diffusion process, samplers, guidance, inversion, inpainting.

Plain functions and small objects over torch; no graph plumbing. See each module's docstring for the math.
"""

from .gaussian import (
    GaussianDiffusion,
    PMeanVariance,
    ddim_update,
    discretized_gaussian_log_likelihood,
    dynamic_threshold,
    mean_flat,
    normal_kl,
)
from .oracle import GaussianMixtureOracle
from .schedules import ddim_timesteps, make_betas, space_timesteps, timestep_sequence

__all__ = [
    "GaussianDiffusion",
    "GaussianMixtureOracle",
    "PMeanVariance",
    "ddim_timesteps",
    "ddim_update",
    "discretized_gaussian_log_likelihood",
    "dynamic_threshold",
    "make_betas",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
    "timestep_sequence",
]
