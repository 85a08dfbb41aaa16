"""Nodes for the released checkpoints: GLIDE, guided-diffusion (ADM) with its classifiers, Karlo, OpenAI CLIP.

Loaders offer the files found in the models folders (`nodegraph.weights`: the user models directory's
checkpoints/, upscale_models/, clip/, classifiers/, tokenizers/ and the folders extra_model_paths.yaml adds)
beside the released file names, as a combo. Which files exist is machine state, so the choices are listed
when asked (`DynamicChoices`) and a chosen file is checked by the loader's fingerprint, when the workflow is
validated and before every run: an absent one is a `model_not_found` issue saying where to put it.

Samplers are thin adapters over `nodegraph.generate.glide`, `.adm` and `.karlo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from nodegraph import weights
from nodegraph.engine.context import RunContext
from nodegraph.engine.lazy import lazy_import
from nodegraph.engine.node import DynamicChoices, In, Node, Out
from nodegraph.engine.sockets import (
    ADM_CLASSIFIER,
    ADM_MODEL,
    CLIP,
    GLIDE_INPAINT_MODEL,
    GLIDE_INPAINT_UPSAMPLER,
    GLIDE_MODEL,
    GLIDE_UPSAMPLER,
    IMAGE,
    KARLO_DECODER,
    KARLO_IMAGE_EMBED,
    KARLO_PRIOR,
    KARLO_SR,
    MASK,
    NOISE,
    TEXT_EMBED,
)
from nodegraph.errors import InputValueError
from nodegraph.nodes._common import progress_callback

if TYPE_CHECKING:
    from torch import Tensor

    from nodegraph.generate.conditions import NoiseSpec
    from nodegraph.models.clip import ClipModel, TextEncoding
    from nodegraph.models.real import RealModel

installed = lazy_import("nodegraph.models.installed")
released = lazy_import("nodegraph.generate.released")
glide = lazy_import("nodegraph.generate.glide")
adm = lazy_import("nodegraph.generate.adm")
karlo = lazy_import("nodegraph.generate.karlo")


def _files(kind: str, description: str) -> In:
    default = weights.RELEASED[kind].names[0]
    choices = DynamicChoices(lambda: weights.released_choices(kind), weights.valid_model_name)
    return In("STRING", default=default, choices=choices, description=description)


_DTYPE = In("STRING", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
            description="weights' precision: auto = fp16 on CUDA (the released use_fp16), fp32 on the CPU")
_OPTIONS = In("STRING", default="", description="config fields the file's shapes cannot tell, key=value separated by "
              "commas, e.g. num_head_channels=64, use_new_attention_order=true (released files need none)")


class _ReleasedLoader(Node):
    """Shared by the loaders below: find the files, fingerprint them, load onto the run's device."""

    category = "loaders/released"
    kind: ClassVar[str] = ""
    files: ClassVar[tuple[tuple[str, str], ...]] = ()  # (input, weights.RELEASED kind) of every file input

    @classmethod
    def fingerprint(cls, ctx: RunContext, **constants: Any) -> str | None:
        parts, missing = [], []
        for input_name, kind in cls.files:
            name = constants.get(input_name)
            if name is None:
                return None  # the name arrives over a link: only the run can tell
            try:
                parts.append(weights.model_fingerprint(weights.find_released(kind, name, input_name)))
            except InputValueError as exc:
                missing.append(exc)
        if missing:
            # Every absent file at once, blamed on the first: a user installing models wants the whole list.
            first = missing[0]
            raise InputValueError(first.input, "; ".join(e.message for e in missing), first.code)
        return "|".join(parts)

    def run(self, ctx: RunContext, checkpoint: str, dtype: str = "auto", options: str = "",
            **files: str) -> tuple[Any]:
        return (installed.load_installed(self.kind, checkpoint, ctx.device, dtype=dtype, options=options, **files),)


