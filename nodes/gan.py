"""GAN nodes: StyleGAN2 loading and sampling, GAN inversion and pivotal tuning, StyleCLIP latent optimisation,
StyleGAN-NADA, and local rendering (an edit shown inside a region, the unedited render kept outside).

Each is a thin adapter over `nodegraph.generate` (gan_inversion, pivotal_tuning, styleclip, nada, clip_objective) and
`nodegraph.models.stylegan_checkpoint`. The long ones report every step with a preview, which is also
where an interrupt takes effect. An adapted generator is an ordinary GENERATOR output, so the engine
caches it like a loaded model and every downstream render or edit reuses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nodegraph import weights
from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.sockets import (
    CLASSIFIER,
    CLIP,
    CLIP_OBJECTIVE,
    GENERATOR,
    IMAGE,
    MASK,
    NOISE,
    NOISED_CLIP,
    TEXT_EMBED,
    W_LATENT,
)
from nodegraph.nodes._common import optimisation_callback

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.generate.clip_objective import ClipObjective
    from nodegraph.generate.conditions import NoiseSpec
    from nodegraph.models.clip import ClipModel, TextEncoding
    from nodegraph.models.stylegan import GanModel, StyleLatent

loader = lazy_import("nodegraph.models.loader")
stylegan = lazy_import("nodegraph.models.stylegan")
objective_lib = lazy_import("nodegraph.generate.clip_objective")
inversion = lazy_import("nodegraph.generate.gan_inversion")
pivotal = lazy_import("nodegraph.generate.pivotal_tuning")
styleclip = lazy_import("nodegraph.generate.styleclip")
nada = lazy_import("nodegraph.generate.nada")
gan_sampling = lazy_import("nodegraph.generate.gan_sampling")

_SEED = In("INT", default=0, min=0, max=2**63 - 1, description="seed of every random draw (views, noise)")


class StyleGANLoader(Node):
    """Loads a StyleGAN2 generator: the bundled Shapes World model, or a checkpoint in rosinality's layout
    (StyleCLIP's and StyleGAN-NADA's `.pt` files: `g_ema`, with `latent_avg` when present)."""

    category = "loaders"
    inputs = {"checkpoint": In("STRING", default="", description="file inside the models directory; empty = the "
                               "bundled generator")}
    outputs = (Out(GENERATOR, "generator"),)

    @classmethod
    def fingerprint(cls, ctx: RunContext, checkpoint: str | None = None, **_: Any) -> str:
        return "" if checkpoint is None else weights.fingerprint(weights.resolve(checkpoint, "stylegan"))

    def run(self, ctx: RunContext, checkpoint: str) -> tuple[GanModel]:
        return (loader.load("stylegan", checkpoint, ctx.device),)


class StyleGANSample(Node):
    """Samples latents from the generator's mapping network (one per noise seed and batch entry) and renders
    them; truncation pulls the codes toward the centre of W (cleaner, less varied)."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR),
        "noise": In(NOISE, description="seed and batch size"),
        "truncation": In("FLOAT", default=1.0, min=0.0, max=2.0, step=0.05,
                         description="1 = the trained distribution; below 1 nearer the mean image"),
    }
    outputs = (Out(W_LATENT, "latent"), Out(IMAGE, "images"))

    def run(self, ctx: RunContext, generator: GanModel, noise: NoiseSpec,
            truncation: float) -> tuple[StyleLatent, Tensor]:
        latent = gan_sampling.sample_latents(generator, noise.seed, noise.batch, truncation)
        return latent, generator.render(latent)


class StyleGANRender(Node):
    """Renders latents with a generator: e.g. an inverted image's latent with a StyleGAN-NADA generator."""

    category = "gan"
    inputs = {"generator": In(GENERATOR), "latent": In(W_LATENT)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, generator: GanModel, latent: StyleLatent) -> tuple[Tensor]:
        return (gan_sampling.render(generator, latent),)


