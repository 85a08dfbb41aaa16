"""The image–text objective every CLIP-driven editor optimises (StyleCLIP, StyleGAN-NADA, DiffusionCLIP).

Why not plain CLIP: the bundled CLIP sees 32×32 pixels, and a loss `1 - cos(E(x), T)` that is minimised
by gradient descent on x (through a generator or a fine-tuned decoder) is lowered fastest by changes CLIP
reads and people do not: a few pixels of colour noise, specks, a tint. The loss falls to values a real
render of the target caption never reaches while the scene stays as it was (bench/editing.py's objective
table measures this: loss against the scorer's reading of the optimised image).

What is optimised instead is an expectation over views that such changes do not survive:
- every image is seen as `views` random views: translated by up to `shift` of its side and zoomed in
  by up to `zoom` (crop and resize back; border pixels extend the background), with Gaussian pixel noise
  of std `pixel_noise`. No flips: Shapes World captions name left / right, and an upside-down triangle is
  not a world shape. A perturbation tuned to one pixel grid does not hold across shifted, rescaled and
  noised copies; a real change of colour or kind does.
- two independently trained image encoders into the same text space: the bundled CLIP, and the noised
  CLIP tower (trained on images noised by the decoder's forward process, distilled toward CLIP), which is
  given forward-noised views at t ~ U[0, max_t], noise that drowns pixel-level perturbations. A change
  that lowers the loss must fool both.

The directional form (StyleGAN-NADA, DiffusionCLIP) compares the change between two images with the
change between two captions; both images of a pair get the same views (same shift, zoom, noise and t), so
the difference of their embeddings is the edit, not the augmentation.

`ClipObjective.plain(clip)` is the unprotected single-view CLIP loss, kept for the before / after table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.models.clip import ClipModel, TextEncoding

NOISED_SCHEDULE = ("cosine", 1000)  # the forward process the noised tower was trained on (the decoder's)
# Below this norm a change of embedding is no direction: 1/255 of pixel noise moves the ensemble's embeddings
# by 0.002-0.009, the smallest real edit of the bench's by 0.04 (most by 0.2-1.2). The floor keeps the
# directional loss's gradient where two images are still the same (NADA's first step: identical codes and
# noise) of ordinary size: with 1e-6 it was ~1e6 times larger, and Adam's second moment then froze the
# generator for every later step. Under the floor the loss rewards moving along the text direction.
DIRECTION_EPS = 0.01


@dataclass(frozen=True)
class ObjectiveSettings:
    views: int = 8  # augmented views per image and evaluation
    shift: float = 0.08  # largest translation, a fraction of the side (±2.5 px at 32)
    zoom: float = 0.12  # largest zoom-in: a crop of side 1 - zoom, resized back
    pixel_noise: float = 0.06  # std of Gaussian noise on every view (images in [-1, 1])
    noised_weight: float = 0.5  # share of the noised CLIP tower in the loss (0 = CLIP alone)
    max_t: int = 300  # noised-tower views are forward-noised to t ~ U[0, max_t]
    resample: float = 0.0  # views re-rendered at a side down to (1 - resample) of the image's and back (blur)


PLAIN = ObjectiveSettings(views=1, shift=0.0, zoom=0.0, pixel_noise=0.0, noised_weight=0.0)


class ClipObjective:
    """CLIP losses over augmented views and an encoder ensemble (see the module docstring).

    `clip` encodes the texts and images; `noised` (a NoisedImageTower into the same text space, or None)
    joins the ensemble with weight `settings.noised_weight`. Random draws come from the `generator` each
    call is given (on the CPU), so an optimisation is reproducible from its seed.
    """

    def __init__(self, clip: ClipModel, noised: torch.nn.Module | None = None,
                 settings: ObjectiveSettings = ObjectiveSettings()):
        if settings.views < 1:
            raise InputValueError("views", "the objective needs at least one view per image")
        self.clip = clip
        self.noised = noised if settings.noised_weight > 0 else None
        self.settings = settings if self.noised is not None else replace(settings, noised_weight=0.0)
        if self.noised is not None:
            from nodegraph.diffusion import make_betas

            betas = make_betas(*NOISED_SCHEDULE)
            self._alphas_cumprod = torch.cumprod(1 - betas.double(), 0).float()

    @classmethod
    def plain(cls, clip: ClipModel) -> ClipObjective:
        return cls(clip, None, PLAIN)

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def describe(self) -> str:
        s = self.settings
        if s == PLAIN:
            return "plain CLIP (one view)"
        enc = f"CLIP + noised CLIP (weight {s.noised_weight}, t <= {s.max_t})" if self.noised is not None else "CLIP"
        return f"{enc}, {s.views} views (shift {s.shift}, zoom {s.zoom}, noise {s.pixel_noise})"

    # ------------------------------------------------------------------------------------------ texts
    @torch.no_grad()
    def text_embeddings(self, text: TextEncoding | Tensor | str | list[str]) -> Tensor:
        """Unit-norm text embeddings [B or 1, D] from an encoding, an embedding or caption strings."""
        if isinstance(text, str | list):
            text = self.clip.encode_text([text] if isinstance(text, str) else list(text))
        embed = text.embed if isinstance(text, TextEncoding) else text
        return F.normalize(embed.to(self.device).float(), dim=-1)

    # ------------------------------------------------------------------------------------------ views
    def _draw(self, batch: int, size: int, generator: torch.Generator | None) -> dict[str, Tensor]:
        """The random part of `views` views of `batch` images: affine maps, pixel noise, noise levels."""
        s, v = self.settings, self.settings.views
        scale = 1 - s.zoom * torch.rand(v, batch, generator=generator)
        # shifts in grid units (2 = the whole side), kept inside what the zoom leaves room for plus `shift`
        offset = (torch.rand(v, batch, 2, generator=generator) * 2 - 1) * 2 * s.shift
        theta = torch.zeros(v, batch, 2, 3)
        theta[..., 0, 0] = scale
        theta[..., 1, 1] = scale
        theta[..., :, 2] = offset
        draw = {"theta": theta, "pixel": torch.randn(v, batch, 3, size, size, generator=generator) * s.pixel_noise}
        if s.resample:  # drawn only when used, so the other settings keep their random stream
            draw["side"] = (size * (1 - s.resample * torch.rand(v, generator=generator))).round().long()
        if self.noised is not None:
            draw["t"] = torch.randint(0, s.max_t + 1, (v, batch), generator=generator)
            draw["eps"] = torch.randn(v, batch, 3, size, size, generator=generator)
        return draw

    def _views(self, images: Tensor, draw: dict[str, Tensor]) -> Tensor:
        """[V * B, 3, H, W] views of images [B, 3, H, W] (view-major)."""
        v, b = draw["theta"].shape[:2]
        x = images.unsqueeze(0).expand(v, -1, -1, -1, -1).reshape(v * b, *images.shape[1:])
        s = self.settings
        if s.shift or s.zoom:
            theta = draw["theta"].reshape(v * b, 2, 3).to(x)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if s.resample:
            size = x.shape[-1]
            views = []
            for view, side in zip(x.split(b), draw["side"].tolist(), strict=True):
                if side < size:  # a lower-resolution copy, brought back: what survives is what is large
                    view = F.interpolate(F.interpolate(view, size=(side, side), mode="bilinear", antialias=True,
                                                       align_corners=False),
                                         size=(size, size), mode="bilinear", align_corners=False)
                views.append(view)
            x = torch.cat(views)
        if s.pixel_noise:
            x = x + draw["pixel"].reshape(x.shape).to(x)
        return x

    def _embed(self, images: Tensor, draw: dict[str, Tensor]) -> list[tuple[float, Tensor]]:
        """(weight, unit-norm embeddings [V, B, D]) per encoder."""
        v, b = draw["theta"].shape[:2]
        views = self._views(images.to(self.device).float(), draw)
        w_noised = self.settings.noised_weight
        out = [(1.0 - w_noised, F.normalize(self.clip.encode_image(views), dim=-1).view(v, b, -1))]
        if self.noised is not None:
            t = draw["t"].reshape(-1).to(self.device)
            a = self._alphas_cumprod.to(self.device)[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * views.clamp(-1, 1) + (1 - a).sqrt() * draw["eps"].reshape(views.shape).to(views)
            out.append((w_noised, F.normalize(self.noised(x_t, t), dim=-1).view(v, b, -1)))
        return out

    # ----------------------------------------------------------------------------------------- losses
    def text_loss(self, images: Tensor, text: TextEncoding | Tensor | str | list[str],
                  generator: torch.Generator | None = None) -> Tensor:
        """Per image [B]: the ensemble's mean over views of 1 - cos(image view, caption)."""
        target = self.text_embeddings(text)
        draw = self._draw(images.shape[0], images.shape[-1], generator)
        return sum(w * (1 - (e * target.unsqueeze(0)).sum(-1)).mean(0) for w, e in self._embed(images, draw))

    def directional_loss(self, source_images: Tensor, images: Tensor,
                         source_text: TextEncoding | Tensor | str | list[str],
                         target_text: TextEncoding | Tensor | str | list[str],
                         generator: torch.Generator | None = None) -> Tensor:
        """Per pair [B]: 1 - cos(E(image) - E(source image), T(target) - T(source)), each pair seen through the
        same views, averaged over views and the ensemble."""
        direction = F.normalize(self.text_embeddings(target_text) - self.text_embeddings(source_text), dim=-1)
        return self.image_direction_loss(source_images, images, direction, generator)

    def image_direction_loss(self, source_images: Tensor, images: Tensor, direction: Tensor,
                             generator: torch.Generator | None = None) -> Tensor:
        """`directional_loss` against a given unit text direction [B or 1, D] (DiffusionCLIP averages it over
        caption templates)."""
        if source_images.shape != images.shape:
            raise InputValueError("images", f"source images {tuple(source_images.shape)} and edited images "
                                  f"{tuple(images.shape)} must pair up one to one")
        direction = F.normalize(direction.to(self.device).float(), dim=-1)
        draw = self._draw(images.shape[0], images.shape[-1], generator)
        total = 0.0
        for (w, src), (_, edit) in zip(self._embed(source_images, draw), self._embed(images, draw), strict=True):
            delta = F.normalize(edit - src, dim=-1, eps=DIRECTION_EPS)
            total = total + w * (1 - (delta * direction.unsqueeze(0)).sum(-1)).mean(0)
        return total


def bundled_objective(clip: ClipModel, device: torch.device | str | None = None,
                      settings: ObjectiveSettings = ObjectiveSettings()) -> ClipObjective:
    """The objective over the bundled CLIP and noised CLIP tower (loaded from the models directory)."""
    from nodegraph.models import loader

    noised = None
    if settings.noised_weight > 0:
        noised = loader.load("noised_clip", device=device or clip.device)
        noised.requires_grad_(False)
    return ClipObjective(clip, noised, settings)


def objective_for(clip: ClipModel, noised: torch.nn.Module | None = None, *, views: int = 8, augment: bool = True,
                  noised_weight: float = 0.5) -> ClipObjective:
    """An objective from node-style options: the default views and augmentation, or none of it (plain CLIP
    over `views` identical views); the noised tower joins when given and weighted above 0."""
    base = ObjectiveSettings() if augment else replace(PLAIN, views=views)
    settings = replace(base, views=views, noised_weight=noised_weight if noised is not None else 0.0)
    if noised is not None:
        noised.requires_grad_(False)
    return ClipObjective(clip, noised, settings)
