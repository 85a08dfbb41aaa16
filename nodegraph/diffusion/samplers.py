"""Sampling loops: ancestral DDPM, DDIM, DPM-Solver++(2M), and ``sample`` choosing one by name.

Each loop is a short function of (diffusion, model_fn, x_T, timesteps) plus keyword options:
- ``model_fn(x_t, t_batch) -> model_output`` in the diffusion's prediction/variance format, ``t_batch`` a
  (batch,) long tensor of ORIGINAL timestep indices (wrap a model with guidance functions to steer it);
- ``timesteps`` is a strictly descending list of original timesteps; after the last one the loop steps to
  the clean image (ᾱ = 1). It need not start at T-1 (image-to-image starts part-way);
- ``generator`` seeds every random draw (it must live on x_T's device);
- ``callback(step, total, x, x0_hat)`` runs after every step (step counts from 1); returning True stops
  the loop by raising :class:`SamplingInterrupted`, which carries the partial state; exceptions propagate;
- ``cond_fn(x_t, t_batch) -> s·∇_{x_t} log p(y | x_t)`` adds classifier-type guidance (classifier, CLIP):
  ancestral DDPM shifts the mean by Σ·∇ (Dhariwal & Nichol 2021, alg. 1); DDIM and DPM-Solver++ correct
  the score instead, ε̂ ← ε̂ - √(1-ᾱ_t)·∇ (alg. 2), since they have no Σ to scale by;
- ``clip_denoised`` / ``denoised_fn`` post-process x̂0 every step (see GaussianDiffusion.process_x0).

The loops leave autograd as they find it: call them under ``torch.no_grad()`` for inference (a cond_fn
enables the gradients it needs itself); with gradients on, a caller can backpropagate through a few
steps (DiffusionCLIP-style fine-tuning).

Per step the loops do the model call and the update's tensor arithmetic only: coefficients are Python
floats read from the diffusion's precomputed ᾱ table (no device tensors, no host syncs), and the timestep
batches for all steps are built once up front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from .gaussian import DenoisedFn, GaussianDiffusion, ddim_update, dynamic_threshold
from .schedules import Spacing, timestep_sequence

ModelFn = Callable[[Tensor, Tensor], Tensor]
CondFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor, Tensor], "bool | None"]
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]


class SamplingInterrupted(Exception):
    """Raised when a callback returns True; holds the step reached, the current x and the latest x̂0."""

    def __init__(self, step: int, total: int, x: Tensor, x0: Tensor) -> None:
        super().__init__(f"sampling interrupted after step {step} of {total}")
        self.step, self.total, self.x, self.x0 = step, total, x, x0


def prepare_timesteps(diffusion: GaussianDiffusion, timesteps: Sequence[int], x: Tensor) -> tuple[list[int], Tensor]:
    """Validate the sequence and build every step's (batch,) timestep tensor at once: rows of an (n, batch)
    long tensor on x's device, so a step indexes a view instead of allocating."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("the timestep sequence is empty")
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError("timesteps must be strictly descending")
    if ts[0] >= diffusion.num_timesteps or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {diffusion.num_timesteps - 1}]")
    batch = torch.tensor(ts, device=x.device, dtype=torch.long).unsqueeze(1).expand(len(ts), x.shape[0])
    return ts, batch.contiguous()


def report(callback: Callback | None, step: int, total: int, x: Tensor, x0: Tensor) -> None:
    """Run the callback; a True return interrupts sampling."""
    if callback is not None and callback(step, total, x, x0):
        raise SamplingInterrupted(step, total, x, x0)


