"""The shared editing table: every text-driven editing method on the same held-out edits, scored the same way.

    python bench/editing.py                      # every row and the objective table (about an hour, 2-core CPU)
    python bench/editing.py --quick              # 4 edits per category, fewer steps
    python bench/editing.py --rows styleclip,ddim --n 12
    python bench/editing.py --only objective     # the CLIP objective's failure mode, before and after
    python bench/editing.py --edit-seed 90000,4242
                                                 # the set the settings were chosen on and one they were
                                                 # not: every row run once over both, a table per set
                                                 # and one over the sets (mean, worst and best)
    python bench/editing.py --only edits --rows "DiffusionCLIP GPU" --categories background --dclip tv=1.0,l1=0.1
                                                 # DiffusionCLIP's settings, one sweep point (DclipOptions)

Edits (`make_edits`): one-shape Shapes World scenes from a seed no training pool or evaluation uses, with
training-style jitter, so no method has seen the images. Four categories of `--n` edits each: colour (the
shape's colour), kind, background, and two attributes at once (colour and kind). The source images are
written as PNG files (`OUT/sources/`, with `edits.json`) and every method reads those files, so all rows
start from the same pixels; each row's edits are saved beside their sources in `OUT/edits/ROW_FILE`.

Per row and category:
- success: the scorer reads every changed attribute as the target caption says;
- preserved: the fraction of the other attributes (kind, colour, size, position, background minus the
  changed ones) the scorer still reads right;
- Δ outside: mean absolute pixel change (0-255, at 32 px) where the edit should leave the image alone:
  outside the shape's box for shape edits, the shape's own pixels for background edits;
- PSNR: the method's reconstruction of the source with no edit (GAN inversion; DDIM inversion decoded under
  the source caption); "-" where the method keeps the pixels by construction (inpainting);
- s/edit: wall time per edit, one-off set-up (a fine-tuning shared by all edits) in its own column.

Adding a method (the DiffusionCLIP rows, say) is one function: decorate it with `@row("name")`; it gets the
`Context` (edits, source images, models, quick flag, a cache shared between rows) and returns a `RowOutput`
(edited images, seconds spent on edits, one-off seconds, optional reconstruction PSNRs). Nothing else changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from nodegraph.engine.imageio import read_image, to_pil
from nodegraph.generate.clip_objective import PLAIN, ClipObjective, ObjectiveSettings
from nodegraph.models import loader
from nodegraph.models.resize import fit_square
from nodegraph.world.captions import caption
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import COLORS, KINDS, Scene, random_scenes

REPO = Path(__file__).resolve().parents[1]
EDIT_SEED = 90_000  # edit scenes: no training pool (seeds 0-10) or training-time evaluation (10 000-60 000) uses it
OBJECTIVE_SEED = 91_000  # the objective table's own scenes
CATEGORIES = ("colour", "kind", "background", "colour+kind")
CHANGED = {"colour": ("color",), "kind": ("kind",), "background": ("background",), "colour+kind": ("color", "kind")}
ATTRIBUTES = ("kind", "color", "size", "position", "background")
SIZE = 32  # every method edits at the base resolution


# ------------------------------------------------------------------------------------------------ edits
@dataclass(frozen=True)
class Edit:
    category: str
    source: Scene
    target: Scene
    file: str = ""
    edit_set: int = EDIT_SEED  # the seed the edit was drawn from (`--edit-seed`)

    @property
    def source_caption(self) -> str:
        return caption(self.source)

    @property
    def target_caption(self) -> str:
        return caption(self.target)


def _other(values: tuple[str, ...], avoid: set[str], gen: torch.Generator) -> str:
    choices = [v for v in values if v not in avoid]
    return choices[int(torch.randint(len(choices), (1,), generator=gen))]


def make_edits(n: int, seed: int = EDIT_SEED) -> list[Edit]:
    edits = []
    for k, category in enumerate(CATEGORIES):
        gen = torch.Generator().manual_seed(seed + 100 + k)
        for scene in random_scenes(n, seed + k, p_two=0.0, jitter=True):
            shape = scene.shapes[0]
            new_shape, background = shape, scene.background
            if "color" in CHANGED[category]:
                new_shape = replace(new_shape, color=_other(COLORS, {shape.color, scene.background}, gen))
            if "kind" in CHANGED[category]:
                new_shape = replace(new_shape, kind=_other(KINDS, {shape.kind}, gen))
            if category == "background":
                background = _other(COLORS, {scene.background, shape.color}, gen)
            edits.append(Edit(category, scene, Scene(background, (new_shape,)), edit_set=seed))
    return edits


def write_sources(edits: list[Edit], directory: Path) -> list[Edit]:
    """Render the sources at 64 px as PNG files (what every method reads) and a manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    images = to_model_range(render([e.source for e in edits], 64))
    out = []
    for i, (edit, picture) in enumerate(zip(edits, to_pil(images), strict=True)):
        name = f"{i:03d}_{edit.category.replace('+', '_')}.png"
        picture.save(directory / name)
        out.append(replace(edit, file=name))
    manifest = [{"file": e.file, "set": e.edit_set, "category": e.category, "source": e.source_caption,
                 "target": e.target_caption} for e in out]
    (directory / "edits.json").write_text(json.dumps(manifest, indent=1))
    return out


def read_sources(edits: list[Edit], directory: Path) -> torch.Tensor:
    return torch.cat([fit_square(read_image(directory / e.file)[0], SIZE) for e in edits]).clamp(-1, 1)


def edited_region(edits: list[Edit]) -> torch.Tensor:
    """[N, 1, 32, 32]: 1 where each edit may change pixels: the shape's box (2 px margin at 64) for shape
    edits, everything but the shape's box for background edits (what inpainting regenerates)."""
    from nodegraph.train.inpaint import shape_box_mask

    box = 1 - shape_box_mask([e.source for e in edits], SIZE)  # 1 inside the box
    background = torch.tensor([e.category == "background" for e in edits]).view(-1, 1, 1, 1)
    return torch.where(background, 1 - box, box)


