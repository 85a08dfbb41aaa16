"""The diffusion settings each released model family was trained and is sampled with, expressed with
`nodegraph.diffusion` (GaussianDiffusion over the original schedule, walked along a respaced sequence).

| family | schedule (T = 1000) | predicts | variance | respacing shipped | other sampling defaults |
| --- | --- | --- | --- | --- | --- |
| GLIDE base / inpaint | cosine | ε | learned range | "100" | classifier-free guidance 3; x̂0 clipped |
| GLIDE upsampler (+ inpaint) | linear | ε | learned range | "fast27" | x_T drawn with temperature 0.997 |
| guided-diffusion 64x64 | cosine | ε | learned range | "250", "ddim25" | x̂0 clipped |
| guided-diffusion 128/256/512, upsamplers | linear | ε | learned range | "250", "ddim25" | x̂0 clipped |
| Karlo prior | cosine | x0 | fixed small | "25" | CFG 4; x̂0 clamped to ±10, not clipped |
| Karlo decoder | cosine | ε | learned range | "50" ("25" fast) | CFG 8; x̂0 clipped |
| Karlo 64→256 | cosine | ε | fixed small | "7" | last step by its own network; x̂0 clipped |
| ermongroup DDPM (CelebA-HQ, LSUN) | linear | ε | fixed small | DDIM sequences | x̂0 not clipped by DDIM |

The models are always called with original timestep indices (none of these families rescales them),
so a respaced sequence needs no respaced model. "fast27" is GLIDE's "10,10,3,2,2" with the noisiest
step T-1 replaced by T-3, which its authors found to reduce DDIM artefacts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from nodegraph.diffusion import GaussianDiffusion, make_betas, space_timesteps, timestep_sequence


@dataclass(frozen=True)
class DiffusionSettings:
    schedule: str  # "linear" | "cosine"
    prediction: str = "eps"
    variance: str = "learned_range"
    timesteps: int = 1000
    respacing: str = ""  # the family's default sampling respacing ("" = every step)
    respacings: tuple[str, ...] = ()  # others its scripts ship
    clip_denoised: bool = True
    x0_clamp: float | None = None  # clamp x̂0 to ±value before the step (Karlo's prior)
    guidance_scale: float | None = None  # classifier-free guidance scale of the reference sampler
    noise_temperature: float = 1.0  # x_T ~ N(0, temperature²) (GLIDE's upsampler)

    def build(self) -> GaussianDiffusion:
        return GaussianDiffusion(make_betas(self.schedule, self.timesteps), self.prediction, self.variance)

    def sequence(self, respacing: str | None = None) -> list[int]:
        """The descending original timesteps a sampler visits for `respacing` (default: the family's)."""
        return respaced_timesteps(self.timesteps, self.respacing if respacing is None else respacing)

    def denoised_fn(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.x0_clamp is None:
            return None
        bound = self.x0_clamp
        return lambda x0: x0.clamp(-bound, bound)

    def with_respacing(self, respacing: str) -> DiffusionSettings:
        return replace(self, respacing=respacing)


def respaced_timesteps(num_timesteps: int, respacing: str = "") -> list[int]:
    """ADM / GLIDE / Karlo respacing strings ("100", "10,10,3,2,2", "ddim25", "fast27"; "" = all steps)
    as a descending list of original timesteps."""
    if respacing == "fast27":
        steps = set(space_timesteps(num_timesteps, "10,10,3,2,2"))
        steps.discard(num_timesteps - 1)
        steps.add(num_timesteps - 3)
        return sorted(steps, reverse=True)
    return timestep_sequence(num_timesteps, respacing=respacing or None)


def diffusionclip_sequence(t0: int, steps: int) -> list[int]:
    """DiffusionCLIP's inversion / generation sequence: int(k·t0/(steps-1)) for k < steps, ascending
    (its sampler pairs each entry with the previous one, -1 before the first)."""
    if steps < 2:
        raise ValueError("a DiffusionCLIP sequence needs at least 2 steps")
    return [int(k / (steps - 1) * t0) for k in range(steps)]


GLIDE_BASE = DiffusionSettings("cosine", respacing="100", respacings=("100", "fast27"), guidance_scale=3.0)
GLIDE_UPSAMPLE = DiffusionSettings("linear", respacing="fast27", respacings=("fast27",), noise_temperature=0.997)
ADM_LINEAR = DiffusionSettings("linear", respacing="250", respacings=("250", "ddim25", "1000"))
ADM_COSINE = DiffusionSettings("cosine", respacing="250", respacings=("250", "ddim25", "1000"))
ADM_LINEAR_FIXED = DiffusionSettings("linear", variance="fixed_large", respacing="250", respacings=("250", "ddim25"))
KARLO_PRIOR = DiffusionSettings(
    "cosine", prediction="x0", variance="fixed_small", respacing="25", clip_denoised=False, x0_clamp=10.0,
    guidance_scale=4.0,
)
KARLO_DECODER = DiffusionSettings("cosine", respacing="50", respacings=("50", "25"), guidance_scale=8.0)
KARLO_SR = DiffusionSettings("cosine", variance="fixed_small", respacing="7", respacings=("7",))
DDPM_FIXED_SMALL = DiffusionSettings("linear", variance="fixed_small", clip_denoised=False)
DDPM_FIXED_LARGE = DiffusionSettings("linear", variance="fixed_large", clip_denoised=False)
GLIDE_CLIP = DiffusionSettings("cosine", respacing="100")  # the noised CLIP reads the base model's timesteps

__all__ = [
    "ADM_COSINE",
    "ADM_LINEAR",
    "ADM_LINEAR_FIXED",
    "DDPM_FIXED_LARGE",
    "DDPM_FIXED_SMALL",
    "GLIDE_BASE",
    "GLIDE_CLIP",
    "GLIDE_UPSAMPLE",
    "KARLO_DECODER",
    "KARLO_PRIOR",
    "KARLO_SR",
    "DiffusionSettings",
    "diffusionclip_sequence",
    "respaced_timesteps",
]
