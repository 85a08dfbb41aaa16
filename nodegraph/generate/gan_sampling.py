"""Sampling and rendering StyleGAN latents over socket values (GENERATOR, W_LATENT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.generate.gan_inversion import psnr
from nodegraph.models.resize import fit_square
from nodegraph.models.stylegan import GanModel, StyleLatent, render_latent


@torch.no_grad()
def sample_latents(gan: GanModel, seed: int, batch: int, truncation: float = 1.0) -> StyleLatent:
    """`batch` W+ codes from the mapping network, with their noise maps; every draw is made on the CPU from
    `seed`, so a seed gives the same images on any device. Truncation pulls w toward the centre of W."""
    gen = torch.Generator().manual_seed(int(seed))
    net = gan.net
    z = torch.randn(batch, net.style_dim, generator=gen).to(gan.device)
    w = gan.w_avg + truncation * (net.mapping(z) - gan.w_avg)
    noise = tuple(net.make_noise(batch, gen))
    return StyleLatent(net.broadcast(w).contiguous(), noise)


def check_layout(gan: GanModel, latent: StyleLatent) -> None:
    expected = (gan.n_latent, gan.net.style_dim)
    if tuple(latent.w.shape[1:]) != expected:
        raise InputValueError("latent", f"the latent's W+ is {tuple(latent.w.shape[1:])} but this generator takes "
                              f"{expected}: latents only move between generators of one architecture")
    if latent.noise is not None:
        sizes = [int(n.shape[-1]) for n in latent.noise]
        if sizes != gan.net.noise_sizes():
            raise InputValueError("latent", f"the latent's noise maps are {sizes} px; this generator's are "
                                  f"{gan.net.noise_sizes()}")
    if latent.styles is not None:
        widths = [None if t is None else int(t.shape[-1]) for t in latent.styles]
        expected_widths = [width for _, width in gan.net.style_layers()]
        if len(widths) != len(expected_widths) or any(
                w not in (None, e) for w, e in zip(widths, expected_widths, strict=True)):
            raise InputValueError("latent", f"the latent's style offsets are {widths} wide; this generator's style "
                                  f"vectors are {expected_widths}")


def render(gan: GanModel, latent: StyleLatent) -> Tensor:
    """Images [B, 3, size, size] in [-1, 1] of latents, checked against the generator's layout."""
    check_layout(gan, latent)
    return gan.render(latent)


@torch.no_grad()
def render_keeping(gan: GanModel, latent: StyleLatent, reference_generator: GanModel, reference_latent: StyleLatent,
                   edit_region: Tensor, from_size: int) -> Tensor:
    """A local edit: `latent` rendered by `gan`, with the render of `reference_latent` by `reference_generator` (the
    unedited image: the pivot and its generator) kept outside `edit_region` [B or 1, 1, H, W] (1 = show the edit).
    At every resolution from `from_size` px up, the synthesis's feature maps and RGB sum are blended with the
    reference's under the region (area-resized to it), so the edit cannot redraw what it was not asked to change,
    and the layers above blend the seam. In the bundled generator a background edit moves the same convolutions
    that draw the shape, so without this it redraws the shape too (docs/editing.md). Both generators must share
    an architecture (a tuned or adapted copy of one)."""
    if reference_generator.net.cfg != gan.net.cfg:
        raise InputValueError("reference_generator", "the reference generator must have the edited one's "
                              "architecture (a tuned or adapted generator and the one it came from)")
    for lat, name in ((latent, "latent"), (reference_latent, "reference_latent")):
        try:
            check_layout(gan, lat)
        except InputValueError as exc:
            raise InputValueError(name, exc.message) from None
    if latent.batch != reference_latent.batch and reference_latent.batch != 1:
        raise InputValueError("reference_latent", f"{reference_latent.batch} reference latents for {latent.batch} "
                              "edited ones; give one per edit, or one for all")
    if edit_region.dim() != 4 or edit_region.shape[1] != 1 or edit_region.shape[0] not in (1, latent.batch):
        raise InputValueError("edit_region", f"expected a mask [1 or {latent.batch}, 1, H, W] (one per edited "
                              f"latent, or one for all), got {tuple(edit_region.shape)}")
    region = edit_region.to(gan.device).float().clamp(0, 1)
    features: list[tuple[Tensor, Tensor]] = []

    def record(level: int, out: Tensor, rgb: Tensor) -> tuple[Tensor, Tensor]:
        features.append((out, rgb))
        return out, rgb

    def blend(level: int, out: Tensor, rgb: Tensor) -> tuple[Tensor, Tensor]:
        if out.shape[-1] < from_size:
            return out, rgb
        show = F.interpolate(region, size=out.shape[-2:], mode="area")
        ref_out, ref_rgb = features[level]
        return torch.lerp(ref_out, out, show), torch.lerp(ref_rgb, rgb, show)

    render_latent(reference_generator.net, reference_latent.to(reference_generator.device), record)
    return render_latent(gan.net, latent.to(gan.device), blend).clamp(-1, 1)


def reconstruction_psnr(gan: GanModel, images: Tensor, reconstruction: Tensor) -> Tensor:
    """PSNR (dB) of reconstructions against the images brought to the generator's resolution."""
    target = fit_square(images.to(reconstruction.device).float(), gan.image_size).clamp(-1, 1)
    return psnr(reconstruction, target)
