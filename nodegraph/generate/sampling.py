"""Running the bundled denoisers: guidance assembly and the sampling entry points nodes and benches call.

Everything here is plain library code over `nodegraph.diffusion` and `nodegraph.models`: a graph node
adapts its inputs to these functions and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.diffusion import guidance as G
from nodegraph.diffusion.inpainting import inpaint_conditioned, inpaint_repaint, inpainting_channels
from nodegraph.diffusion.inversion import ddim_invert
from nodegraph.diffusion.samplers import CondFn, ModelFn, sample
from nodegraph.diffusion.schedules import timestep_sequence
from nodegraph.errors import ConditionError, InputValueError
from nodegraph.generate.conditions import (
    Condition,
    Guidance,
    Latent,
    NoiseSpec,
    prior_condition,
    unet_condition,
)
from nodegraph.models.diffusion_model import DiffusionModel
from nodegraph.models.resize import fit_square

Callback = Callable[[int, int, Tensor, Tensor], "bool | None"]


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "ddim"  # "ddpm", "ddim" or "dpmpp_2m"
    steps: int = 50
    respacing: str = ""  # ADM section string ("10,10,3,2,2", "ddim25"); overrides steps when given
    eta: float = 0.0
    clip_denoised: bool = True
    dynamic_threshold: float | None = None  # percentile, e.g. 0.995; None = off
    spacing: str = "auto"  # "leading", "trailing", "linspace"; auto picks per sampler (see timesteps)

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The sequence walked. "auto" spacing is "leading" for DDIM/DDPM: trailing starts at t = T-1, where
        the cosine schedule's ᾱ is ~1e-9, and for an ε-prediction model any error in ε̂ there is amplified by
        1/√ᾱ into the x̂0 the next step keeps (an ε decoder: attribute accuracy 0.36 leading, 0.28 trailing).
        For the v-prediction models now bundled the two agree within noise (GLIDE mode, 32 prompts, scale 3:
        0.825 / 0.825 one shape, 0.69 / 0.72 two shapes), so leading stays the safe default for any checkpoint.
        DPM-Solver++ keeps "trailing", since ending on t = 0 costs it its second order."""
        spacing = self.spacing
        if spacing == "auto":
            spacing = "trailing" if self.sampler == "dpmpp_2m" else "leading"
        try:
            return timestep_sequence(num_timesteps, self.steps, self.respacing or None, spacing)
        except ValueError as exc:  # the user's steps or respacing do not fit this model's schedule
            raise InputValueError("respacing" if self.respacing else "steps", str(exc)) from None


