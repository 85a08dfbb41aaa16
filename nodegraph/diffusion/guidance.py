"""Guidance, as functions that wrap a model or build a ``cond_fn`` for the samplers.

Classifier-free guidance wraps a *conditional* model into a plain ``model_fn(x_t, t)``. The conditional
model interface is explicit and small:

    model(x_batch, t_batch, cond) -> model_output,   cond: dict[str, Tensor], every tensor batch-first,

so that K conditions plus the null condition run as ONE forward over a batch of (K+1)·B, with the condition
dicts concatenated along the batch dimension in the order [c_1, …, c_K, ∅]. (Adapting a network whose
forward takes keyword tensors is ``lambda x, t, cond: unet(x, t, **cond)``.)

Classifier-type guidance (a classifier, noised CLIP, CLIP on x̂0) is a ``cond_fn(x_t, t) -> s·∇_{x_t} log p``;
the samplers apply it as a mean shift (ancestral DDPM) or a score correction (DDIM, DPM-Solver++).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussian import GaussianDiffusion
from .samplers import CondFn, ModelFn

Cond = Mapping[str, Tensor]
CondModel = Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]


def concat_conds(conds: Sequence[Cond], batch: int) -> dict[str, Tensor]:
    """Concatenate condition dicts along the batch dimension; a tensor with batch 1 is broadcast to ``batch``.

    All dicts must have the same keys (a null text condition is the empty prompt's tokens, not a missing key).
    """
    keys = set(conds[0])
    for i, cond in enumerate(conds):
        if set(cond) != keys:
            raise ValueError(f"condition {i} has keys {sorted(cond)}, expected {sorted(keys)}")
    out: dict[str, Tensor] = {}
    for key in keys:
        parts = []
        for i, cond in enumerate(conds):
            value = cond[key]
            if value.shape[0] not in (1, batch):
                raise ValueError(f"condition {i}[{key!r}] has batch {value.shape[0]}, expected 1 or {batch}")
            parts.append(value.expand(batch, *value.shape[1:]))
        out[key] = torch.cat(parts)
    return out


def classifier_free_guidance(
    model: CondModel, conds: Sequence[Cond], scales: Sequence[float], null_cond: Cond
) -> ModelFn:
    """ε̃ = ε_∅ + Σ_i s_i (ε_i - ε_∅), all K+1 predictions from one batched forward.

    The combination acts on the model's prediction channels, whatever they predict. Its weights
    (1 - Σ s_i, s_1, …, s_K) sum to one and ε̂, x̂0 and v̂ are affine functions of one another for a fixed
    x_t, so combining the outputs *is* guiding ε (GLIDE, an ε-model) and *is* guiding x̂0 (the DALL·E 2
    prior, an x0-model): the space is chosen by the model's prediction type, with nothing else to set.
    ``learned_range`` variance channels (an output with 2C channels for C input channels) are taken from
    the first condition, as GLIDE takes them from the conditional half. s = 1 with one condition gives the
    conditional model, s = 0 the unconditional one. When the s_i sum to one (edit guidance: s + 1 on the
    target, -s on the source) ε_∅ carries no weight and is not computed.
    """
    if not conds or len(conds) != len(scales):
        raise ValueError("give one scale per condition, and at least one condition")
    k = len(conds)
    scales = [float(s) for s in scales]
    batched: dict[int, dict[str, Tensor]] = {}  # the concatenated conditions, built once per batch size

    with_null = abs(sum(scales) - 1.0) > 1e-9
    branches = [*conds, null_cond] if with_null else list(conds)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[1]
        if b not in batched:
            batched[b] = concat_conds(branches, b)
        n = len(branches)
        out = model(torch.cat([x] * n), t.repeat(n), batched[b])
        outs = out.split(b)
        if with_null:
            uncond = outs[k][:, :c]
            eps = uncond + sum(s * (o[:, :c] - uncond) for s, o in zip(scales, outs[:k], strict=True))
        else:
            eps = sum(s * o[:, :c] for s, o in zip(scales, outs, strict=True))
        if out.shape[1] == c:
            return eps
        if out.shape[1] == 2 * c:
            return torch.cat([eps, outs[0][:, c:]], dim=1)
        raise ValueError(f"model output has {out.shape[1]} channels for {c} input channels")

    return guided


def bind_cond(model: CondModel, cond: Cond) -> ModelFn:
    """The conditional model at one fixed condition, as a plain ``model_fn`` (no guidance)."""
    batched: dict[int, dict[str, Tensor]] = {}

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] not in batched:
            batched[x.shape[0]] = concat_conds([cond], x.shape[0])
        return model(x, t, batched[x.shape[0]])

    return model_fn


def classifier_guidance(log_prob_fn: Callable[[Tensor, Tensor], Tensor], scale: float) -> CondFn:
    """cond_fn(x_t, t) = s · ∇_{x_t} log p(y | x_t, t), with ``log_prob_fn`` returning one value per sample
    (e.g. ``log_softmax(classifier(x, t))[range(B), y]``). Dhariwal & Nichol 2021."""

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(x_in, t).sum(), x_in)
        return scale * grad

    return cond_fn


def noised_clip_guidance(image_encoder: Callable[[Tensor, Tensor], Tensor], text_embed: Tensor, scale: float) -> CondFn:
    """GLIDE's CLIP guidance with a noise-aware image tower: cond_fn = s · ∇_{x_t} (f(x_t, t) · g(c)).

    ``image_encoder(x_t, t)`` gives the (normalised) image embedding of the noisy image, ``text_embed``
    (B or 1, D) the caption's; GLIDE's exp(logit_scale) factor can be folded into ``scale``.
    """
    return classifier_guidance(lambda x, t: (image_encoder(x, t) * text_embed).sum(-1), scale)


# ------------------------------------------------------------------------------ CLIP guidance on x̂0
def random_cutouts(
    images: Tensor, cut_size: int, cutn: int, generator: torch.Generator | None = None, cut_pow: float = 1.0
) -> Tensor:
    """``cutn`` random square crops of every image, each average-pooled to ``cut_size``; (cutn·B, C, s, s),
    cut-major (crop j of image b at index j·B + b). Crop sides are drawn as u^cut_pow between
    min(cut_size, side) and the full side; ``generator`` is a CPU generator."""
    side = min(images.shape[-2:])
    smallest = min(side, cut_size)
    u = torch.rand(cutn, 3, generator=generator, dtype=torch.float64).tolist()
    crops = []
    for u_size, u_x, u_y in u:
        size = int(u_size**cut_pow * (side - smallest) + smallest)
        ox = int(u_x * (images.shape[-1] - size + 1))
        oy = int(u_y * (images.shape[-2] - size + 1))
        crops.append(F.adaptive_avg_pool2d(images[..., oy : oy + size, ox : ox + size], cut_size))
    return torch.cat(crops)


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """θ²/2 for the angle θ between a and b (last dim): for unit vectors |a - b| = 2 sin(θ/2)."""
    chord = (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).norm(dim=-1)
    return 2 * torch.arcsin((chord / 2).clamp(max=1.0)) ** 2


def tv_loss(x: Tensor) -> Tensor:
    """Per-sample mean squared difference between horizontal and vertical neighbours (smoothness prior)."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)


def range_loss(x: Tensor) -> Tensor:
    """Per-sample mean squared excursion outside [-1, 1]."""
    return (x - x.clamp(-1, 1)).pow(2).flatten(1).mean(1)


def clip_x0_guidance(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    image_encoder: Callable[[Tensor], Tensor],
    target_embed: Tensor,
    *,
    scale: float,
    cutn: int = 16,
    cut_size: int = 224,
    cut_pow: float = 1.0,
    tv_scale: float = 0.0,
    range_scale: float = 0.0,
    grad_clamp: float | None = None,
    generator: torch.Generator | None = None,
) -> CondFn:
    """CLIP guidance through the denoised estimate (Crowson's CLIP-guided diffusion).

    Per step: x̂0 from the model (with gradients), x_in = x̂0·f + x_t·(1 - f) with f = √(1-ᾱ_t) — at high noise
    mostly x̂0, at low noise mostly x_t itself —, ``cutn`` random cutouts of x_in embedded by
    ``image_encoder`` (images in [-1, 1] → embeddings; CLIP's input normalisation is the encoder's job),
    loss = scale·Σ_b mean_cuts spherical_distance(embedding, target_b) + tv_scale·TV(x_in)
    + range_scale·range(x_in), and cond_fn = -∇_{x_t} loss, its per-sample RMS clamped to ``grad_clamp``.
    The extra model forward with autograd is the price of differentiating through the denoiser.
    """

    def cond_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = diffusion.predict_x0(model_fn(x_in, t), x_in, t)
            f = (1 - diffusion.abar(t, x_in)) ** 0.5
            blend = x0 * f + x_in * (1 - f)
            embeds = image_encoder(random_cutouts(blend, cut_size, cutn, generator, cut_pow))
            dists = spherical_distance(embeds.view(cutn, x.shape[0], -1), target_embed.unsqueeze(0)).mean(0)
            loss = scale * dists.sum()
            if tv_scale:
                loss = loss + tv_scale * tv_loss(blend).sum()
            if range_scale:
                loss = loss + range_scale * range_loss(blend).sum()
            (grad,) = torch.autograd.grad(loss, x_in)
        grad = -grad
        if grad_clamp is not None:
            rms = grad.pow(2).flatten(1).mean(1).sqrt().view(-1, *([1] * (x.ndim - 1)))
            grad = grad * (grad_clamp / rms.clamp(min=grad_clamp))
        return grad

    return cond_fn