def shape_coverage(edits: list[Edit]) -> torch.Tensor:
    """[N, 1, 32, 32]: how much of each pixel the source's shape covers (its colour's share against the
    background's, so anti-aliased edges read between 0 and 1)."""
    from nodegraph.world.scene import PALETTE

    src = render([e.source for e in edits], SIZE)
    bg = torch.tensor([PALETTE[e.source.background] for e in edits], dtype=torch.float32).view(-1, 3, 1, 1)
    shape = torch.tensor([PALETTE[e.source.shapes[0].color] for e in edits], dtype=torch.float32).view(-1, 3, 1, 1)
    return ((src - bg) * (shape - bg)).sum(1, keepdim=True) / (shape - bg).pow(2).sum(1, keepdim=True)


def kept_region(edits: list[Edit]) -> torch.Tensor:
    """[N, 1, 32, 32]: 1 where an edit must leave the image alone: outside the shape's box for shape edits;
    the shape itself (pixels at least half covered by it) for background edits, whose box corners are
    background and rightly change."""
    background = torch.tensor([e.category == "background" for e in edits]).view(-1, 1, 1, 1)
    return torch.where(background, (shape_coverage(edits) > 0.5).float(), 1 - edited_region(edits))


def recoloured_region(edits: list[Edit]) -> torch.Tensor:
    """[N, 1, 32, 32]: 1 where a background edit recolours the image as one: the pixels the shape does not touch
    (its anti-aliased edge is neither kept nor recoloured); empty for shape edits."""
    background = torch.tensor([e.category == "background" for e in edits]).view(-1, 1, 1, 1)
    return ((shape_coverage(edits) < 0.1) & background).float()


# ------------------------------------------------------------------------------------------------ rows
class Models:
    """Bundled models, loaded on first use."""

    def __init__(self) -> None:
        self._cache: dict[str, object] = {}

    def __getattr__(self, family: str):
        if family.startswith("_"):
            raise AttributeError(family)
        if family not in self._cache:
            model = loader.load(family)
            if isinstance(model, torch.nn.Module):
                model.requires_grad_(False)
            elif hasattr(model, "model"):  # ClipModel
                model.model.requires_grad_(False)
            self._cache[family] = model
        return self._cache[family]


@dataclass
class Context:
    edits: list[Edit]
    sources: torch.Tensor  # [N, 3, 32, 32] in [-1, 1], read from the files
    models: Models
    quick: bool
    seed: int = 0
    shared: dict[str, object] = field(default_factory=dict)  # results rows share (one GAN inversion for two rows)
    dclip: dict[str, DclipOptions] = field(default_factory=lambda: dclip_options("per-attribute", ""))

    def objective(self, plain: bool = False) -> ClipObjective:
        if plain:
            return ClipObjective.plain(self.models.clip)
        return ClipObjective(self.models.clip, self.models.noised_clip, ObjectiveSettings())


@dataclass
class RowOutput:
    images: torch.Tensor  # [N, 3, 32, 32] in [-1, 1], in the order of ctx.edits
    seconds: float  # spent on the edits themselves (inversion included), all of them
    setup_seconds: float = 0.0  # one-off work shared by every edit (a fine-tuning)
    psnr: torch.Tensor | None = None  # [N] reconstruction PSNR without an edit, where the method has one (NaN: none)
    categories: tuple[str, ...] = CATEGORIES  # the categories the row edits (the others are left out of its rows)
    # [N]: for each one-attribute edit, its fine-tuned model's success on that model's training renders (NaN: none)
    train_success: torch.Tensor | None = None


ROWS: dict[str, Callable[[Context], RowOutput]] = {}


def row(name: str) -> Callable[[Callable[[Context], RowOutput]], Callable[[Context], RowOutput]]:
    def register(fn: Callable[[Context], RowOutput]) -> Callable[[Context], RowOutput]:
        ROWS[name] = fn
        return fn

    return register


def gan_inversion(ctx: Context) -> tuple[object, torch.Tensor, float]:
    """The GAN-inverted latents of the sources (W+, perceptual + pixel loss), computed once for every GAN row."""
    if "gan_inversion" not in ctx.shared:
        from nodegraph.generate.gan_inversion import InversionSettings, classifier_features, invert, psnr

        gan = ctx.models.stylegan
        start = time.perf_counter()
        latent, recon = invert(gan, ctx.sources, InversionSettings(steps=100 if ctx.quick else 300),
                               features=classifier_features(ctx.models.classifier),
                               generator=torch.Generator().manual_seed(ctx.seed))
        ctx.shared["gan_inversion"] = (latent, psnr(recon, ctx.sources), time.perf_counter() - start)
    return ctx.shared["gan_inversion"]


def _styleclip(ctx: Context, plain: bool) -> RowOutput:
    from nodegraph.generate.styleclip import StyleCLIPSettings, edit

    latent, psnr, invert_seconds = gan_inversion(ctx)
    start = time.perf_counter()
    settings = StyleCLIPSettings(steps=40 if ctx.quick else 100)
    _, images = edit(ctx.models.stylegan, latent, ctx.objective(plain), [e.target_caption for e in ctx.edits],
                     settings, generator=torch.Generator().manual_seed(ctx.seed))
    return RowOutput(images, invert_seconds + time.perf_counter() - start, psnr=psnr)


@row("StyleCLIP (GAN-inverted, W+)")
def styleclip_row(ctx: Context) -> RowOutput:
    return _styleclip(ctx, plain=False)


@row("StyleCLIP, plain CLIP loss")
def styleclip_plain_row(ctx: Context) -> RowOutput:
    return _styleclip(ctx, plain=True)


# What the StyleCLIP edit may move after pivotal tuning, per category (the node's `layers`, `space`, `lr` and
# `l2_lambda`), from a sweep on the 12 colour and 12 background edits (docs/editing.md): colour lives in the bundled
# generator's 32-px layers (W+ 5-7), moved in S, channel by channel (on both edit sets more made and kept than
# moving the W+ entries: 0.917 / 0.812 and 0.750 / 0.667 against 0.833 / 0.708 and 0.417 / 0.625); a background
# edit keeps the coarse layout (W+ 0-1: the 4-px and the first 8-px convolution) and needs no pull back to the pivot.
STYLECLIP_PTI = {"colour": {"layers": (5, 6, 7), "space": "s", "lr": 0.05, "l2_lambda": 0.0},
                 "background": {"layers": (2, 3, 4, 5, 6, 7), "l2_lambda": 0.0}}


