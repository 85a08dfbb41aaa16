"""Inpainting: a model conditioned on the known pixels (GLIDE) or replacement of the known region (RePaint).

Polarity: here the mask is ``known``, 1 where pixels are KNOWN and kept, 0 where they are to be generated,
the way inpainting models take it as input (GLIDE's [image·known, known] channels). The MASK socket says the
opposite (1 = repaint, as ComfyUI); `nodegraph.generate.sampling.known_pixels` is the one place a socket
mask is turned into ``known``. It has shape (B or 1, 1 or C, H, W) and broadcasts against the image; values between
0 and 1 blend. Every function here returns a result whose known region equals ``image`` exactly:
``known·image + (1 - known)·x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .gaussian import DenoisedFn, GaussianDiffusion
from .guidance import CondModel
from .samplers import Callback, ModelFn, prepare_timesteps, report, sample


def paste_known(image: Tensor, known: Tensor, x: Tensor) -> Tensor:
    """known·image + (1 - known)·x: the known pixels from ``image``, the rest from ``x``."""
    return known * image + (1 - known) * x


def inpainting_channels(image: Tensor, known: Tensor) -> Tensor:
    """[image·known, known] along channels: the extra input of a GLIDE-style inpainting model.

    ``known`` is broadcast to the image's batch and size and keeps its own channel count (one, as in
    GLIDE). The project's UNet takes this as ``extra=``, so for it put
    ``{"extra": inpainting_channels(image, known)}`` into every condition dict, the null one included.
    """
    known = known.expand(image.shape[0], known.shape[1], *image.shape[2:])
    return torch.cat([image * known, known], dim=1)


def with_inpainting_channels(model: CondModel) -> CondModel:
    """Adapt a network whose input is the channel concatenation [x_t, image·known, known] to the
    conditional-model interface: image and known travel in the condition dict as ``inpaint_image`` and
    ``inpaint_mask`` (so classifier-free guidance batches them like any other condition; give them in the
    null condition too) and are removed before the network sees the dict."""

    def adapted(x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        rest = dict(cond)
        extra = inpainting_channels(rest.pop("inpaint_image"), rest.pop("inpaint_mask"))
        return model(torch.cat([x, extra], dim=1), t, rest)

    return adapted


def inpaint_conditioned(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    image: Tensor,
    known: Tensor,
    x_T: Tensor,
    *,
    denoised_fn: DenoisedFn | None = None,
    **sample_kwargs,
) -> Tensor:
    """Sample with a model that already sees the known pixels (e.g. ``with_inpainting_channels`` + guidance),
    pasting them into x̂0 at every step (GLIDE) so the generated region is built around the exact context.
    ``sample_kwargs`` go to :func:`sample` (sampler, steps, respacing, eta, generator, callback, …)."""

    def paste(x0: Tensor) -> Tensor:
        x0 = paste_known(image, known, x0)
        return x0 if denoised_fn is None else denoised_fn(x0)

    return paste_known(image, known, sample(diffusion, model_fn, x_T, denoised_fn=paste, **sample_kwargs))


def repaint_schedule(num_steps: int, jump_length: int = 10, n_resample: int = 1) -> list[int]:
    """The path of positions p RePaint visits in [t_0, …, t_{n-1}, clean] (p = n is the clean image).

    It walks down one position at a time; on reaching a position that ends a block of ``jump_length``
    steps (blocks counted back from the last model step t_{n-1}; the first, possibly partial, block is not
    resampled) it jumps back up ``jump_length`` positions, ``n_resample - 1`` times per block — so each
    block is denoised ``n_resample`` times (Lugmayr et al. 2022). ``n_resample = 1`` is plain descent.
    """
    if jump_length < 1 or n_resample < 1:
        raise ValueError("jump_length and n_resample must be >= 1")
    jumps = {p: n_resample - 1 for p in range(num_steps - 1, jump_length - 1, -jump_length)}
    p, path = 0, [0]
    while p < num_steps:
        p += 1
        path.append(p)
        if jumps.get(p, 0) > 0:
            jumps[p] -= 1
            p -= jump_length
            path.append(p)
    return path


def inpaint_repaint(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    image: Tensor,
    known: Tensor,
    x_T: Tensor,
    timesteps: Sequence[int],
    *,
    jump_length: int = 10,
    n_resample: int = 1,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn | None = None,
) -> Tensor:
    """RePaint with any unconditional ``model_fn``, along :func:`repaint_schedule`:

    - down t → s: the unknown region takes an ancestral DDPM step, the known region is the image noised
      afresh to level s,  x_s = known·(√ᾱ_s x + √(1-ᾱ_s) z') + (1-known)·(μ̃ + √Σ z)  (x itself at s = clean);
    - up s → t (a resampling jump): x_t ~ q(x_t | x_s) = N(√(ᾱ_t/ᾱ_s) x_s, (1 - ᾱ_t/ᾱ_s) I), which lets the
      generated region harmonise with the context it was just given.
    The callback's step counts every transition of the path.
    """
    ts, t_batch = prepare_timesteps(diffusion, timesteps, x_T)
    n = len(ts)
    path = repaint_schedule(n, jump_length, n_resample)
    abar = [diffusion.abar(t, x_T) for t in ts] + [1.0]
    x, x0 = x_T, x_T
    for k, (p, q) in enumerate(zip(path, path[1:], strict=False)):
        if q == p + 1:
            s = ts[q] if q < n else -1
            out = model_fn(x, t_batch[p])
            pmv = diffusion.p_mean_variance(out, x, ts[p], s, clip_denoised, denoised_fn)
            x0 = pmv.pred_x0
            if s < 0:
                x = paste_known(image, known, pmv.mean)
            else:
                unknown = pmv.mean + pmv.variance**0.5 * _randn(x, generator)
                noised_image = abar[q] ** 0.5 * image + (1 - abar[q]) ** 0.5 * _randn(x, generator)
                x = paste_known(noised_image, known, unknown)
        else:
            ratio = abar[q] / abar[p]
            x = ratio**0.5 * x + (1 - ratio) ** 0.5 * _randn(x, generator)
        report(callback, k + 1, len(path) - 1, x, x0)
    return paste_known(image, known, x)


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