def _net_fn(model: DiffusionModel) -> G.CondModel:
    net, dtype = model.net, model.weight_dtype
    if dtype == torch.float32:
        return lambda x, t, cond: net(x, t, **cond)

    # Reduced-precision weights (a loader's weight_dtype bf16): the network gets its inputs in its own dtype and
    # its output comes back as fp32, so the sampler's x_t and update arithmetic stay fp32.
    def reduced(x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        return net(x.to(dtype), t, **cast).float()

    return reduced


def _context_length(guidance: Guidance) -> int:
    lengths = {c.text.tokens.shape[1] for c, _ in guidance.conditions if c.text is not None}
    if len(lengths) > 1:
        raise ConditionError("all texts of one guidance must come from the same CLIP (token lengths differ)",
                             "guidance")
    return lengths.pop() if lengths else 1


def condition_tensors(model: DiffusionModel, cond: Condition, batch: int, context_length: int) -> dict[str, Tensor]:
    if model.kind == "prior":
        c = model.net.cfg
        return prior_condition(cond, batch, c.context_length, c.text_width, c.clip_dim, model.device)
    return unet_condition(model.net.cfg, cond, batch, context_length, model.device)


def guided_model_fn(model: DiffusionModel, guidance: Guidance, batch: int,
                    fixed: dict[str, Tensor] | None = None) -> ModelFn:
    """model_fn(x_t, t) applying classifier-free guidance over the guidance's weighted conditions.

    `fixed` holds inputs that are the same under every condition (the upsampler's low-res image, the
    inpainting channels). One condition at scale 1 is just the conditional model: no null forward.
    """
    fixed = fixed or {}
    length = _context_length(guidance)
    net = _net_fn(model)
    conds = [{**condition_tensors(model, c, batch, length), **fixed} for c, _ in guidance.conditions]
    scales = [s for _, s in guidance.conditions]
    if not conds:
        return G.bind_cond(net, {**condition_tensors(model, Condition(), batch, length), **fixed})
    if len(conds) == 1 and scales[0] == 1.0:
        return G.bind_cond(net, conds[0])
    null = {**condition_tensors(model, Condition(), batch, length), **fixed}
    return G.classifier_free_guidance(net, conds, scales, null)


def guidance_cond_fn(model: DiffusionModel, guidance: Guidance, model_fn: ModelFn,
                     generator: torch.Generator | None) -> CondFn | None:
    """The classifier / CLIP gradient terms of a guidance as one cond_fn (None when it has neither)."""
    fns: list[CondFn] = []
    if guidance.classifier is not None:
        from nodegraph.models.classifier import labels_for

        term = guidance.classifier
        clf, labels = term.model, term.labels  # bound now: `term` is reused for the CLIP term below

        def log_prob(x: Tensor, t: Tensor) -> Tensor:
            return clf.log_prob(x, t, labels_for(labels, x.shape[0], x.device))

        fns.append(G.classifier_guidance(log_prob, term.scale))
    if guidance.clip is not None:
        term = guidance.clip
        target = F.normalize(term.target.to(model.device), dim=-1)
        if term.mode == "noised":
            tower = term.encoder
            fns.append(G.noised_clip_guidance(lambda x, t: F.normalize(tower(x, t), dim=-1), target, term.scale))
        elif term.mode == "x0":
            clip = term.encoder
            fns.append(G.clip_x0_guidance(
                model.diffusion, model_fn, clip.encode_image, target, scale=term.scale, cutn=term.cutn,
                cut_size=clip.image_size, tv_scale=term.tv_scale, range_scale=term.range_scale,
                grad_clamp=term.grad_clamp, generator=generator,
            ))
        else:
            raise ConditionError(f"unknown CLIP guidance mode {term.mode!r}; use 'x0' or 'noised'", "guidance")
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]
    return lambda x, t: sum(f(x, t) for f in fns)


@torch.no_grad()
def run_denoiser(
    model: DiffusionModel,
    x_T: Tensor,
    guidance: Guidance,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    fixed: dict[str, Tensor] | None = None,
    timesteps: list[int] | None = None,
) -> Tensor:
    """Sample from x_T with the guidance's conditions and gradient terms."""
    model_fn = guided_model_fn(model, guidance, x_T.shape[0], fixed)
    cond_fn = guidance_cond_fn(model, guidance, model_fn, generator if x_T.device.type == "cpu" else None)
    return sample(
        model.diffusion, model_fn, x_T, sampler=settings.sampler,
        timesteps=timesteps or settings.timesteps(model.diffusion.num_timesteps), eta=settings.eta,
        generator=generator, callback=callback, cond_fn=cond_fn, clip_denoised=settings.clip_denoised,
        dynamic_threshold_percentile=settings.dynamic_threshold,
    )