# The local rows (GAN and DiffusionCLIP): a background edit that keeps the source's shape, found from the source's own
# pixels (`generate.masks.object_mask`, the workflows' ObjectMask node, grown by GROUND_GROW px); the GAN rows blend
# the two renders' maps from KEEP_FROM px up. Shape edits are left out: their region (the shape, grown) kept less
# and made fewer edits than the plain GAN render on 12 colour edits of each set (docs/editing.md).
GROUND_GROW, KEEP_FROM = 0, 16


def background_regions(ctx: Context) -> torch.Tensor:
    """[N, 1, 32, 32]: 1 where each edit may change the image: everything but the source's shape."""
    from nodegraph.generate.masks import object_mask

    return 1 - object_mask(ctx.sources, grow=GROUND_GROW)


def pivotal_tuning(ctx: Context) -> tuple[list[object], list[object], torch.Tensor, float]:
    """Per source: its inverted latent and a copy of the generator tuned to render it as the source (PTI, one copy
    per image as in the paper), with the tuned reconstructions' PSNR and the seconds spent, inversion included;
    computed once for every row that edits after tuning."""
    if "pivotal_tuning" not in ctx.shared:
        from nodegraph.generate.gan_inversion import classifier_features, psnr
        from nodegraph.generate.pivotal_tuning import PivotalSettings, tune

        latent, _, invert_seconds = gan_inversion(ctx)
        features = classifier_features(ctx.models.classifier)
        start = time.perf_counter()
        pivots, tuned, recons = [], [], []
        for i in range(len(ctx.edits)):
            one = latent.item(i)
            gan, recon = tune(ctx.models.stylegan, one, ctx.sources[i : i + 1], PivotalSettings(), features=features,
                              generator=torch.Generator().manual_seed(ctx.seed + i))
            pivots.append(one)
            tuned.append(gan)
            recons.append(recon)
        seconds = invert_seconds + time.perf_counter() - start
        ctx.shared["pivotal_tuning"] = (pivots, tuned, psnr(torch.cat(recons), ctx.sources), seconds)
    return ctx.shared["pivotal_tuning"]


def styleclip_pti_edits(ctx: Context) -> tuple[list[tuple[object, object]], torch.Tensor, float]:
    """Per edit: (the generator tuned to its image, the StyleCLIP-edited latent), the tuned reconstructions' PSNR
    and the seconds spent; computed once for the plain and the local row."""
    if "styleclip_pti" not in ctx.shared:
        from nodegraph.generate.styleclip import StyleCLIPSettings, edit

        pivots, tuned, psnr, tune_seconds = pivotal_tuning(ctx)
        objective, steps = ctx.objective(), 40 if ctx.quick else 100
        start = time.perf_counter()
        edits = []
        for i, e in enumerate(ctx.edits):
            settings = StyleCLIPSettings(steps=steps, **STYLECLIP_PTI.get(e.category, {}))
            latent, _ = edit(tuned[i], pivots[i], objective, [e.target_caption], settings,
                             generator=torch.Generator().manual_seed(ctx.seed + i))
            edits.append((tuned[i], latent))
        ctx.shared["styleclip_pti"] = (edits, psnr, tune_seconds + time.perf_counter() - start)
    return ctx.shared["styleclip_pti"]


@row("StyleCLIP after pivotal tuning (PTI, per image)")
def styleclip_pti_row(ctx: Context) -> RowOutput:
    """The inversion above as the pivot, the generator tuned to render it as the source, then a StyleCLIP edit
    (`STYLECLIP_PTI`) rendered by that generator; PSNR is the tuned reconstruction's."""
    edits, psnr, seconds = styleclip_pti_edits(ctx)
    return RowOutput(torch.cat([gan.render(latent) for gan, latent in edits]), seconds, psnr=psnr)


@row(f"StyleCLIP after PTI, local (the shape kept from {KEEP_FROM} px)")
def styleclip_local_row(ctx: Context) -> RowOutput:
    """The background edits of the row above rendered with the pivot's render kept on the shape
    (`background_regions`; `gan_sampling.render_keeping`)."""
    from nodegraph.generate.gan_sampling import render_keeping

    edits, psnr, seconds = styleclip_pti_edits(ctx)
    pivots, regions = pivotal_tuning(ctx)[0], background_regions(ctx)
    start = time.perf_counter()
    images = ctx.sources.clone()
    for i, (gan, latent) in enumerate(edits):
        if ctx.edits[i].category == "background":
            images[i : i + 1] = render_keeping(gan, latent, gan, pivots[i], regions[i : i + 1], KEEP_FROM)
    return RowOutput(images, seconds + time.perf_counter() - start, psnr=psnr, categories=("background",))


# NADA after pivotal tuning, per category (the node's `trainable_layers`, `lr` and `latent`), from a sweep on 12
# colour and 12 background edits (docs/editing.md): colour in the 32-px convolutions (W+ 5-6), a background in the
# 16- and 32-px ones (3-5); the pivot in every step's batch; lr 10x the paper's (at 0.002 nothing flips).
NADA_PTI = {"colour": {"trainable_layers": (5, 6)}, "background": {"trainable_layers": (3, 4, 5)}}
NADA_PTI_LR = 0.02


def nada_pti_edits(ctx: Context) -> tuple[list[object], torch.Tensor, float]:
    """Per edit, the generator tuned to its image and then adapted by NADA with the image's pivot trained on beside
    the sampled codes (`NADA_PTI`); PSNR and seconds as `styleclip_pti_edits`."""
    if "nada_pti" not in ctx.shared:
        from nodegraph.generate.nada import NadaSettings, adapt

        pivots, tuned, psnr, tune_seconds = pivotal_tuning(ctx)
        objective = ctx.objective()
        start = time.perf_counter()
        adapted = []
        for i, e in enumerate(ctx.edits):
            settings = NadaSettings(steps=20 if ctx.quick else 80, lr=NADA_PTI_LR, **NADA_PTI.get(e.category, {}))
            adapted.append(adapt(tuned[i], objective, e.source_caption, e.target_caption, settings,
                                 pivots=pivots[i], generator=torch.Generator().manual_seed(ctx.seed + i)))
        ctx.shared["nada_pti"] = (adapted, psnr, tune_seconds + time.perf_counter() - start)
    return ctx.shared["nada_pti"]


@row("StyleGAN-NADA after pivotal tuning (pivot in the batch)")
def nada_pti_row(ctx: Context) -> RowOutput:
    """Each edit's adapted generator renders the image's pivot."""
    adapted, psnr, seconds = nada_pti_edits(ctx)
    pivots = pivotal_tuning(ctx)[0]
    return RowOutput(torch.cat([gan.render(pivots[i]) for i, gan in enumerate(adapted)]), seconds, psnr=psnr)