class StyleGANBlendRender(Node):
    """A local edit: renders edited latents, keeping the unedited render (the reference latent, e.g. the inversion,
    by the reference generator, e.g. the pivotally tuned one) outside the edit region. The two renders' feature
    maps are blended under the region at every resolution from `blend_from` px up, so the edit cannot redraw what
    it was not asked to change and the finer layers blend the seam."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR, description="renders the edit (an adapted generator, or the reference itself)"),
        "latent": In(W_LATENT, description="the edited latents (a StyleCLIP edit, or the inversion for NADA)"),
        "reference_latent": In(W_LATENT, description="the unedited latents: one per edited latent, or one for all"),
        "edit_region": In(MASK, description="1 where the edit shows, 0 where the reference is kept (ObjectMask's "
                          "background for a background edit keeps the shape: docs/editing.md)"),
        "reference_generator": In(GENERATOR, optional=True, description="renders the reference (default: the "
                                  "generator); must share its architecture"),
        "blend_from": In("INT", default=16, min=1, max=4096, description="the coarsest resolution (px) whose maps "
                         "are blended: the image's own size is a plain composite; lower blends the seam more "
                         "smoothly and lets the reference hold more of the edit back"),
    }
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, generator: GanModel, latent: StyleLatent, reference_latent: StyleLatent,
            edit_region: Tensor, reference_generator: GanModel | None, blend_from: int) -> tuple[Tensor]:
        reference = reference_generator if reference_generator is not None else generator
        return (gan_sampling.render_keeping(generator, latent, reference, reference_latent, edit_region, blend_from),)


class GANInvert(Node):
    """GAN inversion by optimisation from the mean latent (StyleGAN2's projector): pixel MSE plus, with a
    classifier connected, a perceptual loss on its features, and regularised noise maps. Records the
    reconstruction PSNR of each image."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR),
        "images": In(IMAGE, description="images to invert (centre-cropped and resized to the generator's size)"),
        "classifier": In(CLASSIFIER, optional=True, description="perceptual features (the noisy classifier at "
                         "t = 0); without it, pixels only"),
        "space": In("STRING", default="w+", choices=("w", "w+"), description="one code for all layers (w) or one "
                    "per layer (w+: closer reconstructions, less regular edits)"),
        "steps": In("INT", default=300, min=1, max=2000, description="optimisation steps"),
        "lr": In("FLOAT", default=0.1, min=1e-4, max=1.0, description="peak learning rate (ramped up and down)"),
        "perceptual": In("FLOAT", default=1.0, min=0.0, max=100.0, description="weight of the feature loss"),
        "noise_regularize": In("FLOAT", default=1e4, min=0.0, max=1e7, description="weight of the noise maps' "
                               "autocorrelation penalty"),
        "seed": _SEED,
    }
    outputs = (Out(W_LATENT, "latent"), Out(IMAGE, "reconstruction"))

    def run(self, ctx: RunContext, generator: GanModel, images: Tensor, classifier, space: str, steps: int,
            lr: float, perceptual: float, noise_regularize: float, seed: int) -> tuple[StyleLatent, Tensor]:
        settings = inversion.InversionSettings(space=space, steps=steps, lr=lr, perceptual=perceptual,
                                               noise_regularize=noise_regularize)
        features = inversion.classifier_features(classifier) if classifier is not None else None
        latent, recon = inversion.invert(generator, images, settings, features=features,
                                         generator=ctx.generator(seed, "cpu"), callback=optimisation_callback(ctx))
        ctx.record(psnr=[round(float(v), 2) for v in gan_sampling.reconstruction_psnr(generator, images, recon)])
        return latent, recon