@torch.no_grad()
def sample_prior(
    prior: DiffusionModel,
    text: Condition,
    scale: float,
    settings: SamplerSettings,
    batch: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    best_of: int = 1,
    guidance: Guidance | None = None,
    x_T: Tensor | None = None,
) -> Tensor:
    """Unit-norm CLIP image embeddings [batch, D] for a text (DALL·E 2 prior).

    With `best_of` = k, k candidates are drawn per sample and the one whose embedding is closest to the
    text embedding is kept (DALL·E 2 draws two). `x_T` ([k * batch, D], candidate-major) defaults to a
    draw from `generator`.
    """
    if text.text is None:
        raise ConditionError("the prior needs text: connect a TEXT_EMBED", "text")
    d = prior.net.cfg.clip_dim
    n = batch * best_of
    guidance = guidance or Guidance.cfg(text, scale)
    repeated = Guidance(
        conditions=tuple((_repeat(c, best_of), s) for c, s in guidance.conditions),
        classifier=guidance.classifier, clip=guidance.clip,
    )
    x = x_T if x_T is not None else torch.randn(n, d, generator=generator, device=prior.device)
    if x.shape != (n, d):
        raise ConditionError(f"the prior's x_T must have shape ({n}, {d}) for batch {batch} x best_of {best_of}",
                             "noise")
    z = run_denoiser(prior, x, repeated, settings, generator=generator, callback=callback)
    emb = prior.net.denormalize(z)  # [best_of * batch, D], candidate-major
    if best_of == 1:
        return emb
    target = F.normalize(_batched_embed(text, batch), dim=-1)
    cands = emb.view(best_of, batch, d)
    best = (cands * target[None]).sum(-1).argmax(dim=0)
    return cands[best, torch.arange(batch, device=emb.device)]


def _batched_embed(cond: Condition, batch: int) -> Tensor:
    e = cond.text.embed
    return e.expand(batch, -1) if e.shape[0] == 1 else e


def _repeat(cond: Condition, k: int) -> Condition:
    if k == 1 or cond.text is None or cond.text.embed.shape[0] == 1:
        return cond  # batch-1 text broadcasts to every candidate
    t = cond.text
    rep = type(t)(embed=t.embed.repeat(k, 1), tokens=t.tokens.repeat(k, 1, 1), mask=t.mask.repeat(k, 1),
                  prompts=t.prompts)
    return Condition(text=rep, image_embed=cond.image_embed)


@torch.no_grad()
def upsample(
    model: DiffusionModel,
    low: Tensor,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    aug_level: int | None = None,
    guidance: Guidance | None = None,
) -> Tensor:
    """Diffusion upsampling of [B, 3, h, w] images in [-1, 1] (first resized to the model's input size) to
    the model's resolution.

    The low-res image is noised to `aug_level` (default: the level in the checkpoint's metadata) as in
    training, so the upsampler treats artefacts of the decoder's samples like augmentation noise.
    """
    if guidance is not None and guidance.conditions:
        raise ConditionError("the upsampler takes no text or image embedding; only classifier / CLIP terms apply",
                             "guidance")
    size = model.image_size
    low = fit_square(low.to(model.device), model.low_res)
    level = int(aug_level if aug_level is not None else model.aug_level)
    if not 0 <= level < model.diffusion.num_timesteps:
        raise InputValueError("aug_level", f"{level} is not a noise level of this upsampler's schedule "
                              f"(0 … {model.diffusion.num_timesteps - 1}); use -1 for the checkpoint's own")
    b = low.shape[0]
    levels = torch.full((b,), level, dtype=torch.long, device=low.device)
    noisy = model.diffusion.q_sample(low, levels, torch.randn(low.shape, generator=generator, device=low.device))
    cond_img = F.interpolate(noisy, size=(size, size), mode="bilinear", align_corners=False)
    x = torch.randn(b, 3, size, size, generator=generator, device=low.device)
    return run_denoiser(model, x, guidance or Guidance(), settings, generator=generator, callback=callback,
                        fixed={"extra": cond_img, "aug_level": levels}).clamp(-1, 1)


def known_pixels(mask: Tensor) -> Tensor:
    """The one place the MASK socket's polarity (1 = generate) becomes the inpainting models' (1 = known)."""
    return 1 - mask