class GLIDELoader(_ReleasedLoader):
    """Loads GLIDE's 64x64 text-to-image model (base.pt) and its caption vocabulary."""

    kind = "glide_base"
    files = (("checkpoint", "glide_base"), ("vocab", "glide_vocab"))
    inputs = {"checkpoint": _files("glide_base", "a file in checkpoints/"),
              "vocab": _files("glide_vocab", "the folder in tokenizers/ holding encoder.json.gz and vocab.bpe.gz"),
              "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(GLIDE_MODEL, "model"),)


class GLIDEUpsamplerLoader(_ReleasedLoader):
    """Loads GLIDE's 64->256 upsampler (upsample.pt) and its caption vocabulary."""

    kind = "glide_upsample"
    files = (("checkpoint", "glide_upsample"), ("vocab", "glide_vocab"))
    inputs = {"checkpoint": _files("glide_upsample", "a file in upscale_models/"),
              "vocab": GLIDELoader.inputs["vocab"], "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(GLIDE_UPSAMPLER, "upsampler"),)


class GLIDEInpaintLoader(_ReleasedLoader):
    """Loads GLIDE's 64x64 inpainting model (base_inpaint.pt) and its caption vocabulary."""

    kind = "glide_inpaint"
    files = (("checkpoint", "glide_inpaint"), ("vocab", "glide_vocab"))
    inputs = {"checkpoint": _files("glide_inpaint", "a file in checkpoints/"),
              "vocab": GLIDELoader.inputs["vocab"], "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(GLIDE_INPAINT_MODEL, "model"),)


class GLIDEInpaintUpsamplerLoader(_ReleasedLoader):
    """Loads GLIDE's 64->256 inpainting upsampler (upsample_inpaint.pt) and its caption vocabulary."""

    kind = "glide_upsample_inpaint"
    files = (("checkpoint", "glide_upsample_inpaint"), ("vocab", "glide_vocab"))
    inputs = {"checkpoint": _files("glide_upsample_inpaint", "a file in upscale_models/"),
              "vocab": GLIDELoader.inputs["vocab"], "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(GLIDE_INPAINT_UPSAMPLER, "upsampler"),)


class ADMLoader(_ReleasedLoader):
    """Loads a guided-diffusion UNet (unconditional or class-conditional, any released size)."""

    kind = "adm"
    files = (("checkpoint", "adm"),)
    inputs = {"checkpoint": _files("adm", "a file in checkpoints/"), "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(ADM_MODEL, "model"),)


class ADMClassifierLoader(_ReleasedLoader):
    """Loads a guided-diffusion noisy classifier."""

    kind = "adm_classifier"
    files = (("checkpoint", "adm_classifier"),)
    inputs = {"checkpoint": _files("adm_classifier", "a file in classifiers/"), "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(ADM_CLASSIFIER, "classifier"),)


class KarloPriorLoader(_ReleasedLoader):
    """Loads Karlo's prior and the CLIP statistics its samples are de-normalised with."""

    kind = "karlo_prior"
    files = (("checkpoint", "karlo_prior"), ("clip_stats", "karlo_clip_stats"))
    inputs = {"checkpoint": _files("karlo_prior", "a file in checkpoints/"),
              "clip_stats": _files("karlo_clip_stats", "ViT-L-14_stats.th, a file in clip/"),
              "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(KARLO_PRIOR, "prior"),)


class KarloDecoderLoader(_ReleasedLoader):
    """Loads Karlo's 64x64 decoder."""

    kind = "karlo_decoder"
    files = (("checkpoint", "karlo_decoder"),)
    inputs = {"checkpoint": _files("karlo_decoder", "a file in checkpoints/"), "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(KARLO_DECODER, "decoder"),)


class KarloSuperResLoader(_ReleasedLoader):
    """Loads Karlo's 64->256 super-resolution pair (its last step runs the second network)."""

    kind = "karlo_sr"
    files = (("checkpoint", "karlo_sr"),)
    inputs = {"checkpoint": _files("karlo_sr", "a file in upscale_models/"), "dtype": _DTYPE, "options": _OPTIONS}
    outputs = (Out(KARLO_SR, "sr_model"),)


class OpenAICLIPLoader(_ReleasedLoader):
    """Loads OpenAI CLIP weights in OpenAI's layout (Karlo's ViT-L/14; ViT-B/16 for CLIP guidance), float32."""

    kind = "openai_clip"
    files = (("checkpoint", "openai_clip"),)
    inputs = {"checkpoint": _files("openai_clip", "a state dict in clip/ (safetensors; OpenAI's TorchScript .pt "
                                   "files need exporting once)"),
              "options": In("STRING", default="", description="model_name=ViT-L-14 or quick_gelu=false when the "
                            "sizes are ambiguous (OpenAI's own weights need none)")}
    outputs = (Out(CLIP, "clip"),)

    def run(self, ctx: RunContext, checkpoint: str, options: str = "", **_: str) -> tuple[Any]:
        return (installed.load_installed(self.kind, checkpoint, ctx.device, options=options),)


# ------------------------------------------------------------------------------------------------- sampling


def _steps(sampler: str, steps: int, respacing: str = "") -> dict[str, In]:
    return {
        "sampler": In("STRING", default=sampler, choices=("ddpm", "ddim", "dpmpp_2m"),
                      description="ddpm = the released samplers' ancestral steps; ddim (eta below); DPM-Solver++(2M)"),
        "steps": In("INT", default=steps, min=1, max=1000, description="denoising steps, evenly strided "
                    "(guided-diffusion's respacing 'N')"),
        "respacing": In("STRING", default=respacing, description="a respacing string that overrides steps: "
                        "'fast27' (GLIDE's upsampler), 'ddim25', '10,10,3,2,2'"),
        "eta": In("FLOAT", default=0.0, min=0.0, max=1.0, step=0.05, description="DDIM stochasticity"),
    }


def _settings(sampler: str, steps: int, respacing: str, eta: float) -> Any:
    return released.Steps(sampler, steps, respacing, eta)


_PROMPT = In("STRING", default="", multiline=True, description="the caption")
_NEGATIVE = In("STRING", default="", description="the caption of guidance's unconditional half ('' as released)")
_NOISE = In(NOISE, description="seed and batch size")
_TEMPERATURE = In("FLOAT", default=0.997, min=0.0, max=2.0, step=0.001,
                  description="x_T is drawn with this standard deviation (GLIDE's upsample_temp)")


class GLIDESample(Node):
    """GLIDE text-to-image at 64x64: classifier-free guidance over the caption and the negative caption."""

    category = "sampling/released"
    inputs = {"model": In(GLIDE_MODEL), "prompt": _PROMPT, "negative": _NEGATIVE, "noise": _NOISE,
              "guidance_scale": In("FLOAT", default=3.0, min=0.0, max=50.0, step=0.5,
                                   description="classifier-free guidance scale (GLIDE's notebook: 3)"),
              **_steps("ddpm", 100)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, model: RealModel, prompt: str, negative: str, noise: NoiseSpec,
            guidance_scale: float, sampler: str, steps: int, respacing: str, eta: float) -> tuple[Tensor]:
        return (glide.text2img(model, prompt, noise, guidance_scale=guidance_scale, negative=negative,
                               steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


class GLIDEUpsample(Node):
    """GLIDE's upsampler: 64x64 images to 256x256, conditioned on the caption (DDIM along 'fast27')."""

    category = "sampling/released"
    inputs = {"upsampler": In(GLIDE_UPSAMPLER), "images": In(IMAGE, description="the base model's samples"),
              "prompt": _PROMPT, "noise": _NOISE, "temperature": _TEMPERATURE, **_steps("ddim", 27, "fast27")}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, upsampler: RealModel, images: Tensor, prompt: str, noise: NoiseSpec,
            temperature: float, sampler: str, steps: int, respacing: str, eta: float) -> tuple[Tensor]:
        return (glide.upsample(upsampler, images, prompt, noise, temperature=temperature,
                               steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


class GLIDEInpaint(Node):
    """GLIDE inpainting at 64x64: regenerates where the mask is 1; the rest of the image is kept exactly."""

    category = "sampling/released"
    inputs = {"model": In(GLIDE_INPAINT_MODEL), "images": In(IMAGE, description="the image to edit (centre-cropped "
              "and resized to 64x64)"), "mask": In(MASK, description="1 where to generate"), "prompt": _PROMPT,
              "negative": _NEGATIVE, "noise": _NOISE,
              "guidance_scale": In("FLOAT", default=5.0, min=0.0, max=50.0, step=0.5,
                                   description="classifier-free guidance scale (GLIDE's inpainting notebook: 5)"),
              **_steps("ddpm", 100)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, model: RealModel, images: Tensor, mask: Tensor, prompt: str, negative: str,
            noise: NoiseSpec, guidance_scale: float, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[Tensor]:
        return (glide.inpaint(model, images, mask, prompt, noise, guidance_scale=guidance_scale, negative=negative,
                              steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


class GLIDEInpaintUpsample(Node):
    """GLIDE's inpainting upsampler: refines a 64x64 inpainting to 256x256, keeping the source outside the mask."""

    category = "sampling/released"
    inputs = {"upsampler": In(GLIDE_INPAINT_UPSAMPLER),
              "images": In(IMAGE, description="the 64x64 inpainting result"),
              "source": In(IMAGE, description="the image being edited (centre-cropped and resized to 256x256)"),
              "mask": In(MASK, description="1 where to generate"), "prompt": _PROMPT, "noise": _NOISE,
              "temperature": _TEMPERATURE, **_steps("ddpm", 27, "fast27")}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, upsampler: RealModel, images: Tensor, source: Tensor, mask: Tensor, prompt: str,
            noise: NoiseSpec, temperature: float, sampler: str, steps: int, respacing: str,
            eta: float) -> tuple[Tensor]:
        return (glide.inpaint(upsampler, source, mask, prompt, noise, low_res=images, temperature=temperature,
                              steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


_CLASS = In("INT", default=-1, min=-1, max=99_999, description="the class to generate (ImageNet: 0-999); "
            "-1 = a random class per image, drawn from the seed")


class ADMClassifierGuided(Node):
    """guided-diffusion with classifier guidance: the noisy classifier's gradient toward a class."""

    category = "sampling/released"
    inputs = {"model": In(ADM_MODEL), "classifier": In(ADM_CLASSIFIER), "noise": _NOISE, "class_label": _CLASS,
              "scale": In("FLOAT", default=1.0, min=0.0, max=100.0, step=0.5, description="classifier scale "
                          "(guided-diffusion: 1 with a class-conditional UNet, 10 with an unconditional one)"),
              **_steps("ddpm", 250)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, model: RealModel, classifier: RealModel, noise: NoiseSpec, class_label: int,
            scale: float, sampler: str, steps: int, respacing: str, eta: float) -> tuple[Tensor]:
        return (adm.classifier_guided(model, classifier, noise, class_label=class_label, scale=scale,
                                      steps=_settings(sampler, steps, respacing, eta),
                                      callback=progress_callback(ctx)),)


class ADMCLIPGuided(Node):
    """guided-diffusion steered by CLIP through x̂0 with cutouts (Crowson's CLIP-guided diffusion)."""

    category = "sampling/released"
    inputs = {"model": In(ADM_MODEL), "clip": In(CLIP), "text": In(TEXT_EMBED, description="the caption, encoded "
              "by the same CLIP"), "noise": _NOISE,
              "scale": In("FLOAT", default=1000.0, min=0.0, max=100_000.0, step=50.0, description="CLIP loss scale"),
              "cutn": In("INT", default=16, min=1, max=64, description="random cutouts per step"),
              "tv_scale": In("FLOAT", default=150.0, min=0.0, max=100_000.0, description="smoothness loss scale"),
              "range_scale": In("FLOAT", default=50.0, min=0.0, max=100_000.0, description="out-of-range loss scale"),
              "class_label": _CLASS, **_steps("ddpm", 250)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, model: RealModel, clip: ClipModel, text: TextEncoding, noise: NoiseSpec,
            scale: float, cutn: int, tv_scale: float, range_scale: float, class_label: int, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[Tensor]:
        return (adm.clip_guided(model, clip, text, noise, scale=scale, cutn=cutn, tv_scale=tv_scale,
                                range_scale=range_scale, class_label=class_label,
                                steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


_TEXT = In(TEXT_EMBED, description="the caption, encoded by CLIP ViT-L/14 (TextEncode)")
_NULL_TEXT = In(TEXT_EMBED, description="the empty caption (or a negative one), encoded by the same CLIP")


class KarloPrior(Node):
    """Karlo's prior: a caption's CLIP text encoding -> CLIP image embeddings (classifier-free guided)."""

    category = "sampling/released"
    inputs = {"prior": In(KARLO_PRIOR), "text": _TEXT, "null_text": _NULL_TEXT, "noise": _NOISE,
              "guidance_scale": In("FLOAT", default=4.0, min=0.0, max=50.0, step=0.5,
                                   description="classifier-free guidance on x0 (Karlo: 4)"),
              **_steps("ddpm", 25)}
    outputs = (Out(KARLO_IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, prior: RealModel, text: TextEncoding, null_text: TextEncoding, noise: NoiseSpec,
            guidance_scale: float, sampler: str, steps: int, respacing: str, eta: float) -> tuple[Tensor]:
        return (karlo.prior(prior, text, null_text, noise, guidance_scale=guidance_scale,
                            steps=_settings(sampler, steps, respacing, eta),
                            callback=progress_callback(ctx, preview=False)),)


class KarloDecoder(Node):
    """Karlo's decoder: image embeddings and the caption -> 64x64 images (classifier-free guided)."""

    category = "sampling/released"
    inputs = {"decoder": In(KARLO_DECODER), "image_embed": In(KARLO_IMAGE_EMBED), "text": _TEXT,
              "null_text": _NULL_TEXT, "noise": _NOISE,
              "guidance_scale": In("FLOAT", default=8.0, min=0.0, max=50.0, step=0.5,
                                   description="classifier-free guidance (Karlo: 8)"),
              **_steps("ddpm", 50)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, decoder: RealModel, image_embed: Tensor, text: TextEncoding,
            null_text: TextEncoding, noise: NoiseSpec, guidance_scale: float, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[Tensor]:
        return (karlo.decode(decoder, image_embed, text, null_text, noise, guidance_scale=guidance_scale,
                             steps=_settings(sampler, steps, respacing, eta), callback=progress_callback(ctx)),)


class KarloSuperRes(Node):
    """Karlo's 64->256 super-resolution: six steps by the first network, the last by the fine-tuned one."""

    category = "sampling/released"
    inputs = {"sr_model": In(KARLO_SR), "images": In(IMAGE, description="64x64 images"), "noise": _NOISE,
              **_steps("ddpm", 7)}
    outputs = (Out(IMAGE, "images"),)

    def run(self, ctx: RunContext, sr_model: RealModel, images: Tensor, noise: NoiseSpec, sampler: str, steps: int,
            respacing: str, eta: float) -> tuple[Tensor]:
        return (karlo.super_resolve(sr_model, images, noise, steps=_settings(sampler, steps, respacing, eta),
                                    callback=progress_callback(ctx)),)


class KarloImageEmbed(Node):
    """An image's CLIP embedding as Karlo reads it (not unit-norm): for variations, in place of the prior."""

    category = "sampling/released"
    inputs = {"clip": In(CLIP, description="CLIP ViT-L/14 (OpenAICLIPLoader)"), "images": In(IMAGE)}
    outputs = (Out(KARLO_IMAGE_EMBED, "image_embed"),)

    def run(self, ctx: RunContext, clip: ClipModel, images: Tensor) -> tuple[Tensor]:
        return (karlo.image_embed(clip, images),)
