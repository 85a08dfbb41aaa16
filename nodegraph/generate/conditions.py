"""What the denoisers are conditioned and guided on: the values that travel on CONDITIONING-like sockets.

- `Condition`: text (a CLIP `TextEncoding`), a unit-norm CLIP image embedding, both, or neither (the null
  condition of classifier-free guidance).
- `Guidance`: weighted conditions for (composable) classifier-free guidance, ε = ε_∅ + Σ s_i (ε_i − ε_∅),
  plus optional classifier and CLIP guidance terms.

Each model family turns a Condition into the keyword tensors its network takes (`unet_condition`,
`prior_condition`), through the adapters training uses as well (`unet_inputs`, `prior_inputs`: the same
inputs plus per-sample dropout flags); batching all conditions into one forward is
`nodegraph.diffusion.guidance`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nodegraph.errors import ConditionError, InputValueError
from nodegraph.models.clip import TextEncoding
from nodegraph.models.unet import UNetConfig


@dataclass(frozen=True)
class Condition:
    text: TextEncoding | None = None
    image_embed: Tensor | None = None  # [B or 1, D], unit norm

    @property
    def is_null(self) -> bool:
        return self.text is None and self.image_embed is None

    def describe(self) -> str:
        parts = []
        if self.text is not None:
            parts.append("text " + " | ".join(repr(p) for p in self.text.prompts[:2]))
        if self.image_embed is not None:
            parts.append(f"image embedding x{self.image_embed.shape[0]}")
        return " + ".join(parts) or "null"


@dataclass(frozen=True)
class ClassifierTerm:
    """Classifier guidance toward named attributes, e.g. {"kind": "circle", "color": "red"}."""

    model: torch.nn.Module  # nodegraph.models.classifier.NoisyClassifier
    labels: dict[str, str]
    scale: float

    @staticmethod
    def toward(model: torch.nn.Module, caption: str, scale: float) -> ClassifierTerm:
        """Guidance toward what a one-shape caption names; InputValueError("caption") if the classifier
        cannot read it (two shapes, no attribute it has a head for)."""
        from nodegraph.models.classifier import attributes_from_prompt, labels_for

        try:
            labels = attributes_from_prompt(caption)
            labels_for(labels, 1, torch.device("cpu"))
        except ValueError as exc:
            raise InputValueError("caption", str(exc)) from None
        return ClassifierTerm(model, labels, scale)


@dataclass(frozen=True)
class ClipTerm:
    """CLIP guidance toward a text embedding.

    mode "x0": the bundled CLIP's image tower on x̂0-blends with cutouts (Crowson); mode "noised": a
    noise-aware image tower on (x_t, t) (GLIDE).
    """

    mode: str
    encoder: object  # ClipModel for "x0", NoisedImageTower for "noised"
    target: Tensor  # [B or 1, D] text embedding
    scale: float
    cutn: int = 8
    tv_scale: float = 0.0
    range_scale: float = 0.0
    grad_clamp: float | None = None


@dataclass(frozen=True)
class Guidance:
    conditions: tuple[tuple[Condition, float], ...] = ()
    classifier: ClassifierTerm | None = None
    clip: ClipTerm | None = None

    def batch(self) -> int:
        """The largest batch among the conditions' tensors (1 when none has a batch)."""
        sizes = [1]
        for cond, _ in self.conditions:
            if cond.text is not None:
                sizes.append(cond.text.embed.shape[0])
            if cond.image_embed is not None:
                sizes.append(cond.image_embed.shape[0])
        return max(sizes)

    @staticmethod
    def cfg(condition: Condition, scale: float) -> Guidance:
        """Plain classifier-free guidance with one condition."""
        return Guidance(conditions=((condition, scale),))

    @staticmethod
    def edit(target: Condition, source: Condition, strength: float) -> Guidance:
        """Edit guidance for decoding an inverted latent: ε = ε(target) + s·(ε(target) − ε(source)).

        Plain CFG at scale > 1 breaks the reconstruction an inversion under `source` gives (at scale 3
        a DDIM-inverted red triangle decodes as a red cross); here the null branch cancels out, so
        target == source reproduces the image exactly and only the difference is amplified.
        """
        return Guidance(conditions=((target, 1.0 + strength), (source, -strength)))


def _batched(t: Tensor, batch: int, what: str, input: str) -> Tensor:
    if t.shape[0] not in (1, batch):
        raise ConditionError(f"{what} has batch {t.shape[0]} but the noise has batch {batch}; use 1 or {batch}", input)
    return t.expand(batch, *t.shape[1:])