@torch.no_grad()
def inpaint(
    model: DiffusionModel,
    image: Tensor,
    mask: Tensor,
    guidance: Guidance,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    method: str = "model",
    jump_length: int = 10,
    n_resample: int = 1,
    x_T: Tensor | None = None,
) -> Tensor:
    """Regenerate the pixels where `mask` = 1 (the MASK socket's polarity); the rest equals `image` exactly.

    Image and mask are resized to the model's resolution (the mask rounded to 0/1) and broadcast to one
    batch. method "model": an inpainting checkpoint that sees [image * known, known] (GLIDE); the known
    pixels are pasted into x̂0 every step. method "repaint": any decoder, known pixels re-noised every step
    (RePaint), optionally with resampling jumps.
    """
    size = model.image_size
    image = fit_square(image.to(model.device), size)
    known = known_pixels(fit_square(mask.to(model.device, image.dtype), size).round())
    b = max(image.shape[0], known.shape[0], x_T.shape[0] if x_T is not None else 1)
    given = [("images", image), ("mask", known)] + ([("noise", x_T)] if x_T is not None else [])
    for name, t in given:
        if t.shape[0] not in (1, b):
            raise InputValueError(name, f"batch {t.shape[0]} does not match batch {b}; use 1 or {b}")
    image, known = image.expand(b, -1, -1, -1), known.expand(b, -1, -1, -1)
    x = x_T.expand(b, -1, -1, -1) if x_T is not None else torch.randn(image.shape, generator=generator,
                                                                    device=image.device)
    if method == "model":
        if model.kind != "inpaint":
            raise ConditionError(f"method 'model' needs an inpainting checkpoint, got a {model.kind}; "
                                 "load inpaint.safetensors or use method 'repaint'", "model")
        fixed = {"extra": inpainting_channels(image, known)}
        model_fn = guided_model_fn(model, guidance, b, fixed)
        cond_fn = guidance_cond_fn(model, guidance, model_fn, generator)
        return inpaint_conditioned(
            model.diffusion, model_fn, image, known, x, sampler=settings.sampler,
            timesteps=settings.timesteps(model.diffusion.num_timesteps), eta=settings.eta, generator=generator,
            callback=callback, cond_fn=cond_fn, clip_denoised=settings.clip_denoised,
        ).clamp(-1, 1)
    if method == "repaint":
        if model.kind == "inpaint":
            raise ConditionError("method 'repaint' runs a plain decoder; load decoder.safetensors", "decoder")
        model_fn = guided_model_fn(model, guidance, b)
        return inpaint_repaint(
            model.diffusion, model_fn, image, known, x, settings.timesteps(model.diffusion.num_timesteps),
            jump_length=jump_length, n_resample=n_resample, generator=generator, callback=callback,
            clip_denoised=settings.clip_denoised,
        ).clamp(-1, 1)
    raise ConditionError(f"unknown inpainting method {method!r}; use 'model' or 'repaint'", "method")


@torch.no_grad()
def invert(
    model: DiffusionModel,
    image: Tensor,
    cond: Condition,
    settings: SamplerSettings,
    *,
    callback: Callback | None = None,
) -> tuple[Tensor, list[int]]:
    """DDIM-invert images (resized to the model's resolution) to x_T under a condition (no guidance: CFG
    breaks exact inversion).

    Returns x_T and the timestep sequence; sampling with DDIM (eta 0) along the same sequence and the
    same condition reconstructs the image.
    """
    ts = settings.timesteps(model.diffusion.num_timesteps)
    image = fit_square(image.to(model.device), model.image_size)
    model_fn = guided_model_fn(model, Guidance.cfg(cond, 1.0), image.shape[0])
    return ddim_invert(model.diffusion, model_fn, image, ts, callback=callback), ts


# ------------------------------------------------------------ entry points over socket values (NOISE, LATENT)