@row(f"StyleGAN-NADA after PTI, local (the shape kept from {KEEP_FROM} px)")
def nada_local_row(ctx: Context) -> RowOutput:
    """The row above's background edits with the tuned generator's render of the pivot kept on the shape (as the
    StyleCLIP local row)."""
    from nodegraph.generate.gan_sampling import render_keeping

    adapted, psnr, seconds = nada_pti_edits(ctx)
    pivots, tuned = pivotal_tuning(ctx)[:2]
    regions = background_regions(ctx)
    start = time.perf_counter()
    images = ctx.sources.clone()
    for i, gan in enumerate(adapted):
        if ctx.edits[i].category == "background":
            images[i : i + 1] = render_keeping(gan, pivots[i], tuned[i], pivots[i], regions[i : i + 1], KEEP_FROM)
    return RowOutput(images, seconds + time.perf_counter() - start, psnr=psnr, categories=("background",))


@row("StyleGAN-NADA (per edit)")
def nada_row(ctx: Context) -> RowOutput:
    from nodegraph.generate.nada import NadaSettings, adapt

    latent, psnr, invert_seconds = gan_inversion(ctx)
    gan, objective = ctx.models.stylegan, ctx.objective()
    settings = NadaSettings(steps=20 if ctx.quick else 80)
    start = time.perf_counter()
    images = []
    for i, e in enumerate(ctx.edits):
        adapted = adapt(gan, objective, e.source_caption, e.target_caption, settings,
                        generator=torch.Generator().manual_seed(ctx.seed + i))
        one = latent.item(i)
        images.append(adapted.render(one))
    return RowOutput(torch.cat(images), invert_seconds + time.perf_counter() - start, psnr=psnr)


@row("DDIM inversion, regenerated under the target caption (CFG 2)")
def ddim_row(ctx: Context) -> RowOutput:
    from nodegraph.generate.conditions import Condition, Guidance
    from nodegraph.generate.gan_inversion import psnr
    from nodegraph.generate.sampling import SamplerSettings, invert, run_denoiser

    decoder, clip = ctx.models.decoder, ctx.models.clip
    source = clip.encode_text([e.source_caption for e in ctx.edits])
    target = clip.encode_text([e.target_caption for e in ctx.edits])
    settings = SamplerSettings(steps=25 if ctx.quick else 50)
    start = time.perf_counter()
    x_T, ts = invert(decoder, ctx.sources, Condition(text=source), settings)
    images = run_denoiser(decoder, x_T, Guidance.cfg(Condition(text=target), 2.0), settings, timesteps=ts)
    seconds = time.perf_counter() - start
    recon = run_denoiser(decoder, x_T, Guidance.cfg(Condition(text=source), 1.0), settings, timesteps=ts)
    return RowOutput(images.clamp(-1, 1), seconds, psnr=psnr(recon.clamp(-1, 1), ctx.sources))


@row("GLIDE inpainting of the edited region (CFG 3)")
def inpaint_row(ctx: Context) -> RowOutput:
    from nodegraph.generate.conditions import Condition, Guidance
    from nodegraph.generate.sampling import SamplerSettings, inpaint

    model, clip = ctx.models.inpaint, ctx.models.clip
    target = clip.encode_text([e.target_caption for e in ctx.edits])
    start = time.perf_counter()
    images = inpaint(model, ctx.sources, edited_region(ctx.edits), Guidance.cfg(Condition(text=target), 3.0),
                     SamplerSettings(steps=25 if ctx.quick else 50), generator=torch.Generator().manual_seed(ctx.seed),
                     method="model")
    return RowOutput(images, time.perf_counter() - start)


@row("CLIP-guided editing (SDEdit to 0.6 T, noised CLIP, scale 5000)")
def clip_guided_row(ctx: Context) -> RowOutput:
    """workflows/clip_guided_edit.json's defaults: forward-noise to t0 = 0.6 T, then the unconditional decoder
    steered by the noised CLIP tower toward the target caption."""
    from nodegraph.generate.conditions import ClipTerm, Guidance, NoiseSpec
    from nodegraph.generate.sampling import SamplerSettings, decode, noised_latent

    decoder = ctx.models.decoder
    target = ctx.models.clip.encode_text([e.target_caption for e in ctx.edits]).embed
    settings = SamplerSettings(steps=25 if ctx.quick else 50)
    noise = NoiseSpec(ctx.seed, len(ctx.edits))
    start = time.perf_counter()
    latent = noised_latent(decoder, ctx.sources, 0.6, settings, noise)
    guidance = Guidance(clip=ClipTerm("noised", ctx.models.noised_clip, target, 5000.0))
    images = decode(decoder, guidance, settings, latent=latent, noise=noise)
    return RowOutput(images, time.perf_counter() - start)


# DiffusionCLIP: one decoder fine-tuned per attribute value the edits ask for ("colour -> blue", "kind ->
# square", ...), on training renders of their own (DCLIP_TRAIN_SEED: none of the edits' scenes), then every edit
# made by inverting its source to t0 and regenerating it with the model of its target value. Two-attribute edits
# mix the colour and the kind model (multi-attribute editing). The fine-tunings are shared by every edit: the
# set-up column, not s/edit.
DCLIP_TRAIN_SEED = 92_000
DCLIP_ITERATIONS = {"full": 20, "efficient": 10}  # --quick; twice as many otherwise. efficient updates 6x per iteration
DCLIP_INVERT_STEPS = 20
DCLIP_VIEWS = 4  # views of the CLIP objective per image and step (the other rows' 8 would double the fine-tuning)


