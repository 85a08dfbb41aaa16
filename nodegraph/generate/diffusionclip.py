"""DiffusionCLIP (Kim et al. 2022): edit images by fine-tuning the reverse process toward a target text.

    source image x0 --DDIM inversion (original model)--> x_t0 --DDIM, fine-tuned model--> edited image

1. The source images are DDIM-inverted to a middle level t0 with the original decoder, once, before the
   fine-tuning (`invert`); every iteration starts from these latents.
2. A copy of the decoder is fine-tuned so that the images it regenerates from those latents differ from the
   sources as the target caption differs from the source caption: the directional CLIP loss (image change
   against text change, the text change averaged over caption templates) plus an L1 term to the source,
   which keeps what the text does not mention, and optionally the total variation of the change, which lets
   a whole region be recoloured (a background) but not speckled or repainted (docs/editing.md: background
   edits 0.417 -> 0.833 success and 0.750 -> 0.854 preserved, with L1 0.1 and the source caption), and
   optionally the mean change inside a region each training image must keep (`keep`: the shape, for a
   background edit; with it L1 can be 0 and background edits keep every attribute: docs/editing.md), and
   optionally the spread of the change inside a region that must be recoloured as one (`uniform`: the
   background), which a shape grown or a speck left in the new background breaks while the keep term on the
   shape's own pixels cannot see it.
   - "full": the loss on the final image of the short generative chain, backpropagated through every step
     (optionally with gradient checkpointing per step);
   - "efficient" (the paper's GPU-efficient variant): at every step of the chain the loss is taken on that
     step's predicted x̂0 and the model updated at once; the chain then moves on with the step detached, so
     gradients flow through one network call at a time and memory does not grow with the steps.
3. Editing any image with a fine-tuned model (`edit`): invert with the original model, regenerate with the
   fine-tuned one. No training per image: a model fine-tuned once edits images it never saw.
4. Multi-attribute editing: the noise predictions of several fine-tuned models combined at every step with
   time-dependent weights (`edit(..., models=[a, b], schedule=...)`).
5. Unseen-domain mode: the start x_t0 is the image noised forward stochastically (not inverted), so an image
   unlike the training data is pulled into the fine-tuned model's domain.

The decoder runs unconditionally (its null condition: any image, no caption needed) or conditioned on each
source image's caption. The CLIP loss is the project's `ClipObjective` (augmented views and the noised-CLIP
ensemble), which the 32-px CLIP cannot satisfy with specks and tints the way a single CLIP forward can.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nodegraph.diffusion import guidance as G
from nodegraph.diffusion.gaussian import ddim_update
from nodegraph.diffusion.inversion import ddim_invert
from nodegraph.errors import InputValueError
from nodegraph.generate.clip_objective import ClipObjective
from nodegraph.generate.conditions import Condition, Guidance
from nodegraph.generate.sampling import condition_tensors, guided_model_fn
from nodegraph.models.clip import TextEncoding
from nodegraph.models.diffusion_model import DiffusionModel
from nodegraph.models.resize import fit_square

Text = str | Sequence[str]
Callback = Callable[[int, int, Tensor], object]  # (iteration, total, preview images); raising stops

# Caption templates the text direction is averaged over: the caption itself and a few wordings around it,
# so the direction is that of the attribute that changed, not of one phrasing.
TEMPLATES = ("{}", "a picture of {}", "an image of {}", "{}, a drawing")
VARIANTS = ("full", "efficient")


@dataclass(frozen=True)
class FinetuneSettings:
    t0: int = 500  # the level the sources are inverted to and regenerated from (of the model's T)
    invert_steps: int = 20  # DDIM steps from the image to x_t0
    generate_steps: int = 6  # DDIM steps from x_t0 back to the image, in fine-tuning and editing
    iterations: int = 20  # passes over one batch of sources
    batch: int = 4  # source images per iteration
    lr: float = 1e-4  # Adam
    clip_weight: float = 1.0  # directional CLIP loss
    l1_weight: float = 0.3  # mean |edited - source| (images in [-1, 1])
    tv_weight: float = 0.0  # total variation of the change edited - source: specks and smears, not a region recoloured
    keep_weight: float = 1.0  # mean |edited - source| inside `keep`, the region the edit must leave alone (if given)
    uniform_weight: float = 1.0  # spread of the change inside `uniform`, a region recoloured as one (if given)
    variant: str = "full"  # "full" or "efficient"
    grad_checkpoint: bool = False  # recompute each step's activations in the backward pass (full variant)
    templates: tuple[str, ...] = field(default=TEMPLATES)

    def check(self, num_timesteps: int) -> None:
        if not 1 <= self.t0 < num_timesteps:
            raise InputValueError("t0", f"{self.t0} is not a level of this model's schedule; use 1 ... "
                                  f"{num_timesteps - 1} (about 0.3-0.6 of it keeps the layout)")
        for name in ("invert_steps", "generate_steps"):
            steps = getattr(self, name)
            if not 1 <= steps <= self.t0:
                raise InputValueError(name, f"{steps} steps do not fit between 0 and t0 = {self.t0}; "
                                      f"use 1 ... {self.t0}")
        if self.iterations < 1 or self.batch < 1:
            raise InputValueError("iterations", "fine-tuning needs at least one iteration of at least one image")
        if self.lr <= 0:
            raise InputValueError("lr", f"the learning rate must be positive, got {self.lr}")
        for name in ("clip_weight", "l1_weight", "tv_weight", "keep_weight", "uniform_weight"):
            if not getattr(self, name) >= 0:  # NaN too
                raise InputValueError(name, f"a loss weight must be 0 or more, got {getattr(self, name)}")
        if self.variant not in VARIANTS:
            raise InputValueError("variant", f"unknown variant {self.variant!r}; use {' or '.join(VARIANTS)}")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise InputValueError("templates", "every caption template must contain {} where the caption goes")


def chain(t0: int, steps: int) -> list[int]:
    """`steps` descending timesteps from t0, evenly spaced, the last at t0 / steps (DDIM then goes to x0)."""
    return [round(t0 * (steps - i) / steps) for i in range(steps)]


# ------------------------------------------------------------------------------------------------ text
def text_direction(objective: ClipObjective, source: TextEncoding | Text, target: TextEncoding | Text,
                   templates: Sequence[str] = TEMPLATES) -> Tensor:
    """Unit directions [B or 1, D] from source to target captions (one pair, or one per image), each the mean
    over templates of the normalised difference of the templated captions' embeddings. A TextEncoding is
    read by its captions; one without them (an embedding from elsewhere) is used as it is, untemplated."""
    sources, targets = _captions(source), _captions(target)
    if not isinstance(sources, list) or not isinstance(targets, list):
        return F.normalize(objective.text_embeddings(target) - objective.text_embeddings(source), dim=-1)
    if len(sources) != len(targets) and 1 not in (len(sources), len(targets)):
        raise InputValueError("target", f"{len(sources)} source captions and {len(targets)} target captions; "
                              "give one of each, or one per image")
    total = 0.0
    for template in templates:
        s = objective.text_embeddings([template.format(c) for c in sources])
        t = objective.text_embeddings([template.format(c) for c in targets])
        total = total + F.normalize(t - s, dim=-1)
    return F.normalize(total, dim=-1)


def _captions(text: TextEncoding | Text) -> list[str] | TextEncoding:
    """Caption strings of a text input, or the encoding itself when it carries none."""
    if isinstance(text, TextEncoding):
        return list(text.prompts) if len(text.prompts) in (1, text.embed.shape[0]) else text
    return [text] if isinstance(text, str) else list(text)


def change_variation(change: Tensor) -> Tensor:
    """Per image [B]: mean absolute difference between neighbouring pixels of a change map [B, C, H, W]. A region
    recoloured as a whole (a background, a shape) varies only along its outline; specks and a repainted shape
    vary everywhere, so this preserves structure where L1 would forbid the recolouring itself."""
    dx = (change[..., :, 1:] - change[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (change[..., 1:, :] - change[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def change_spread(change: Tensor, region: Tensor) -> Tensor:
    """Per image [B]: mean absolute distance of a change map [B, C, H, W] from its own mean inside `region`
    [B, 1, H, W] (weights in [0, 1]). 0 when the region is recoloured as one, whatever the colour; a shape grown
    into the region, or specks left in it, are far from the mean change. An empty region adds 0."""
    weights = region.flatten(2)  # [B, 1, HW]
    values = change.flatten(2)  # [B, C, HW]
    total = weights.sum(2)  # [B, 1]
    mean = (values * weights).sum(2, keepdim=True) / total.clamp(min=1e-6).unsqueeze(2)
    spread = ((values - mean).abs() * weights).sum((1, 2))
    return spread / (total.squeeze(1) * values.shape[1]).clamp(min=1e-6)


# ------------------------------------------------------------------------------------------------ model calls
def _model_fn(model: DiffusionModel, condition: Condition | None, batch: int) -> G.ModelFn:
    """model(x_t, t) under one fixed condition (None: the null condition, the decoder's unconditional mode)."""
    length = condition.text.tokens.shape[1] if condition is not None and condition.text is not None else 1
    # detached: a caption encoded with gradients on (outside the engine) would otherwise tie every iteration's
    # backward pass to one text-encoder graph, freed after the first
    cond = {k: v.detach() if isinstance(v, Tensor) else v
            for k, v in condition_tensors(model, condition or Condition(), batch, length).items()}
    net = model.net
    return lambda x, t: net(x, t, **cond)


def _condition_rows(condition: Condition | None, index: Tensor) -> Condition | None:
    """The condition of the images at `index` (a batch-1 condition applies to every image)."""
    if condition is None or condition.text is None or condition.text.embed.shape[0] == 1:
        return condition
    t = condition.text
    text = TextEncoding(t.embed[index], t.tokens[index], t.mask[index], tuple(t.prompts[int(i)] for i in index)
                        if len(t.prompts) == t.embed.shape[0] else t.prompts)
    return Condition(text=text, image_embed=None if condition.image_embed is None else condition.image_embed[index])


def _step(model_fn: G.ModelFn, diffusion, x: Tensor, t: int, s: int) -> tuple[Tensor, Tensor]:
    """One DDIM step t -> s (s = -1: the clean image): (x_s, x̂0)."""
    tb = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0, eps = diffusion.denoise(model_fn(x, tb), x, t, clip_denoised=True)
    return ddim_update(x0, eps, diffusion.abar(t, x), diffusion.abar(s, x)), x0


@torch.no_grad()
def invert(model: DiffusionModel, images: Tensor, t0: int, steps: int, condition: Condition | None = None) -> Tensor:
    """x_t0 of images (brought to the model's resolution) by DDIM inversion with `model`."""
    FinetuneSettings(t0=t0, invert_steps=steps, generate_steps=1).check(model.diffusion.num_timesteps)
    images = fit_square(images.to(model.device).float(), model.image_size)
    model_fn = _model_fn(model, condition, images.shape[0])
    return ddim_invert(model.diffusion, model_fn, images, chain(t0, steps))


def noise_forward(model: DiffusionModel, images: Tensor, t0: int, generator: torch.Generator | None = None) -> Tensor:
    """x_t0 of images by the stochastic forward process (the unseen-domain start)."""
    images = fit_square(images.to(model.device).float(), model.image_size)
    eps = torch.randn(images.shape, generator=generator).to(images)
    return model.diffusion.q_sample(images, t0, eps)


# ------------------------------------------------------------------------------------------------ fine-tuning
def finetune(
    model: DiffusionModel,
    objective: ClipObjective,
    images: Tensor,
    source: TextEncoding | Text,
    target: TextEncoding | Text,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    condition: Condition | None = None,
    latents: Tensor | None = None,
    keep: Tensor | None = None,
    uniform: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> DiffusionModel:
    """A copy of `model` fine-tuned so that the images it regenerates from the sources' x_t0 show the edit
    from `source` to `target` captions (one pair for all images, or one per image). `model` is untouched.

    `condition` (None = unconditional) is what the decoder sees, in inversion, fine-tuning and later edits:
    the source captions, say. `keep` [N, 1, H, W] in [0, 1] marks where each training image must stay as it is
    (the shape when the background changes, say: known for renders, like the identity a face editor keeps); its
    mean change there is added with `keep_weight`. `uniform` [N, 1, H, W] in [0, 1] marks where the change must be
    one colour (the background, when it changes): the spread of the change there is added with `uniform_weight`.
    `latents` are the sources' x_t0 when already inverted
    (`invert`); the random batches and CLIP views are drawn from `generator`. `callback(iteration, total,
    images)` is called after every iteration with the regenerated batch; an exception it raises (an interrupt)
    ends the fine-tuning.
    """
    settings.check(model.diffusion.num_timesteps)
    diffusion = model.diffusion
    sources = fit_square(images.to(model.device).float(), model.image_size).clamp(-1, 1)
    n = sources.shape[0]
    if n == 0:
        raise InputValueError("images", "fine-tuning needs at least one source image")
    direction = text_direction(objective, source, target, settings.templates)
    if direction.shape[0] not in (1, n):
        raise InputValueError("source", f"{direction.shape[0]} caption pairs for {n} images; give one or {n}")
    direction = direction.expand(n, -1)
    keep, uniform = (_region(name, mask, n, model) for name, mask in (("keep", keep), ("uniform", uniform)))
    if latents is None:
        latents = invert(model, sources, settings.t0, settings.invert_steps, condition)
    elif latents.shape != sources.shape:
        raise InputValueError("latents", f"latents {tuple(latents.shape)} do not match the images "
                              f"{tuple(sources.shape)}")

    net = copy.deepcopy(model.net).float()
    net.requires_grad_(True)
    tuned = DiffusionModel(model.kind, net, diffusion, model.spec, dict(model.meta))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    ts = chain(settings.t0, settings.generate_steps)
    pairs = list(zip(ts, [*ts[1:], -1], strict=True))

    def loss_of(edited: Tensor, index: Tensor) -> Tensor:
        clip = objective.image_direction_loss(sources[index], edited, direction[index], generator)
        change = edited - sources[index]
        l1 = change.abs().flatten(1).mean(1)
        loss = settings.clip_weight * clip + settings.l1_weight * l1
        if settings.tv_weight:
            loss = loss + settings.tv_weight * change_variation(change)
        if keep is not None:
            region = keep[index]
            kept = (change.abs() * region).flatten(1).sum(1) / (region.flatten(1).sum(1) * change.shape[1]).clamp(min=1)
            loss = loss + settings.keep_weight * kept
        if uniform is not None:
            loss = loss + settings.uniform_weight * change_spread(change, uniform[index])
        return loss.mean()

    for it in range(settings.iterations):
        index = torch.randperm(n, generator=generator)[: settings.batch] if n > settings.batch else torch.arange(n)
        model_fn = _model_fn(tuned, _condition_rows(condition, index), len(index))
        x = latents[index].to(model.device)
        if settings.variant == "full":
            for t, s in pairs:
                if settings.grad_checkpoint:
                    x = checkpoint(lambda x, f=model_fn, t=t, s=s: _step(f, diffusion, x, t, s)[0], x,
                                   use_reentrant=False)
                else:
                    x = _step(model_fn, diffusion, x, t, s)[0]
            opt.zero_grad(set_to_none=True)
            loss_of(x, index).backward()
            opt.step()
            preview = x.detach()
        else:  # efficient: one network call in the graph at a time, an update per step on that step's x̂0
            for t, s in pairs:
                x_next, x0 = _step(model_fn, diffusion, x.detach(), t, s)
                opt.zero_grad(set_to_none=True)
                loss_of(x0, index).backward()
                opt.step()
                x = x_next.detach()
            preview = x
        if callback is not None:
            callback(it + 1, settings.iterations, preview.clamp(-1, 1))
    net.requires_grad_(False)
    net.eval()
    tuned.meta["diffusionclip"] = (f"{_first(source)!r} -> {_first(target)!r}, "
                                   f"{settings.variant}, t0 {settings.t0}, {settings.iterations} iterations")
    return tuned


def _region(name: str, mask: Tensor | None, n: int, model: DiffusionModel) -> Tensor | None:
    """A per-image mask [N, 1, H, W] brought to the model's resolution, values in [0, 1]."""
    if mask is None:
        return None
    if mask.dim() != 4 or mask.shape[0] != n or mask.shape[1] != 1:
        raise InputValueError(name, f"a {name} mask must be [N, 1, H, W] for {n} images, got {tuple(mask.shape)}")
    return fit_square(mask.to(model.device).float(), model.image_size).clamp(0, 1)


def _first(text: TextEncoding | Text) -> str:
    captions = _captions(text)
    return captions[0] if isinstance(captions, list) and captions else "<embedding>"


# ------------------------------------------------------------------------------------------------ editing
def _inversion_path(model: DiffusionModel, images: Tensor, ts: list[int], condition: Condition | None,
                    region: Tensor, batch: int) -> tuple[Tensor, dict[int, Tensor]]:
    """(the edit region at the model's resolution, {timestep: the images' DDIM inversion at it}, -1: the images)."""
    size = model.image_size
    if region.dim() != 4 or region.shape[1] != 1 or region.shape[0] not in (1, batch):
        raise InputValueError("edit_region", f"expected a mask [1 or {batch}, 1, H, W], got {tuple(region.shape)}")
    region = fit_square(region.to(model.device).float().clamp(0, 1), size)  # cropped as the images are
    clean = fit_square(images.to(model.device).float(), size)
    path = {-1: clean}

    def record(k: int, n: int, x: Tensor, x0: Tensor) -> None:
        path[ts[n - k]] = x  # the k-th inversion step reaches ts[n - k] (walking the chain from its end)

    ddim_invert(model.diffusion, _model_fn(model, condition, clean.shape[0]), clean, ts, callback=record)
    return region, path


def schedule_weights(n_models: int, timesteps: Sequence[int], num_timesteps: int,
                     schedule: Sequence[tuple[float, float]] | None) -> Tensor:
    """[steps, models] weights summing to 1 per step. `schedule` gives each model the span of noise levels
    (as fractions of T, high to low, e.g. (1.0, 0.5)) where its noise prediction counts; a step that no span
    covers averages all models. None: every model everywhere, equally."""
    if schedule is not None and len(schedule) != n_models:
        raise InputValueError("schedule", f"{len(schedule)} spans for {n_models} models; give one per model")
    rows = []
    for t in timesteps:
        frac = t / num_timesteps
        on = [1.0] * n_models if schedule is None else [float(lo <= frac <= hi) for hi, lo in schedule]
        if sum(on) == 0:
            on = [1.0] * n_models
        rows.append([w / sum(on) for w in on])
    return torch.tensor(rows)


@torch.no_grad()
def edit(
    original: DiffusionModel,
    models: DiffusionModel | Sequence[DiffusionModel],
    images: Tensor,
    *,
    t0: int = 500,
    invert_steps: int = 20,
    generate_steps: int = 6,
    condition: Condition | None = None,
    latents: Tensor | None = None,
    schedule: Sequence[tuple[float, float]] | None = None,
    mode: str = "invert",
    edit_region: Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Edited images: x_t0 from `original` (mode "invert": DDIM inversion; "noise": the stochastic forward
    process, for images unlike the training data), then DDIM with the fine-tuned model(s), several models'
    predictions mixed by `schedule_weights`. Needs no training: any image, any number of times. `latents`: the
    images' x_t0 when already computed (an inversion under another condition than the one the models generate
    under, say), in place of `mode`'s. `edit_region` [B or 1, 1, H, W] (1 = the edit shows) makes the edit local:
    after every step, outside the region x is put back on the images' own DDIM-inversion path at that step
    (the original model under `condition`, on the generative chain), so what is kept stays the image and the
    model fills the region to fit it, as a latent blend. `guidance_scale` > 1 applies classifier-free guidance to
    each fine-tuned model, `condition` against its own unconditional mode (1: none): the caption the model
    generates under then counts for more than the inverted latent's pull back to the source (kind edits under the
    target caption, measured in docs/editing.md)."""
    models = [models] if isinstance(models, DiffusionModel) else list(models)
    if not models:
        raise InputValueError("decoder", "connect at least one fine-tuned decoder")
    if not 0.0 <= guidance_scale <= 50.0:  # NaN too
        raise InputValueError("guidance_scale", f"{guidance_scale} is out of range; use 0 ... 50 (1: no guidance)")
    if guidance_scale != 1.0 and (condition is None or (condition.text is None and condition.image_embed is None)):
        raise InputValueError("guidance_scale", "guidance needs a caption to guide toward: give a `condition` "
                              "(the edit nodes' condition 'source' or 'target', with that caption connected), or "
                              "set guidance_scale to 1")
    FinetuneSettings(t0=t0, invert_steps=invert_steps, generate_steps=generate_steps).check(
        original.diffusion.num_timesteps)
    for m in models:
        if m.image_size != original.image_size or m.diffusion.num_timesteps != original.diffusion.num_timesteps:
            raise InputValueError("decoder", "the fine-tuned decoder must come from the same decoder as the original "
                                  f"({original.image_size} px, T = {original.diffusion.num_timesteps})")
    if latents is not None:
        if latents.shape[0] != images.shape[0] or latents.shape[-1] != original.image_size:
            raise InputValueError("latents", f"latents {tuple(latents.shape)} do not match {images.shape[0]} images "
                                  f"at the model's {original.image_size} px")
        x = latents.to(original.device).float()
    elif mode == "invert":
        x = invert(original, images, t0, invert_steps, condition)
    elif mode == "noise":
        x = noise_forward(original, images, t0, generator)
    else:
        raise InputValueError("mode", f"unknown start {mode!r}; use 'invert' (DDIM inversion) or 'noise' (forward)")
    ts = chain(t0, generate_steps)
    weights = schedule_weights(len(models), ts, original.diffusion.num_timesteps, schedule).to(x)
    fns = [_model_fn(m, condition, x.shape[0]) if guidance_scale == 1.0 else
           guided_model_fn(m, Guidance.cfg(condition, guidance_scale), x.shape[0]) for m in models]
    kept = _inversion_path(original, images, ts, condition, edit_region, x.shape[0]) if edit_region is not None \
        else None

    def mixed(i: int) -> G.ModelFn:
        # a convex mix of the models' outputs; the ε (and x̂0) a v- or ε-output implies is linear in it
        return lambda x, t: sum(w * fn(x, t) for w, fn in zip(weights[i], fns, strict=True) if w > 0)

    for i, (t, s) in enumerate(zip(ts, [*ts[1:], -1], strict=True)):
        x, _ = _step(mixed(i), original.diffusion, x, t, s)
        if kept is not None:
            region, path = kept
            x = torch.lerp(path[s], x, region)
        if callback is not None:
            callback(i + 1, len(ts), x.clamp(-1, 1))
    return x.clamp(-1, 1)