def unet_condition(cfg: UNetConfig, cond: Condition, batch: int, context_length: int, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The keyword tensors `UNet.forward` takes for this condition (see `unet_inputs`)."""
    return unet_inputs(cfg, cond.image_embed, cond.text, batch, context_length, device, dtype)


def unet_inputs(cfg: UNetConfig, image_embed: Tensor | None, text: TextEncoding | None, batch: int,
                context_length: int, device: torch.device, dtype: torch.dtype = torch.float32,
                image_on: Tensor | None = None, text_on: Tensor | None = None) -> dict[str, Tensor]:
    """The keyword tensors `UNet.forward` takes, every key present (an absent condition is switched off), so
    conditions batch together. `context_length` pads absent text so all conditions have one token length.

    `image_on` / `text_on` ([batch] bools, default all on) switch a present condition off per sample: the
    classifier-free guidance dropout of training, which goes through here so that training and sampling
    cannot disagree on what the network is given.
    """
    out: dict[str, Tensor] = {}
    if cfg.clip_dim:
        out.update(_image_inputs(cfg, image_embed, batch, device, dtype, image_on))
    elif image_embed is not None:
        raise ConditionError("this model takes no image embedding; connect text only, or use a decoder", "image_embed")
    if cfg.text_dim:
        out.update(_text_inputs(cfg, text, batch, context_length, device, dtype, text_on))
    elif text is not None:
        raise ConditionError("this model takes no text; leave the text input unconnected", "text")
    return out


def _image_inputs(cfg: UNetConfig, embed: Tensor | None, batch: int, device: torch.device, dtype: torch.dtype,
                  on: Tensor | None) -> dict[str, Tensor]:
    if embed is None:
        zeros = torch.zeros(batch, cfg.clip_dim, device=device, dtype=dtype)
        return {"image_embed": zeros, "image_on": torch.zeros(batch, device=device, dtype=dtype)}
    if embed.shape[-1] != cfg.clip_dim:
        raise ConditionError(
            f"image embedding has width {embed.shape[-1]}, the decoder expects {cfg.clip_dim}: "
            "use the CLIP the decoder was trained with", "image_embed"
        )
    flags = on.to(device, dtype) if on is not None else torch.ones(batch, device=device, dtype=dtype)
    return {"image_embed": _batched(embed.to(device, dtype), batch, "the image embedding", "image_embed"),
            "image_on": flags}


def _text_inputs(cfg: UNetConfig, text: TextEncoding | None, batch: int, context_length: int, device: torch.device,
                 dtype: torch.dtype, on: Tensor | None) -> dict[str, Tensor]:
    if text is None:
        return {
            "text_tokens": torch.zeros(batch, context_length, cfg.text_dim, device=device, dtype=dtype),
            "text_mask": torch.zeros(batch, context_length, dtype=torch.bool, device=device),
            "text_embed": torch.zeros(batch, cfg.text_embed_dim or cfg.text_dim, device=device, dtype=dtype),
        }
    if text.tokens.shape[-1] != cfg.text_dim:
        raise ConditionError(
            f"text tokens have width {text.tokens.shape[-1]}, the decoder expects {cfg.text_dim}: "
            "use the CLIP the decoder was trained with", "text"
        )
    mask = _batched(text.mask.to(device), batch, "the text", "text")
    if on is not None:  # a fully masked text is the network's null text
        mask = mask & on.to(device)[:, None]
    return {
        "text_tokens": _batched(text.tokens.to(device, dtype), batch, "the text", "text"),
        "text_mask": mask,
        "text_embed": _batched(text.embed.to(device, dtype), batch, "the text", "text"),
    }


def prior_condition(cond: Condition, batch: int, context_length: int, text_width: int, clip_dim: int,
                    device: torch.device) -> dict[str, Tensor]:
    """The keyword tensors `PriorTransformer.forward` takes; the null condition switches text off."""
    if cond.image_embed is not None:
        raise ConditionError("the prior is conditioned on text only; connect a TEXT_EMBED", "image_embed")
    return prior_inputs(cond.text, batch, context_length, text_width, clip_dim, device)


def prior_inputs(text: TextEncoding | None, batch: int, context_length: int, text_width: int, clip_dim: int,
                 device: torch.device, text_on: Tensor | None = None) -> dict[str, Tensor]:
    """The keyword tensors `PriorTransformer.forward` takes; `text_on` ([batch] bools, default all on)
    switches present text off per sample (classifier-free guidance dropout in training)."""
    if text is None:
        return {
            "text_tokens": torch.zeros(batch, context_length, text_width, device=device),
            "text_mask": torch.zeros(batch, context_length, dtype=torch.bool, device=device),
            "text_embed": torch.zeros(batch, clip_dim, device=device),
            "text_on": torch.zeros(batch, dtype=torch.bool, device=device),
        }
    return {
        "text_tokens": _batched(text.tokens.to(device), batch, "the text", "text"),
        "text_mask": _batched(text.mask.to(device), batch, "the text", "text"),
        "text_embed": _batched(text.embed.to(device), batch, "the text", "text"),
        "text_on": text_on.to(device) if text_on is not None else torch.ones(batch, dtype=torch.bool, device=device),
    }


@dataclass(frozen=True)
class NoiseSpec:
    """The NOISE socket: a seed and a batch size, not a tensor, so each consumer draws x_T in its own shape.

    x_T is drawn on the CPU (the same images on every device); the sampler's own draws (DDPM noise,
    cutouts) come from a generator on the model's device seeded with seed + 1.
    """

    seed: int
    batch: int = 1

    def initial(self, shape: tuple[int, ...], device: torch.device, count: int | None = None) -> Tensor:
        """x_T of shape [count (default: batch), *shape]."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn((count or self.batch, *shape), generator=gen).to(device)

    def sampler_generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed + 1)


@dataclass(frozen=True)
class Latent:
    """The LATENT socket: a partly or fully noised image x_t and the timestep sequence that denoises it.

    `inverted` latents come from DDIM inversion and decode back to their image only with DDIM along the same
    steps; the others are an image noised forward to t0 (SDEdit), which any sampler may take from there.
    """

    x: Tensor
    timesteps: tuple[int, ...]
    inverted: bool = True
