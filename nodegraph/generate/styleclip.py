"""StyleCLIP latent optimisation (Patashnik et al. 2021, §4): edit a W+ code toward a caption.

    w* = argmin_w  L_CLIP(G(w), text) + λ ‖w - w_s‖²

from the source code w_s (a sampled latent or an inverted image), with Adam and the paper's learning-rate
ramp (linear warm-up, cosine ramp-down: `gan_inversion.ramped_lr`). The noise maps stay those of the
source, so what changes is what the styles control. The paper's identity loss is for faces and has no
counterpart here; λ alone keeps the rest of the image, and `layers` can hold the codes of the layers an edit
should not touch at the source's (StyleGAN's coarse layers set the layout, the fine ones colour and texture:
a colour edit on the bundled generator's 32-px layers alone keeps more of the shape than one on every layer).
L_CLIP is the project's `ClipObjective`
(augmented views and the noised-CLIP ensemble), not a single CLIP forward, which the bundled 32-px CLIP
lets the optimiser satisfy with specks (see `nodegraph.generate.clip_objective`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.generate.clip_objective import ClipObjective
from nodegraph.generate.gan_inversion import ramped_lr
from nodegraph.models.clip import TextEncoding
from nodegraph.models.stylegan import GanModel, StyleLatent, render_latent

SPACES = ("w+", "s")


@dataclass(frozen=True)
class StyleCLIPSettings:
    steps: int = 100
    lr: float = 0.1
    # The paper's 0.005-0.008 is for its 18x512 W+ and CLIP logits; here (bench/editing.py's colour and background
    # edits, 8 each, 40 steps) 0.008 edited 0.38 / 0.12, 0.002 0.50 / 0.50, 0.0005 0.62 / 0.62, 0 0.38 / 0.62
    # with the least preserved
    l2_lambda: float = 0.0005
    layers: tuple[int, ...] | None = None  # the W+ entries optimised (None = all); the others keep the source's
    # "w+": move the chosen W+ entries; "s": move the style vectors (StyleSpace, Wu et al. 2021) of the modulated
    # convolutions those entries feed, channel by channel (λ then weighs the squared offsets)
    space: str = "w+"


def edit(gan: GanModel, latent: StyleLatent, objective: ClipObjective, text: TextEncoding | Tensor | str | list[str],
         settings: StyleCLIPSettings = StyleCLIPSettings(), *, generator: torch.Generator | None = None,
         callback: Callable[[int, int, Tensor], object] | None = None) -> tuple[StyleLatent, Tensor]:
    """The edited latent and its images. `text` is one caption for the batch or one per latent."""
    if settings.steps < 1:
        raise InputValueError("steps", "latent optimisation needs at least one step")
    if settings.space not in SPACES:
        raise InputValueError("space", f"unknown latent space {settings.space!r}; choose one of {', '.join(SPACES)}")
    if latent.w.shape[1:] != (gan.n_latent, gan.net.style_dim):
        raise InputValueError("latent", f"the latent's W+ is {tuple(latent.w.shape[1:])}; this generator takes "
                              f"({gan.n_latent}, {gan.net.style_dim})")
    start = latent.to(gan.device)
    chosen = edited_layers(settings.layers, gan.n_latent).to(gan.device)
    moved = _WPlusEdit(start, chosen) if settings.space == "w+" else _StyleEdit(gan, start, chosen)
    opt = torch.optim.Adam(moved.params, lr=settings.lr)
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = ramped_lr(step / settings.steps, settings.lr)
        current = moved.latent()
        image = render_latent(gan.net, current)  # the source's noise throughout
        loss = (objective.text_loss(image, text, generator) + settings.l2_lambda * moved.distance()).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=moved.params)
        opt.step()
        if callback is not None:
            callback(step + 1, settings.steps, image.detach().clamp(-1, 1))
    edited = moved.latent()
    styles = None if edited.styles is None else tuple(None if t is None else t.detach().clone() for t in edited.styles)
    edited = dataclasses.replace(edited, w=edited.w.detach().clone(), styles=styles)  # the source's noise maps
    return edited, gan.render(edited)


class _WPlusEdit:
    """The chosen W+ entries free, the others the source's."""

    def __init__(self, source: StyleLatent, chosen: Tensor):
        self.source, self.chosen = source, chosen.view(1, -1, 1)
        self.free = source.w.clone().requires_grad_(True)
        self.params = [self.free]

    def latent(self) -> StyleLatent:
        return dataclasses.replace(self.source, w=torch.where(self.chosen, self.free, self.source.w))

    def distance(self) -> Tensor:
        return (self.free - self.source.w).mul(self.chosen).pow(2).flatten(1).sum(1)


class _StyleEdit:
    """An offset on the style vector of every modulated conv a chosen W+ entry feeds, on top of any the source
    carries; W+ stays the source's."""

    def __init__(self, gan: GanModel, source: StyleLatent, chosen: Tensor):
        self.source = source
        self.base = list(source.styles or [None] * len(gan.net.style_layers()))  # source is on the device already
        self.free = {k: torch.zeros(source.batch, width, device=gan.device, requires_grad=True)
                     for k, (entry, width) in enumerate(gan.net.style_layers()) if chosen[entry]}
        self.params = list(self.free.values())

    def latent(self) -> StyleLatent:
        styles = []
        for k, base in enumerate(self.base):
            offset = self.free.get(k)
            styles.append(base if offset is None else offset if base is None else base + offset)
        return dataclasses.replace(self.source, styles=tuple(styles))

    def distance(self) -> Tensor:
        return sum(offset.pow(2).sum(1) for offset in self.params)


_MAX_ENTRIES = 64


def edited_layers(layers: tuple[int, ...] | None, n_latent: int, input: str = "layers") -> Tensor:
    """A boolean mask over the W+ entries: True where the edit may move the code (`input`: the name errors
    blame)."""
    if layers is None:
        return torch.ones(n_latent, dtype=torch.bool)
    if not layers:
        raise InputValueError(input, "no layer to edit; name at least one W+ entry, or none for all")
    bad = [i for i in layers if not 0 <= i < n_latent]
    if bad:
        raise InputValueError(input, f"W+ entries {bad} do not exist; this generator has 0-{n_latent - 1}")
    mask = torch.zeros(n_latent, dtype=torch.bool)
    mask[list(layers)] = True
    return mask


def parse_layers(text: str, input: str = "layers") -> tuple[int, ...] | None:
    """The node's `layers` text: "" or "all" for every entry, else W+ indices and ranges, e.g. "5-7" or "0,3,5-7"."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise InputValueError(input, f"{part!r} is not a W+ index or range; write e.g. '5-7' or '0,3,5-7', "
                                  "or 'all'") from None
        if first > last:
            raise InputValueError(input, f"the range {part!r} runs backwards; write it low-high")
        if last >= _MAX_ENTRIES:  # StyleGAN2 at 1024 px has 18; a huge range would only cost memory here
            raise InputValueError(input, f"W+ index {last} is beyond any generator's ({_MAX_ENTRIES - 1} at most)")
        out.extend(range(first, last + 1))
    return tuple(sorted(set(out)))
