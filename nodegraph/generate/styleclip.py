"""StyleCLIP latent optimisation (Patashnik et al. 2021, §4): edit a W+ code toward a caption.

    w* = argmin_w  L_CLIP(G(w), text) + λ ‖w - w_s‖²

from the source code w_s (a sampled latent or an inverted image), with Adam and the paper's learning-rate
ramp (linear warm-up, cosine ramp-down: `gan_inversion.ramped_lr`). The noise maps stay those of the
source, so what changes is what the styles control. The paper's identity loss is for faces and has no
counterpart here; λ alone keeps the rest of the image. L_CLIP is the project's `ClipObjective`
(augmented views and the noised-CLIP ensemble), not a single CLIP forward, which the bundled 32-px CLIP
lets the optimiser satisfy with specks (see `nodegraph.generate.clip_objective`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.generate.clip_objective import ClipObjective
from nodegraph.generate.gan_inversion import ramped_lr
from nodegraph.models.clip import TextEncoding
from nodegraph.models.stylegan import GanModel, StyleLatent, render_latent


@dataclass(frozen=True)
class StyleCLIPSettings:
    steps: int = 100
    lr: float = 0.1
    # The paper's 0.005-0.008 is for its 18x512 W+ and CLIP logits; here (bench/editing.py's colour and background
    # edits, 8 each, 40 steps) 0.008 edited 0.38 / 0.12, 0.002 0.50 / 0.50, 0.0005 0.62 / 0.62, 0 0.38 / 0.62
    # with the least preserved
    l2_lambda: float = 0.0005


def edit(gan: GanModel, latent: StyleLatent, objective: ClipObjective, text: TextEncoding | Tensor | str | list[str],
         settings: StyleCLIPSettings = StyleCLIPSettings(), *, generator: torch.Generator | None = None,
         callback: Callable[[int, int, Tensor], object] | None = None) -> tuple[StyleLatent, Tensor]:
    """The edited latent and its images. `text` is one caption for the batch or one per latent."""
    if settings.steps < 1:
        raise InputValueError("steps", "latent optimisation needs at least one step")
    if latent.w.shape[1:] != (gan.n_latent, gan.net.style_dim):
        raise InputValueError("latent", f"the latent's W+ is {tuple(latent.w.shape[1:])}; this generator takes "
                              f"({gan.n_latent}, {gan.net.style_dim})")
    device = gan.device
    source = latent.w.to(device).float()
    w = source.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=settings.lr)
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = ramped_lr(step / settings.steps, settings.lr)
        image = render_latent(gan.net, StyleLatent(w, latent.noise))  # the source's noise throughout
        clip_loss = objective.text_loss(image, text, generator)
        l2 = (w - source).pow(2).flatten(1).sum(1)
        loss = (clip_loss + settings.l2_lambda * l2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[w])
        opt.step()
        if callback is not None:
            callback(step + 1, settings.steps, image.detach().clamp(-1, 1))
    edited = StyleLatent(w.detach().clone(), latent.noise)
    return edited, gan.render(edited)
