"""nodegraph.diffusion: schedules, the Gaussian diffusion process, samplers, guidance, inversion, inpainting.

Plain functions and small objects over torch; no graph plumbing. Each module's docstring states its math;
the inpainting mask convention (1 = known/kept, 0 = generate) is defined in ``inpainting``.
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
from .guidance import (
    bind_cond,
    classifier_free_guidance,
    classifier_guidance,
    clip_x0_guidance,
    concat_conds,
    noised_clip_guidance,
    random_cutouts,
    range_loss,
    spherical_distance,
    tv_loss,
)
from .inpainting import (
    inpaint_conditioned,
    inpaint_repaint,
    inpainting_channels,
    paste_known,
    repaint_schedule,
    with_inpainting_channels,
)
from .inversion import ddim_invert, img2img, strength_to_start
from .oracle import GaussianMixtureOracle
from .samplers import (
    SAMPLERS,
    SamplingInterrupted,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from .schedules import ddim_timesteps, make_betas, space_timesteps, timestep_sequence

__all__ = [
    "SAMPLERS",
    "GaussianDiffusion",
    "GaussianMixtureOracle",
    "PMeanVariance",
    "SamplingInterrupted",
    "bind_cond",
    "classifier_free_guidance",
    "classifier_guidance",
    "clip_x0_guidance",
    "concat_conds",
    "ddim_invert",
    "ddim_timesteps",
    "ddim_update",
    "discretized_gaussian_log_likelihood",
    "dynamic_threshold",
    "img2img",
    "inpaint_conditioned",
    "inpaint_repaint",
    "inpainting_channels",
    "make_betas",
    "mean_flat",
    "noised_clip_guidance",
    "normal_kl",
    "paste_known",
    "random_cutouts",
    "range_loss",
    "repaint_schedule",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "space_timesteps",
    "spherical_distance",
    "strength_to_start",
    "timestep_sequence",
    "tv_loss",
    "with_inpainting_channels",
]