def guided_x0_eps(
    diffusion: GaussianDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_batch: Tensor,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn | None = None,
) -> tuple[Tensor, Tensor]:
    """(x̂0, ε̂) for the deterministic samplers, with the score-form guidance correction
    ε̂ ← ε̂ - √(1-ᾱ_t)·cond_fn(x_t, t) applied before x̂0 is post-processed."""
    if cond_fn is None:
        return diffusion.denoise(model_output, x, t, clip_denoised, denoised_fn)
    a = diffusion.abar(t, x)
    eps = diffusion.predict_eps(model_output, x, t) - (1 - a) ** 0.5 * cond_fn(x, t_batch)
    x0 = diffusion.process_x0((x - (1 - a) ** 0.5 * eps) / a**0.5, clip_denoised, denoised_fn)
    return x0, (x - a**0.5 * x0) / (1 - a) ** 0.5


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sample_ddpm(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020), respaced as in improved DDPM:

        x_s = μ̃(x̂0, x_t) + Σ·∇log p(y|x_t) + √Σ z,   z ~ N(0, I), no noise on the final step to x_0,

    where μ̃ and Σ come from ``diffusion.p_mean_variance`` for the step t → s (β = 1 - ᾱ_t/ᾱ_s).
    """
    ts, t_batch = prepare_timesteps(diffusion, timesteps, x)
    n = len(ts)
    for i, t in enumerate(ts):
        s = ts[i + 1] if i + 1 < n else -1
        out = model_fn(x, t_batch[i])
        p = diffusion.p_mean_variance(out, x, t, s, clip_denoised, denoised_fn)
        mean = p.mean if cond_fn is None else p.mean + p.variance * cond_fn(x, t_batch[i])
        x = mean + p.variance**0.5 * _randn(x, generator) if s >= 0 else mean
        report(callback, i + 1, n, x, p.pred_x0)
    return x


def sample_ddim(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021):

        x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z,   σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s).

    η = 0 is the deterministic probability-flow sampler (the one DDIM inversion runs backwards).
    """
    ts, t_batch = prepare_timesteps(diffusion, timesteps, x)
    abar = [diffusion.abar(t, x) for t in ts] + [1.0]
    n = len(ts)
    for i, t in enumerate(ts):
        out = model_fn(x, t_batch[i])
        x0, eps = guided_x0_eps(diffusion, out, x, t, t_batch[i], cond_fn, clip_denoised, denoised_fn)
        step_eta = eta if i + 1 < n else 0.0  # σ = 0 on the step to the clean image: draw nothing
        noise = _randn(x, generator) if step_eta > 0 else None
        x = ddim_update(x0, eps, abar[i], abar[i + 1], step_eta, noise)
        report(callback, i + 1, n, x, x0)
    return x


def sample_dpmpp_2m(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep, data prediction. With α = √ᾱ, σ = √(1-ᾱ),
    λ = log(α/σ) and h = λ_s - λ_t for the step t → s:

        x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D,
        D = x̂0_t                                   on the first step (first order: exactly DDIM),
        D = (1 + 1/(2r)) x̂0_t - 1/(2r) x̂0_prev     afterwards, r = h_prev/h.

    The final step to the clean image (σ = 0, h = ∞) is taken at first order, x_0 = x̂0 — the usual
    lower-order final step, which also avoids the r → 0 blow-up. ``generator`` is unused (deterministic).
    """
    del generator
    ts, t_batch = prepare_timesteps(diffusion, timesteps, x)
    n = len(ts)
    alpha = [diffusion.abar(t, x) ** 0.5 for t in ts]
    sigma = [(1 - diffusion.abar(t, x)) ** 0.5 for t in ts]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma, strict=True)]
    x0_prev: Tensor | None = None
    for i, t in enumerate(ts):
        out = model_fn(x, t_batch[i])
        x0, _ = guided_x0_eps(diffusion, out, x, t, t_batch[i], cond_fn, clip_denoised, denoised_fn)
        if i + 1 == n:
            x = x0
        else:
            h = lam[i + 1] - lam[i]
            if x0_prev is None:
                d = x0
            else:
                r = (lam[i] - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * d
        x0_prev = x0
        report(callback, i + 1, n, x, x0)
    return x


def sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: Tensor,
    *,
    sampler: SamplerName = "ddim",
    steps: int | None = 50,
    respacing: str | None = None,
    spacing: Spacing = "trailing",
    timesteps: Sequence[int] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    cond_fn: CondFn | None = None,
    clip_denoised: bool = False,
    dynamic_threshold_percentile: float | None = None,
    denoised_fn: DenoisedFn | None = None,
) -> Tensor:
    """Run a sampler chosen by name, as graph nodes expose it.

    The sequence is ``timesteps`` if given, else ADM ``respacing`` ("100", "10,10,3,2,2", "ddim50") if
    given, else ``steps`` spread with ``spacing`` (None: all T steps). ``eta`` only affects "ddim".
    ``dynamic_threshold_percentile`` applies Imagen's dynamic thresholding after ``denoised_fn``.
    """
    if timesteps is None:
        timesteps = timestep_sequence(diffusion.num_timesteps, steps, respacing, spacing)
    if dynamic_threshold_percentile is not None:
        threshold, inner = dynamic_threshold(dynamic_threshold_percentile), denoised_fn
        denoised_fn = threshold if inner is None else (lambda x0: threshold(inner(x0)))
    common = dict(
        generator=generator,
        callback=callback,
        cond_fn=cond_fn,
        clip_denoised=clip_denoised,
        denoised_fn=denoised_fn,
    )
    if sampler == "ddpm":
        return sample_ddpm(diffusion, model_fn, x_T, timesteps, **common)
    if sampler == "ddim":
        return sample_ddim(diffusion, model_fn, x_T, timesteps, eta=eta, **common)
    if sampler == "dpmpp_2m":
        return sample_dpmpp_2m(diffusion, model_fn, x_T, timesteps, **common)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp_2m")