class GANPivotalTuning(Node):
    """Pivotal tuning (PTI): fine-tunes a copy of the generator's synthesis network so that it renders the
    inverted latents (the pivots) as the images themselves, closing the inversion's reconstruction gap while
    the latents stay where edits work. The tuned generator goes on to StyleCLIP or a render like any other.
    0 steps passes the generator through unchanged."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR),
        "latent": In(W_LATENT, description="the pivots: the inversion of these images"),
        "images": In(IMAGE, description="the images the pivots should render as"),
        "classifier": In(CLASSIFIER, optional=True, description="perceptual features (the noisy classifier at "
                         "t = 0); without it, pixels only"),
        "steps": In("INT", default=300, min=0, max=2000, description="tuning steps (0 = no tuning)"),
        "lr": In("FLOAT", default=1e-3, min=1e-6, max=0.1, description="Adam's learning rate"),
        "perceptual": In("FLOAT", default=1.0, min=0.0, max=100.0, description="weight of the feature loss"),
        "locality": In("FLOAT", default=0.0, min=0.0, max=100.0, description="weight of the term that keeps "
                       "codes away from the pivots rendering as before (0 = off)"),
        "seed": _SEED,
    }
    outputs = (Out(GENERATOR, "generator"), Out(IMAGE, "reconstruction"))

    def run(self, ctx: RunContext, generator: GanModel, latent: StyleLatent, images: Tensor, classifier,
            steps: int, lr: float, perceptual: float, locality: float, seed: int) -> tuple[GanModel, Tensor]:
        settings = pivotal.PivotalSettings(steps=steps, lr=lr, perceptual=perceptual, locality=locality)
        features = inversion.classifier_features(classifier) if classifier is not None else None
        tuned, recon = pivotal.tune(generator, latent, images, settings, features=features,
                                    generator=ctx.generator(seed, "cpu"), callback=optimisation_callback(ctx))
        ctx.record(psnr=[round(float(v), 2) for v in gan_sampling.reconstruction_psnr(generator, images, recon)])
        return tuned, recon


class CLIPObjective(Node):
    """The image-text loss CLIP-driven editors minimise (StyleCLIP, StyleGAN-NADA, DiffusionCLIP): CLIP and,
    when connected, the noised CLIP tower, over randomly shifted, zoomed and noised views of each image, so
    that only a real change of the image lowers it. views = 1 with no augmentation is plain CLIP."""

    category = "gan"
    inputs = {
        "clip": In(CLIP),
        "noised_clip": In(NOISED_CLIP, optional=True, description="second encoder into CLIP's text space (the "
                          "bundled noised CLIP tower), given forward-noised views"),
        "views": In("INT", default=8, min=1, max=64, description="augmented views per image and step"),
        "augment": In("BOOLEAN", default=True, description="random shift, zoom and pixel noise on every view"),
        "noised_weight": In("FLOAT", default=0.5, min=0.0, max=1.0, description="share of the noised tower"),
    }
    outputs = (Out(CLIP_OBJECTIVE, "objective"),)

    def run(self, ctx: RunContext, clip: ClipModel, noised_clip, views: int, augment: bool,
            noised_weight: float) -> tuple[ClipObjective]:
        return (objective_lib.objective_for(clip, noised_clip, views=views, augment=augment,
                                            noised_weight=noised_weight),)


class StyleCLIP(Node):
    """StyleCLIP latent optimisation: W+ (or, in S, the style vectors the chosen W+ entries feed) moved toward a
    caption by Adam (cosine learning-rate ramp), under the CLIP objective plus λ times the squared distance to the
    start latent (a sample or an inverted image)."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR),
        "latent": In(W_LATENT, description="the start: a sample or an inverted image"),
        "objective": In(CLIP_OBJECTIVE),
        "text": In(TEXT_EMBED, description="the caption the edited image should show"),
        "steps": In("INT", default=100, min=1, max=1000, description="latent optimisation steps"),
        "lr": In("FLOAT", default=0.1, min=1e-4, max=1.0, description="peak learning rate"),
        "l2_lambda": In("FLOAT", default=0.0005, min=0.0, max=10.0,
                        description="weight of the distance to the start latent (larger keeps more)"),
        "layers": In("STRING", default="all", description="W+ entries the edit may move, e.g. '5-7' (the bundled "
                     "generator's 32-px layers: colour) or '0,3,5-7'; 'all' = every entry"),
        "space": In("STRING", default="w+", choices=("w+", "s"), description="what moves: the W+ "
                    "entries, or (s) the style vectors of the convolutions they feed, channel by channel"),
        "seed": _SEED,
    }
    outputs = (Out(W_LATENT, "latent"), Out(IMAGE, "images"))

    def run(self, ctx: RunContext, generator: GanModel, latent: StyleLatent, objective: ClipObjective,
            text: TextEncoding, steps: int, lr: float, l2_lambda: float, layers: str, space: str,
            seed: int) -> tuple[StyleLatent, Tensor]:
        settings = styleclip.StyleCLIPSettings(steps=steps, lr=lr, l2_lambda=l2_lambda,
                                               layers=styleclip.parse_layers(layers), space=space)
        return styleclip.edit(generator, latent, objective, text, settings, generator=ctx.generator(seed, "cpu"),
                              callback=optimisation_callback(ctx))


class StyleGANNADA(Node):
    """StyleGAN-NADA: trains a copy of the generator so that its images differ from the original's as the
    target caption differs from the source caption (directional CLIP loss), k adaptively chosen layers per
    step. The new generator renders samples and inverted latents like the original."""

    category = "gan"
    inputs = {
        "generator": In(GENERATOR),
        "objective": In(CLIP_OBJECTIVE),
        "source": In(TEXT_EMBED, description="caption of what the generator draws now"),
        "target": In(TEXT_EMBED, description="caption of what it should draw instead"),
        "steps": In("INT", default=100, min=1, max=500, description="generator training steps"),
        "lr": In("FLOAT", default=0.002, min=1e-5, max=0.1),
        "layers": In("INT", default=4, min=0, max=64, description="styled convolutions trained per step, chosen "
                     "by a short latent optimisation (0 = all)"),
        "batch": In("INT", default=4, min=1, max=32, description="codes per step"),
        "trainable_layers": In("STRING", default="all", description="W+ entries whose convolutions may train, e.g. "
                               "'5-6' (the bundled generator's 32-px layers: colour); 'all' = every one"),
        "latent": In(W_LATENT, optional=True, description="latents of the images to be edited (an inversion), "
                     "trained on in every step beside the sampled codes"),
        "seed": _SEED,
    }
    outputs = (Out(GENERATOR, "generator"),)

    def run(self, ctx: RunContext, generator: GanModel, objective: ClipObjective, source: TextEncoding,
            target: TextEncoding, steps: int, lr: float, layers: int, batch: int, trainable_layers: str,
            latent: StyleLatent | None, seed: int) -> tuple[GanModel]:
        settings = nada.NadaSettings(steps=steps, lr=lr, layers=layers, batch=batch,
                                     trainable_layers=styleclip.parse_layers(trainable_layers, "trainable_layers"))
        return (nada.adapt(generator, objective, source, target, settings, pivots=latent,
                           generator=ctx.generator(seed, "cpu"), callback=optimisation_callback(ctx)),)