@torch.no_grad()
def decode(
    model: DiffusionModel,
    guidance: Guidance,
    settings: SamplerSettings,
    *,
    noise: NoiseSpec | None = None,
    latent: Latent | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Images from a decoder, starting from a Noise's x_T or from a latent (DDIM-inverted, or noised forward).

    From a latent it walks the latent's own timesteps. An inverted one with DDIM: with eta 0 and the
    inversion's condition it reconstructs the image, with another condition it edits it, with eta > 0 it
    draws variations (one per noise seed); a forward-noised one with any sampler (SDEdit). One latent
    decoded under several conditions (a text diff at several θ) or several noise seeds is broadcast. From
    noise, a batch-1 noise with a batch of conditions gets one x_T per condition.
    """
    if latent is not None:
        if latent.inverted and settings.sampler != "ddim":
            raise InputValueError("sampler", "a DDIM-inverted latent is decoded with DDIM along its own timesteps; "
                                  f"set sampler to 'ddim' (got {settings.sampler!r})")
        b = max(latent.x.shape[0], guidance.batch(), noise.batch if noise is not None else 1)
        if latent.x.shape[0] not in (1, b):
            raise InputValueError("latent", f"latent batch {latent.x.shape[0]} vs condition/noise batch {b}")
        x, timesteps = latent.x.to(model.device).expand(b, -1, -1, -1), list(latent.timesteps)
        generator = (noise or NoiseSpec(0)).sampler_generator(model.device)
    elif noise is not None:
        b = noise.batch if noise.batch > 1 else guidance.batch()
        x, timesteps = noise.initial((3, model.image_size, model.image_size), model.device, count=b), None
        generator = noise.sampler_generator(model.device)
    else:
        raise InputValueError("noise", "connect a Noise node (or a latent from DDIMInvert)")
    out = run_denoiser(model, x, guidance, settings, generator=generator, callback=callback, timesteps=timesteps)
    return out.clamp(-1, 1)


@torch.no_grad()
def prior_from_noise(
    prior: DiffusionModel,
    text: Condition,
    noise: NoiseSpec,
    scale: float,
    settings: SamplerSettings,
    *,
    best_of: int = 1,
    guidance: Guidance | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """`sample_prior` with its batch, candidates' x_T and sampler noise drawn from a Noise."""
    x_T = noise.initial((prior.embed_dim,), prior.device, count=noise.batch * best_of)
    return sample_prior(prior, text, scale, settings, noise.batch, generator=noise.sampler_generator(prior.device),
                        callback=callback, best_of=best_of, guidance=guidance, x_T=x_T)


@torch.no_grad()
def inpaint_from_noise(
    model: DiffusionModel,
    image: Tensor,
    mask: Tensor,
    noise: NoiseSpec,
    guidance: Guidance,
    settings: SamplerSettings,
    **options,
) -> Tensor:
    """`inpaint` with x_T and the sampler noise drawn from a Noise (its batch broadcast with the images')."""
    size = model.image_size
    x_T = noise.initial((3, size, size), model.device)
    return inpaint(model, image, mask, guidance, settings, generator=noise.sampler_generator(model.device),
                   x_T=x_T, **options)


@torch.no_grad()
def noised_latent(model: DiffusionModel, image: Tensor, strength: float, settings: SamplerSettings,
                  noise: NoiseSpec) -> Latent:
    """SDEdit's start: the image (brought to the model's resolution) noised forward to t0 = strength·T, with
    the steps of `settings` from t0 down. strength 1 keeps nothing of the image but its noise seed; small
    strengths keep its layout and colours and let guidance change details."""
    if not 0.0 < strength <= 1.0:
        raise InputValueError("strength", f"{strength} is outside (0, 1]: the fraction of the noise schedule to add")
    x0 = fit_square(image.to(model.device), model.image_size)
    steps = settings.timesteps(model.diffusion.num_timesteps)
    t0 = min(steps[0], max(0, round(strength * model.diffusion.num_timesteps) - 1))
    timesteps = tuple(t for t in steps if t <= t0) or (t0,)
    eps = noise.initial(tuple(x0.shape[1:]), model.device, count=x0.shape[0])
    t = torch.full((x0.shape[0],), timesteps[0], dtype=torch.long, device=model.device)
    return Latent(model.diffusion.q_sample(x0, t, eps), timesteps, inverted=False)