def _condition_value(value: str) -> str:
    value = {"0": "none", "1": "source"}.get(value.lower(), value.lower())  # the earlier tables' condition=0/1
    if value not in ("none", "source", "target"):
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class DclipOptions:
    """The DiffusionCLIP rows' settings, `--dclip KEY=VALUE,...` to sweep them (renders and iterations: 0 = the
    quick / full default; iterations are the GPU-efficient variant's, the full variant takes twice as many)."""

    t0: int = 400
    generate_steps: int = 6
    l1: float = 0.5
    tv: float = 0.0  # weight of the change's total variation (generate/diffusionclip.py)
    lr: float = 1e-4
    renders: int = 0  # training renders per fine-tuned model: 6 quick, 8 otherwise
    iterations: int = 0
    # what the decoder is conditioned on while it regenerates: nothing (its unconditional mode), each image's
    # source caption, or its target caption (then inverted under the source caption, whose latent reproduces it)
    condition: str = "none"
    keep: float = 0.0  # weight of the change where the training render must stay (kept_region); 0 = no such term
    uniform: float = 0.0  # weight of the change's spread where a background edit recolours (recoloured_region)
    edit_steps: int = 0  # DDIM steps when editing; 0 = generate_steps, the chain the model was fine-tuned on
    guidance: float = 1.0  # classifier-free guidance scale of the edit (the condition against unconditional)

    @property
    def steps_editing(self) -> int:
        return self.edit_steps or self.generate_steps

    @classmethod
    def parse(cls, text: str) -> DclipOptions:
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key not in fields:
                raise SystemExit(f"--dclip: unknown setting {key!r}; known: {', '.join(fields)}")
            kind = {"int": int, "float": float, "str": _condition_value}[fields[key]]
            try:
                values[key] = kind(value)
            except ValueError:
                expected = "none, source or target" if key == "condition" else fields[key]
                raise SystemExit(f"--dclip {key}={value!r}: expected {expected}") from None
        return cls(**values)

    def describe(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return ", ".join(changed) or "defaults"


# The settings each attribute's models are fine-tuned and used with, the best measured one change at a time
# (docs/editing.md's sweep tables: 12 held-out edits of that category each, `--quick`). Colour: generating under
# the target caption from t0 750, tuned at lr 1e-5 and edited with guidance 2 (over four edit sets 0.979 made /
# 0.977 kept, against 0.917 / 0.901 for t0 250 under the source caption, whose fine-tuning redrew crosses as blobs;
# the same decoder untuned at these settings makes 0.802: docs/editing.md, twenty-second session); kind: the most
# structure to change, so t0 400 under strong L1, and twice the
# training renders (more varied sources for the same compute: 0.667 against 0.625 on 24 edits), generating under
# the target caption (0.708 on 24; a two-attribute mix runs under its kind model's condition: 0.083 -> 0.417
# made on colour+kind; since the colour models generate under it too, a mix runs from their t0 750: 0.833), and
# editing with classifier-free guidance 1.5 toward that caption (0.625 -> 0.708 made on the set 4242, 0.500 ->
# 0.667 on its colour+kind edits; 2.0 the same success, docs/editing.md); background: the
# whole image changes colour, so no global L1 but the `keep` term on the shape and the `uniform` term on the rest
# (a shape grown into the new background is not in the keep term's reach: 0.938 -> 0.979 preserved), and four
# times the quick setting's iterations (40: 1.000 / 0.938 on 24 edits against 0.875 / 0.917 with 20). Colour
# keeps the quick setting's 10 iterations at the full setting too (20 made and kept less on 24 edits: 0.958 /
# 0.917 against 1.000 / 0.948). Colour and background models edit with 20 DDIM steps, the
# inversion's count, though fine-tuned with 10 (the same models kept 2 more of 96 checks on 24 edits each; kind
# lost 2, so it edits with its 10).
DCLIP_PER_ATTRIBUTE = {
    "color": "t0=750,l1=1.0,lr=1e-5,renders=16,condition=target,generate_steps=10,edit_steps=20,iterations=10,"
             "guidance=2",
    "kind": "t0=400,l1=1.0,renders=32,condition=target,generate_steps=10,guidance=1.5",
    "background": "l1=0.0,tv=0.3,keep=2.0,uniform=2.0,renders=16,condition=1,generate_steps=10,iterations=40,"
                  "edit_steps=20",
}
DCLIP_PRESETS = ("per-attribute", "uniform")  # uniform: DclipOptions' own defaults for all (the earliest tables)


def dclip_options(preset: str, overrides: str) -> dict[str, DclipOptions]:
    """Attribute -> settings: the preset's, then `--dclip`'s KEY=VALUE overrides on top of each."""
    base = DCLIP_PER_ATTRIBUTE if preset == "per-attribute" else dict.fromkeys(DCLIP_PER_ATTRIBUTE, "")
    return {attr: DclipOptions.parse(f"{text},{overrides}") for attr, text in base.items()}


def edit_options(ctx: Context, changes: tuple[tuple[str, str], ...]) -> DclipOptions:
    """The settings an edit runs under: its model's, or for a mix the one with the highest t0 (the layout
    change the kind model makes needs its start; the colour model still acts in the steps below its own t0),
    whose condition every mixed model generates under."""
    return max((ctx.dclip[attr] for attr, _ in changes), key=lambda o: (o.t0, o.generate_steps))


def dclip_settings(variant: str, ctx: Context, o: DclipOptions):
    from nodegraph.generate.diffusionclip import FinetuneSettings

    # full: measured on colour -> blue (8 renders): lr 3e-4 wrecks the images (success 0.25, preserved 0.47),
    # 3e-5 barely edits (0.5 / 0.375 held out); 1e-4 between. It updates once per iteration, so it gets twice the
    # iterations at half the batch: the same network calls as the efficient variant
    if o.iterations:  # set for this attribute: the same at either setting
        iterations = o.iterations * DCLIP_ITERATIONS[variant] // DCLIP_ITERATIONS["efficient"]
    else:
        iterations = DCLIP_ITERATIONS[variant] * (1 if ctx.quick else 2)
    return FinetuneSettings(t0=o.t0, invert_steps=DCLIP_INVERT_STEPS, generate_steps=o.generate_steps,
                            iterations=iterations, batch=2 if variant == "full" else 4, lr=o.lr, l1_weight=o.l1,
                            tv_weight=o.tv, keep_weight=o.keep, uniform_weight=o.uniform,
                            variant=variant)


def dclip_conditions(ctx: Context, o: DclipOptions, edits: list[Edit]):
    """(inversion condition, generation condition) of these edits' images under the settings: None is the
    decoder's unconditional mode."""
    from nodegraph.generate.conditions import Condition

    def of(captions: list[str]) -> Condition:
        return Condition(text=ctx.models.clip.encode_text(captions))

    if o.condition == "none":
        return None, None
    source = of([e.source_caption for e in edits])
    return source, (source if o.condition == "source" else of([e.target_caption for e in edits]))


def _changes(edit: Edit) -> list[tuple[str, str]]:
    """(attribute, value) per changed attribute: the fine-tuned models an edit needs."""
    shape, target = edit.source.shapes[0], edit.target.shapes[0]
    out = []
    if shape.color != target.color:
        out.append(("color", target.color))
    if shape.kind != target.kind:
        out.append(("kind", target.kind))
    if edit.source.background != edit.target.background:
        out.append(("background", edit.target.background))
    return out


def _changed(scene: Scene, attribute: str, value: str) -> Scene:
    shape = scene.shapes[0]
    if attribute == "background":
        return Scene(value, scene.shapes)
    return Scene(scene.background, (replace(shape, **{attribute: value}),))


def dclip_training_scenes(attribute: str, value: str, n: int) -> list[Scene]:
    """One-shape renders for which the change is a change and leaves a valid scene (shape colour != background),
    from a seed of their own per model."""
    def fits(scene: Scene) -> bool:
        shape = scene.shapes[0]
        if attribute == "color":
            return shape.color != value and scene.background != value
        if attribute == "kind":
            return shape.kind != value
        return scene.background != value and shape.color != value

    values = KINDS if attribute == "kind" else COLORS
    seed = DCLIP_TRAIN_SEED + 1000 * ("color", "kind", "background").index(attribute) + values.index(value)
    return [s for s in random_scenes(4 * n, seed, p_two=0.0, jitter=True) if fits(s)][:n]


def dclip_models(ctx: Context, variant: str) -> dict[tuple[str, str], tuple[object, float, float]]:
    """(attribute, value) -> (fine-tuned decoder, fine-tuning seconds, success on its own training renders);
    fine-tuned once per variant and shared by the rows that use it."""
    from nodegraph.generate import diffusionclip as D

    key = f"dclip_{variant}"
    if key in ctx.shared:
        return ctx.shared[key]
    decoder = ctx.models.decoder
    objective = ClipObjective(ctx.models.clip, ctx.models.noised_clip, ObjectiveSettings(views=DCLIP_VIEWS))
    models = {}
    for attribute, value in sorted({c for e in ctx.edits for c in _changes(e)}):
        o = ctx.dclip[attribute]
        settings = dclip_settings(variant, ctx, o)
        scenes = dclip_training_scenes(attribute, value, o.renders or (6 if ctx.quick else 8))
        images = to_model_range(render(scenes, SIZE))
        print(f"[editing]   {variant}: {attribute} -> {value} ({len(scenes)} training renders)", file=sys.stderr,
              flush=True)
        category = {"color": "colour", "kind": "kind", "background": "background"}[attribute]
        train_edits = [Edit(category, s, _changed(s, attribute, value)) for s in scenes]
        inverted_under, condition = dclip_conditions(ctx, o, train_edits)
        keep = kept_region(train_edits) if o.keep else None
        uniform = recoloured_region(train_edits) if o.uniform else None
        start = time.perf_counter()
        latents = D.invert(decoder, images, settings.t0, settings.invert_steps, inverted_under)
        tuned = D.finetune(decoder, objective, images, [e.source_caption for e in train_edits],
                           [e.target_caption for e in train_edits], settings, condition=condition,
                           latents=latents, keep=keep, uniform=uniform,
                           generator=torch.Generator().manual_seed(ctx.seed))
        seconds = time.perf_counter() - start
        own = D.edit(decoder, tuned, images, t0=settings.t0, invert_steps=settings.invert_steps,
                     generate_steps=o.steps_editing, condition=condition, latents=latents, guidance_scale=o.guidance)
        models[(attribute, value)] = (tuned, seconds, sum(_successes(train_edits, own)) / len(scenes))
    ctx.shared[key] = models
    return models


def _dclip(ctx: Context, variant: str, schedule=None, only: tuple[str, ...] = (),
           regions: torch.Tensor | None = None) -> RowOutput:
    from nodegraph.generate import diffusionclip as D
    from nodegraph.generate.gan_inversion import psnr

    models = dclip_models(ctx, variant)
    decoder = ctx.models.decoder
    images, recon = ctx.sources.clone(), ctx.sources.clone()
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(ctx.edits):
        if not only or e.category in only:
            groups.setdefault(tuple(_changes(e)), []).append(i)
    seconds = 0.0
    for changes, idx in groups.items():  # one batch per model (or pair of models)
        o = edit_options(ctx, changes)
        kwargs = {"t0": o.t0, "invert_steps": DCLIP_INVERT_STEPS, "generate_steps": o.steps_editing}
        tuned = [models[c][0] for c in changes]
        inverted_under, condition = dclip_conditions(ctx, o, [ctx.edits[i] for i in idx])
        start = time.perf_counter()
        latents = D.invert(decoder, ctx.sources[idx], o.t0, DCLIP_INVERT_STEPS, inverted_under)
        images[idx] = D.edit(decoder, tuned, ctx.sources[idx], schedule=schedule if len(tuned) > 1 else None,
                             condition=condition, latents=latents, guidance_scale=o.guidance,
                             edit_region=None if regions is None else regions[idx], **kwargs)
        seconds += time.perf_counter() - start
        # the reconstruction: the original decoder regenerating the same latents under the source condition
        recon[idx] = D.edit(decoder, decoder, ctx.sources[idx], condition=inverted_under, latents=latents, **kwargs)
    done = [i for idx in groups.values() for i in idx]
    used = {c for changes in groups for c in changes}
    # success of each edit's model on its own training renders, averaged like the held-out edits
    train = torch.full((len(ctx.edits),), float("nan"))
    for i, e in enumerate(ctx.edits):
        if e.category != "colour+kind" and e.category in (only or CATEGORIES):
            [change] = _changes(e)
            train[i] = models[change][2]
    psnrs = torch.full((len(ctx.edits),), float("nan"))  # NaN: an edit this row leaves to another
    psnrs[done] = psnr(recon[done], ctx.sources[done])
    return RowOutput(images, seconds, sum(models[c][1] for c in used), psnrs, categories=only or CATEGORIES,
                     train_success=train)


@row("DiffusionCLIP full (backprop through the generative chain)")
def dclip_full_row(ctx: Context) -> RowOutput:
    return _dclip(ctx, "full")


@row("DiffusionCLIP GPU-efficient (an update per step)")
def dclip_efficient_row(ctx: Context) -> RowOutput:
    return _dclip(ctx, "efficient")


@row("DiffusionCLIP GPU-efficient, local (the shape kept)")
def dclip_local_row(ctx: Context) -> RowOutput:
    """The row above's background models editing only outside the source's shape (`background_regions`): after
    every step the shape's pixels are put back on the image's own inversion path (`diffusionclip.edit`'s
    `edit_region`)."""
    return _dclip(ctx, "efficient", only=("background",), regions=background_regions(ctx))


@row("DiffusionCLIP multi-attribute, scheduled (kind model above 0.2 T, colour model below)")
def dclip_multi_row(ctx: Context) -> RowOutput:
    """The GPU-efficient colour and kind models (their row mixes them equally at every step) with a time
    schedule instead: the kind model while the layout forms, the colour model at the end."""
    return _dclip(ctx, "efficient", schedule=[(1.0, 0.2), (0.2, 0.0)], only=("colour+kind",))


# ------------------------------------------------------------------------------------------------ scoring
def score_edits(edits: list[Edit], sources: torch.Tensor, images: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per category: success, preserved, Δ outside (see the module docstring)."""
    from nodegraph.world.scorer import read_scenes, score_parsed

    report: dict[str, dict[str, float]] = {}
    scenes = read_scenes(images.float().cpu().clamp(-1, 1))
    keep_mask = kept_region(edits)
    delta = ((images.float().cpu() - sources.float().cpu()).abs() * 127.5).mean(1, keepdim=True)
    for category in CATEGORIES:
        idx = [i for i, e in enumerate(edits) if e.category == category]
        if not idx:
            continue
        success, kept, outside = [], [], []
        for i in idx:
            checks = {c.attribute: c.correct for c in score_parsed(scenes[i], edits[i].target_caption).checks}
            changed = CHANGED[category]
            success.append(all(checks.get(a, False) for a in changed))
            others = [checks.get(a, False) for a in ATTRIBUTES if a not in changed]
            kept.append(sum(others) / len(others))
            keep = keep_mask[i]
            outside.append(float((delta[i] * keep).sum() / keep.sum().clamp(min=1)))
        report[category] = {"success": sum(success) / len(idx), "preserved": sum(kept) / len(idx),
                            "outside": sum(outside) / len(idx)}
    return report


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def row_slug(name: str) -> str:
    """A row's file prefix: the whole name, since rows share first words (three DiffusionCLIP rows overwrote
    each other's saved edits when only the first was used)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def editing_table(ctx: Context, names: list[str], out: Path) -> None:
    results = []
    for name in names:
        print(f"[editing] {name} ...", file=sys.stderr, flush=True)
        result = ROWS[name](ctx)
        report = score_edits(ctx.edits, ctx.sources, result.images)
        results.append((name, result, report))
        grid = torch.cat([ctx.sources, result.images.float().cpu()], dim=3)  # source | edit, side by side
        for picture, e in zip(to_pil(grid), ctx.edits, strict=True):
            picture.save(out / "edits" / f"{row_slug(name)}_{e.file}")
    n = len(ctx.edits)
    sets = list(dict.fromkeys(e.edit_set for e in ctx.edits))  # in the order given
    by_set: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (row, category) -> per set (made, kept)
    for edit_set in sets:
        idx = [i for i, e in enumerate(ctx.edits) if e.edit_set == edit_set]
        edits = [ctx.edits[i] for i in idx]
        reports = [(name, result, score_edits(edits, ctx.sources[idx], result.images[idx]))
                   for name, result, _ in results]
        chosen_on = " (the set the rows' settings were chosen on)" if edit_set == EDIT_SEED else \
            " (no setting was chosen on it)"
        where = f"; edit set {edit_set}{chosen_on}" if len(sets) > 1 or edit_set != EDIT_SEED else ""
        rows = []
        for name, result, report in reports:
            psnr = "-" if result.psnr is None or result.psnr[idx].isnan().all() else \
                f"{float(result.psnr[idx].nanmean()):.1f}"
            for category, r in report.items():
                if category not in result.categories:
                    continue
                by_set.setdefault((name, category), []).append((r["success"], r["preserved"]))
                rows.append([name, category, r["success"], r["preserved"], round(r["outside"], 1), psnr,
                             round(result.seconds / n, 2), round(result.setup_seconds, 1)])
        per = len(edits) // len({e.category for e in edits})
        table(f"Edits on held-out images ({per} per category{where}; success and preservation read by the scorer)",
              ["method", "edit", "success", "preserved", "Δ outside (0-255)", "inversion PSNR dB", "s/edit",
               "set-up s"], rows)
        gaps = []
        for name, result, report in reports:
            for category in ("colour", "kind", "background"):
                if result.train_success is None or category not in report:
                    continue
                own = result.train_success[[i for i in idx if ctx.edits[i].category == category]]
                if not own.isnan().all():
                    train, held_out = float(own.nanmean()), report[category]["success"]
                    gaps.append([name, category, train, held_out, round(train - held_out, 3)])
        if gaps:
            table(f"Fine-tuned once, then used on images it never saw{where}: success on its training renders "
                  "against the held-out edits above",
                  ["method", "edit", "success on training renders", "success held out", "gap"], gaps)
    if len(sets) > 1:
        across_sets_table(by_set, sets)


def across_sets_table(by_set: dict[tuple[str, str], list[tuple[float, float]]], sets: list[int]) -> None:
    """Each row over every edit set: the mean and the worst and best set, so that a setting is judged by its
    spread rather than by the set it was chosen on (the sets are the same size, so the mean is over all edits)."""
    def spread(values: list[float]) -> str:
        return f"{min(values):.3f}-{max(values):.3f}"

    rows = []
    for (name, category), results in by_set.items():
        made, kept = [r[0] for r in results], [r[1] for r in results]
        rows.append([name, category, sum(made) / len(made), spread(made), sum(kept) / len(kept), spread(kept)])
    table(f"Over the {len(sets)} edit sets ({', '.join(map(str, sets))}): mean, and the worst and best set",
          ["method", "edit", "success", "success range", "preserved", "preserved range"], rows)

# ------------------------------------------------------------------------------------------------ objective
def objective_table(models: Models, quick: bool, seed: int) -> None:
    """The failure mode and its remedy: optimise the pixels of held-out renders toward an edited caption
    under each objective (the freest optimiser there is, as a fine-tuned decoder is), then compare the loss
    reached with the loss of the true target render, and both with the scorer's reading."""
    n = 4 if quick else 12
    steps = 30 if quick else 80
    edits = [e for e in make_edits(n, OBJECTIVE_SEED) if e.category in ("colour", "kind")]
    src = to_model_range(render([e.source for e in edits], SIZE))
    tgt = to_model_range(render([e.target for e in edits], SIZE))
    caps = [e.target_caption for e in edits]
    clip, noised = models.clip, models.noised_clip
    variants = {
        "plain CLIP (1 view)": ClipObjective(clip, None, PLAIN),
        "CLIP, 8 augmented views": ClipObjective(clip, None, ObjectiveSettings(noised_weight=0.0)),
        "noised CLIP alone (8 noised views)": ClipObjective(clip, noised, ObjectiveSettings(
            shift=0.0, zoom=0.0, pixel_noise=0.0, noised_weight=1.0)),
        "CLIP + noised CLIP, 8 augmented views (chosen)": ClipObjective(clip, noised, ObjectiveSettings()),
        "... and views resampled down to 0.5 of the side (blur)": ClipObjective(clip, noised, ObjectiveSettings(
            resample=0.5)),
    }
    rows = []
    for name, obj in variants.items():
        print(f"[objective] {name} ...", file=sys.stderr, flush=True)
        delta = torch.zeros_like(src, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=0.02)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            loss = obj.text_loss((src + delta).clamp(-1, 1), caps, gen).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[delta])
            opt.step()
        x = (src + delta).clamp(-1, 1).detach()

        def judged(images: torch.Tensor, obj: ClipObjective = obj) -> torch.Tensor:
            with torch.no_grad():
                return obj.text_loss(images, caps, torch.Generator().manual_seed(seed + 1))

        final, truth = judged(x), judged(tgt)
        report = score_edits(edits, src, x)
        succeeded = torch.tensor(_successes(edits, x))
        fooled = (final <= truth) & ~succeeded
        rows.append([name, float(judged(src).mean()), float(final.mean()), float(truth.mean()),
                     report["colour"]["success"], report["kind"]["success"], float(fooled.float().mean()),
                     round(float((x - src).abs().mean() * 127.5), 1)])
    table(f"CLIP objective under a pixel-space attack ({len(edits)} held-out colour and kind edits, Adam on the "
          f"pixels, {steps} steps): loss against the scorer's reading",
          ["objective", "loss: source", "loss: optimised", "loss: true target render", "colour edits read",
           "kind edits read", "fooled (loss <= target render's, edit not read)", "mean abs. Δ (0-255)"], rows)


def _successes(edits: list[Edit], images: torch.Tensor) -> list[bool]:
    from nodegraph.world.scorer import read_scenes, score_parsed

    out = []
    for e, parsed in zip(edits, read_scenes(images.float().cpu().clamp(-1, 1)), strict=True):
        checks = {c.attribute: c.correct for c in score_parsed(parsed, e.target_caption).checks}
        out.append(all(checks.get(a, False) for a in CHANGED[e.category]))
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 edits per category, fewer optimisation steps")
    ap.add_argument("--n", type=int, help="edits per category (default 12, quick 4)")
    ap.add_argument("--rows", default="", help="comma-separated row name prefixes (default: every row)")
    ap.add_argument("--only", default="", help="'edits' or 'objective' (default: both)")
    ap.add_argument("--categories", default="", help="comma-separated edit categories to run (default: all): "
                    + ",".join(CATEGORIES))
    ap.add_argument("--dclip", default="", help="DiffusionCLIP rows' settings, KEY=VALUE,... of: "
                    + ", ".join(f.name for f in dataclasses.fields(DclipOptions))
                    + " (condition: none, source or target); applied on top of each attribute's preset")
    ap.add_argument("--dclip-preset", choices=DCLIP_PRESETS, default=DCLIP_PRESETS[0],
                    help="per-attribute: each attribute's measured settings (DCLIP_PER_ATTRIBUTE); uniform: "
                    "DclipOptions' defaults for every attribute")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--edit-seed", default=str(EDIT_SEED),
                    help=f"seed of the edits' scenes (default {EDIT_SEED}, the set the rows' settings were chosen "
                    "on; another seed reports them on edits no setting saw, e.g. 4242 in docs/editing.md); several, "
                    "comma-separated, run every row once over all the sets (one fine-tuning) and print a table per set "
                    "and one over the sets (mean, worst and best)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "editing")
    args = ap.parse_args(argv)
    # before any work: a typo should not cost the objective table's minutes
    dclip = dclip_options(args.dclip_preset, args.dclip)
    wanted = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
    names = [name for name in ROWS if not wanted or any(name.lower().startswith(w) for w in wanted)]
    if not names:
        ap.error(f"--rows: no row's name starts with {args.rows!r}; rows: " + "; ".join(ROWS))
    torch.set_num_threads(args.threads)
    models = Models()
    if args.only in ("", "objective"):
        objective_table(models, args.quick, args.seed)
    if args.only in ("", "edits"):
        n = args.n or (4 if args.quick else 12)
        wanted_categories = [c.strip() for c in args.categories.split(",") if c.strip()]
        unknown = sorted(set(wanted_categories) - set(CATEGORIES))
        if unknown:
            ap.error(f"--categories: unknown {', '.join(unknown)}; known: {', '.join(CATEGORIES)}")
        try:
            edit_seeds = list(dict.fromkeys(int(part) for part in args.edit_seed.split(",") if part.strip()))
        except ValueError:
            ap.error(f"--edit-seed: {args.edit_seed!r} is not a seed or a comma-separated list of seeds")
        if not edit_seeds:
            ap.error("--edit-seed: name at least one seed")
        edits = [e for seed in edit_seeds for e in make_edits(n, seed)
                 if not wanted_categories or e.category in wanted_categories]
        edits = write_sources(edits, args.out / "sources")
        (args.out / "edits").mkdir(parents=True, exist_ok=True)
        ctx = Context(edits, read_sources(edits, args.out / "sources"), models, args.quick, args.seed,
                      dclip=dclip)
        for attribute, o in ctx.dclip.items():
            print(f"[editing] DiffusionCLIP settings, {attribute}: {o.describe()}", file=sys.stderr, flush=True)
        editing_table(ctx, names, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
