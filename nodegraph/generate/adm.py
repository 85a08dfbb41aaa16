"""Sampling guided-diffusion's released UNets with the guidance they are known for.

- classifier guidance (guided-diffusion's classifier_sample.py): cond_fn = s · ∇_{x_t} log p(y | x_t, t) from
  the noisy classifier, added to the ancestral mean as Σ·∇ (or as a score correction with DDIM); labels are
  one class, or one drawn per sample from the seed as the script draws them; a class-conditional UNet sees
  the same labels.
- CLIP guidance (Crowson's CLIP-guided diffusion): cutouts of x̂0·√(1−ᾱ) + x_t·(1 − √(1−ᾱ)) embedded by a
  CLIP, spherical distance to the caption's embedding plus TV and range losses, the gradient through the
  UNet; x̂0 is not clipped (as the notebook samples).

Both use the model's shipped schedule (`RealModel.diffusion`: linear or cosine, learned σ) and its
default respacing ("250") unless told otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.diffusion import guidance as G
from nodegraph.errors import ConditionError
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.generate.released import Callback, Steps, class_labels, guided, require, run
from nodegraph.models.clip import ClipModel, TextEncoding
from nodegraph.models.real import RealModel

ADM_STEPS = Steps("ddpm")


def _start(model: RealModel, noise: NoiseSpec) -> Tensor:
    require(model, "adm", "model")
    size = model.config.image_size
    return noise.initial((model.config.in_channels, size, size), model.device)


def _model_fn(model: RealModel, labels: Tensor | None):
    # A class-conditional UNet takes the labels as `y`; an unconditional one takes nothing.
    cond = {"y": labels} if model.config.num_classes is not None else {}
    return guided(model, cond, None, 1.0)


@torch.no_grad()
def classifier_guided(model: RealModel, classifier: RealModel, noise: NoiseSpec, *, class_label: int = -1,
                      scale: float = 1.0, steps: Steps = ADM_STEPS, callback: Callback | None = None) -> Tensor:
    """Images [B, C, S, S] in [-1, 1] steered toward `class_label` (-1: a random class per sample) by the
    classifier's gradient (guided-diffusion uses scale 1 with the conditional 256x256 model, 10 with the
    unconditional one)."""
    x = _start(model, noise)
    require(classifier, "adm_classifier", "classifier")
    c = classifier.config
    if c.pool == "attention" and c.image_size != x.shape[-1]:
        raise ConditionError(f"the classifier reads {c.image_size}x{c.image_size} images but the UNet samples "
                             f"{x.shape[-1]}x{x.shape[-1]}: use the classifier released with this UNet", "classifier")
    if model.config.num_classes not in (None, c.out_channels):
        raise ConditionError(f"the UNet has {model.config.num_classes} classes, the classifier {c.out_channels}",
                             "classifier")
    labels = class_labels(c.out_channels, class_label, noise, x.shape[0], x.device)
    net = classifier.net

    def log_prob(x_t: Tensor, t: Tensor) -> Tensor:
        logits = net(x_t, t).float()
        return F.log_softmax(logits, dim=-1)[torch.arange(x_t.shape[0], device=x_t.device), labels]

    cond_fn = G.classifier_guidance(log_prob, scale)
    return run(model, _model_fn(model, labels), x, steps, noise, callback=callback, cond_fn=cond_fn).clamp(-1, 1)


@torch.no_grad()
def clip_guided(model: RealModel, clip: ClipModel, text: TextEncoding, noise: NoiseSpec, *, scale: float = 1000.0,
                cutn: int = 16, tv_scale: float = 150.0, range_scale: float = 50.0, class_label: int = -1,
                steps: Steps = ADM_STEPS, callback: Callback | None = None) -> Tensor:
    """Images [B, C, S, S] in [-1, 1] steered toward a caption by CLIP through x̂0 with `cutn` cutouts (the
    defaults are Crowson's notebook's). A class-conditional UNet gets `class_label` (-1: random)."""
    x = _start(model, noise)
    if text.embed.shape[-1] != clip.embed_dim:
        raise ConditionError(f"the caption was encoded by a {text.embed.shape[-1]}-d CLIP, this one is "
                             f"{clip.embed_dim}-d: encode it with the same CLIP", "text")
    labels = class_labels(model.config.num_classes, class_label, noise, x.shape[0], x.device)
    model_fn = _model_fn(model, labels)
    target = F.normalize(text.embed.float().to(x.device), dim=-1)
    cutouts = torch.Generator().manual_seed(noise.seed + 3)  # on the CPU: the same cutouts on every device
    settings = model.diffusion
    cond_fn = G.clip_x0_guidance(settings.build(), model_fn, clip.encode_image, target, scale=scale, cutn=cutn,
                                 cut_size=clip.image_size, tv_scale=tv_scale, range_scale=range_scale,
                                 generator=cutouts)
    return run(model, model_fn, x, steps, noise, callback=callback, cond_fn=cond_fn,
               clip_denoised=False).clamp(-1, 1)


__all__ = ["ADM_STEPS", "classifier_guided", "clip_guided"]
