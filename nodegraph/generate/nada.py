"""StyleGAN-NADA (Gal et al. 2022): move a generator to a new domain described by text, with no images.

Two copies of the generator: a frozen one and a trainable one. Both render the same W+ codes (sampled
from the mapping network, with the same noise), and the trainable copy is optimised so that the change
from the frozen image to its own image points, in CLIP space, the way the change from the source text to
the target text points (the directional loss). The mapping network and the toRGB layers stay frozen, so
W keeps its meaning: every latent (a sample, an inverted image) is edited by rendering it with the new
generator.

Adaptive layer selection (the paper's §4.2): before every step a short optimisation of the W+ codes
themselves toward the target text shows which layers' codes the edit needs; only the k styled
convolutions those codes drive are trained in that step, which keeps the rest of the generator, and so
the rest of the image, as it was.

`trainable_layers` limits the layers to the W+ entries an edit lives in (as StyleCLIP's `layers`: colour in the bundled
generator's 32-px layers), and `pivots` adds the codes of the images that will be edited (an inversion) to
every step's batch, so the adaptation is made where it will be used and not only on samples of W (after
pivotal tuning the tuned generator renders the pivot as the image, its samples as before).

The CLIP loss is the project's `ClipObjective` (augmented views, noised-CLIP ensemble; both images of a
pair seen through the same views), not a single CLIP forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nodegraph.errors import InputValueError
from nodegraph.generate.clip_objective import ClipObjective
from nodegraph.generate.styleclip import edited_layers
from nodegraph.models.clip import TextEncoding
from nodegraph.models.stylegan import GanModel, Generator, StyleLatent, latent_noise

Text = TextEncoding | Tensor | str | list[str]


@dataclass(frozen=True)
class NadaSettings:
    steps: int = 100
    lr: float = 0.002
    batch: int = 4  # W+ codes per step
    layers: int = 4  # k styled convolutions trained per step (0 = all of them)
    select_iters: int = 1  # latent optimisation steps that pick the k layers
    select_lr: float = 0.01
    truncation: float = 0.7  # codes drawn nearer the centre of W, where samples are cleanest
    trainable_layers: tuple[int, ...] | None = None  # W+ entries whose styled convs may train (None = all)


def styled_convs(net: Generator) -> list[nn.Module | None]:
    """For each W+ entry, the styled convolution it modulates (None for the last: it styles only a toRGB)."""
    convs: list[nn.Module | None] = [net.conv1, *net.convs]
    return convs + [None] * (net.n_latent - len(convs))


def select_layers(net: Generator, objective: ClipObjective, target_text: Text, w_plus: Tensor, noise: list[Tensor],
                  k: int, iters: int, lr: float, generator: torch.Generator | None = None,
                  candidates: list[int] | None = None) -> list[int]:
    """The W+ entries (of `candidates`, default every styled one) whose codes move most under `iters` SGD steps
    toward the target text (top k)."""
    w = w_plus.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(iters):
        loss = objective.text_loss(net.synthesis(w, noise), target_text, generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[w])
        opt.step()
    movement = (w.detach() - w_plus).abs().mean(dim=(0, 2))
    if candidates is None:
        candidates = [i for i, conv in enumerate(styled_convs(net)) if conv is not None]
    order = sorted(candidates, key=lambda i: -float(movement[i]))
    return sorted(order[:k])


def adapt(gan: GanModel, objective: ClipObjective, source_text: Text, target_text: Text,
          settings: NadaSettings = NadaSettings(), *, pivots: StyleLatent | None = None,
          generator: torch.Generator | None = None,
          callback: Callable[[int, int, Tensor], object] | None = None) -> GanModel:
    """A new generator for the target domain (the input generator is left untouched). `pivots`: latents of
    images to be edited, trained on in every step beside `settings.batch` sampled codes."""
    if settings.steps < 1 or settings.batch < 1:
        raise InputValueError("steps", "StyleGAN-NADA needs at least one step of at least one code")
    if pivots is not None and pivots.w.shape[1:] != (gan.n_latent, gan.net.style_dim):
        raise InputValueError("latent", f"the latent's W+ is {tuple(pivots.w.shape[1:])}; this generator takes "
                              f"({gan.n_latent}, {gan.net.style_dim})")
    if pivots is not None and pivots.styles is not None:
        raise InputValueError("latent", "this latent carries style offsets from a StyleCLIP edit in S; NADA trains on "
                              "W+ codes: connect the inversion (or a StyleCLIP edit in W+) instead")
    frozen = gan.net
    trainable = copy.deepcopy(frozen).train()
    trainable.requires_grad_(False)
    convs = styled_convs(trainable)
    allowed = edited_layers(settings.trainable_layers, gan.n_latent, "trainable_layers")
    every = [i for i, conv in enumerate(convs) if conv is not None and allowed[i]]
    if not every:
        named = list(settings.trainable_layers or ())
        raise InputValueError("trainable_layers", f"W+ entries {named} style no convolution (the last styles "
                              f"only the image output); choose among 0-{len(frozen.convs)}")
    opt = torch.optim.Adam([p for i in every for p in convs[i].parameters()], lr=settings.lr, betas=(0.0, 0.99))
    device = gan.device
    for step in range(settings.steps):
        with torch.no_grad():
            z = torch.randn(settings.batch, frozen.style_dim, generator=generator).to(device)
            w = gan.w_avg + settings.truncation * (frozen.mapping(z) - gan.w_avg)
            w_plus = frozen.broadcast(w).contiguous()
            noise = frozen.make_noise(settings.batch, generator)
            if pivots is not None:
                w_plus, noise = _with_pivots(frozen, w_plus, noise, pivots)
            source_images = frozen.synthesis(w_plus, noise)
        if settings.layers and settings.layers < len(every):
            chosen = select_layers(trainable, objective, target_text, w_plus, noise, settings.layers,
                                   settings.select_iters, settings.select_lr, generator, candidates=every)
        else:
            chosen = every
        params = [p for i in chosen for p in convs[i].parameters()]
        for p in params:
            p.requires_grad_(True)
        images = trainable.synthesis(w_plus, noise)
        loss = objective.directional_loss(source_images, images, source_text, target_text, generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        opt.step()
        for p in params:
            p.requires_grad_(False)
        if callback is not None:
            callback(step + 1, settings.steps, images.detach().clamp(-1, 1))
    origin = f"StyleGAN-NADA {_name(source_text)!r} -> {_name(target_text)!r} of {gan.origin}"
    return GanModel(trainable.eval(), gan.w_avg, origin=origin)


def _with_pivots(net: Generator, w_plus: Tensor, noise: list[Tensor],
                 pivots: StyleLatent) -> tuple[Tensor, list[Tensor]]:
    """The sampled codes and the pivots in one batch (pivots with no noise of their own take the fixed maps)."""
    b = pivots.batch
    device = w_plus.device
    pivot_noise = latent_noise(net, pivots, device)
    joined = [torch.cat([n, p.expand(b, *p.shape[1:])]) for n, p in zip(noise, pivot_noise, strict=True)]
    return torch.cat([w_plus, pivots.w.to(device).float()]), joined


def _name(text: Text) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return text[0] if text else ""
    prompts = getattr(text, "prompts", ())
    return prompts[0] if prompts else "<embedding>"
