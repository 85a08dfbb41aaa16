"""Sampling and rendering StyleGAN latents over socket values (GENERATOR, W_LATENT)."""

from __future__ import annotations

import torch
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.generate.gan_inversion import psnr
from nodegraph.models.resize import fit_square
from nodegraph.models.stylegan import GanModel, StyleLatent


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


def reconstruction_psnr(gan: GanModel, images: Tensor, reconstruction: Tensor) -> Tensor:
    """PSNR (dB) of reconstructions against the images brought to the generator's resolution."""
    target = fit_square(images.to(reconstruction.device).float(), gan.image_size).clamp(-1, 1)
    return psnr(reconstruction, target)
