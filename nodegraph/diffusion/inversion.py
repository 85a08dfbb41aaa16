"""DDIM inversion (x_0 → x_T) and image-to-image from a partially noised image (SDEdit)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .gaussian import GaussianDiffusion
from .samplers import Callback, ModelFn, SamplerName, prepare_timesteps, report, sample


def ddim_invert(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: Tensor,
    timesteps: Sequence[int],
    *,
    callback: Callback | None = None,
) -> Tensor:
    """Run deterministic DDIM (η = 0) backwards along a sampler's descending ``timesteps`` t_0 > … > t_{n-1}:
    x_0 → x_{t_{n-1}} → … → x_{t_0}, each step the DDIM update towards the noisier level,

        x_{t'} = √ᾱ_{t'} x̂0 + √(1-ᾱ_{t'}) ε̂,   (x̂0, ε̂) from the model at the current (less noisy) level.

    The first step leaves the clean image (ᾱ = 1, so x̂0 = x_0) with ε̂ from the model evaluated on x_0 at
    t_{n-1}, as diffusers' DDIMInverseScheduler does with set_alpha_to_one: it is the exact inverse of the
    sampler's last step up to ε̂(x_0) ≈ ε̂(x_{t_{n-1}}). ``sample_ddim(…, timesteps)`` from the result
    reconstructs x_0 up to the discretisation error, which vanishes as the steps get finer.
    """
    ts, t_batch = prepare_timesteps(diffusion, timesteps, x0)
    n = len(ts)
    x = x0
    for k in range(n):
        target = n - 1 - k  # index into ts of the level this step reaches; walking ts from its end
        if k == 0:
            eps = diffusion.predict_eps(model_fn(x, t_batch[target]), x, ts[target])
            x0_hat = x
        else:
            source = target + 1
            x0_hat, eps = diffusion.denoise(model_fn(x, t_batch[source]), x, ts[source])
        a = diffusion.abar(ts[target], x)
        x = a**0.5 * x0_hat + (1 - a) ** 0.5 * eps
        report(callback, k + 1, n, x, x0_hat)
    return x


def strength_to_start(num_steps: int, strength: float) -> int:
    """Index of the first step run by image-to-image: strength 1 runs all steps, 0 none."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return num_steps - round(strength * num_steps)


def img2img(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    image: Tensor,
    timesteps: Sequence[int],
    strength: float,
    *,
    sampler: SamplerName = "ddim",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    **sample_kwargs,
) -> Tensor:
    """SDEdit (Meng et al. 2022) / "skip steps" (GLIDE, Disco): noise the image to the level of step k and
    sample from there, x_{t_k} = √ᾱ_{t_k} x + √(1-ᾱ_{t_k}) z, with k = n - round(strength·n). Low strength
    keeps the layout and colours, high strength keeps little. ``noise`` fixes z (default: drawn from
    ``generator``); for a deterministic start that reproduces the image instead, run
    ``ddim_invert(…, timesteps[k:])`` and sample from its result. ``sample_kwargs`` go to :func:`sample`
    (eta, callback, cond_fn, …).
    """
    ts = [int(t) for t in timesteps]
    k = strength_to_start(len(ts), strength)
    if k == len(ts):
        return image.clone()
    if noise is None:
        noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    x = diffusion.q_sample(image, ts[k], noise)
    return sample(diffusion, model_fn, x, sampler=sampler, timesteps=ts[k:], generator=generator, **sample_kwargs)
