"""GAN inversion by optimisation: the W or W+ code (and noise maps) whose rendering matches an image.

As StyleGAN2's projector (Karras et al. 2020, Appendix D): start every layer at the centre of W, optimise
with Adam under a learning rate that ramps up over the first 5% of the steps and down along a cosine over
the last 25%, perturb the code with Gaussian noise that decays to zero over the first 75% (so early steps
explore instead of settling in the nearest basin), and optimise the per-layer noise maps too, regularised
toward white noise (their autocorrelation at every scale of a pyramid, penalised) and renormalised every
step, so the noise cannot paint the image by itself.

The loss is pixel MSE plus a perceptual term: squared distances between normalised feature maps of a
fixed encoder. LPIPS's VGG is not available here; the default encoder is the bundled noisy classifier
read at t = 0, a convolutional network trained on this world's attributes (kind, colour, size, position,
background), so its features weigh exactly what an edit must keep. Any `features(images) -> [maps]` fits.

"w" optimises one code shared by all layers (stays on the generator's manifold, reconstructs less),
"w+" one per layer (reconstructs more, and lands where editing is less well behaved: the trade-off the
editing bench reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nodegraph.errors import InputValueError
from nodegraph.models.resize import fit_square
from nodegraph.models.stylegan import GanModel, StyleLatent

Features = Callable[[Tensor], list[Tensor]]
Callback = Callable[[int, int, Tensor], object]


@dataclass(frozen=True)
class InversionSettings:
    space: str = "w+"  # "w" or "w+"
    steps: int = 300
    lr: float = 0.1
    perceptual: float = 1.0  # weight of the feature loss beside pixel MSE (0 = pixels only)
    noise_regularize: float = 1e4  # weight of the noise maps' autocorrelation penalty
    optimize_noise: bool = True
    initial_noise: float = 0.05  # std of the code's exploration noise at step 0, in units of W's spread
    noise_ramp: float = 0.75  # fraction of the steps over which that noise decays to 0


def ramped_lr(progress: float, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The projector's (and StyleCLIP's) schedule: linear warm-up, flat, then a cosine down to 0."""
    ramp = min(1.0, (1.0 - progress) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, progress / rampup)


def noise_regularization(noises: list[Tensor]) -> Tensor:
    """Σ over maps and pyramid levels of squared autocorrelation at 1-pixel shifts (0 for white noise)."""
    loss = noises[0].new_zeros(())
    for noise in noises:
        n = noise
        while True:
            loss = loss + (n * torch.roll(n, 1, dims=3)).mean() ** 2 + (n * torch.roll(n, 1, dims=2)).mean() ** 2
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return loss


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB between images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(4.0 / mse)


def classifier_features(classifier: torch.nn.Module) -> Features:
    """Feature maps of a NoisyClassifier at t = 0: its stem and every resolution block (before pooling)."""

    def features(x: Tensor) -> list[Tensor]:
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        from nodegraph.models.unet import timestep_embedding

        emb = classifier.time_mlp(timestep_embedding(t, classifier.cfg.model_channels))
        h = classifier.inp(x)
        out = [h]
        for block, down in zip(classifier.blocks, classifier.downs, strict=True):
            h = block(h, emb)
            out.append(h)
            h = down(h)
        return out

    return features


def perceptual_distance(features: Features, a: Tensor, b: Tensor) -> Tensor:
    """Per image: mean over layers of the squared distance between channel-normalised feature maps."""
    total = a.new_zeros(a.shape[0])
    fa, fb = features(a), features(b)
    for x, y in zip(fa, fb, strict=True):
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
        y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
        total = total + (x - y).pow(2).sum(1).flatten(1).mean(1)
    return total / len(fa)


def invert(gan: GanModel, images: Tensor, settings: InversionSettings = InversionSettings(), *,
           features: Features | None = None, generator: torch.Generator | None = None,
           callback: Callback | None = None) -> tuple[StyleLatent, Tensor]:
    """Latents [B] whose renderings reconstruct `images` [B, 3, H, W] in [-1, 1] (brought to the generator's
    resolution by the project's one rule), and those renderings.

    `callback(step, total, preview)` is called every step (an interrupt raised there stops the loop).
    """
    if settings.space not in ("w", "w+"):
        raise InputValueError("space", f"{settings.space!r} is not an inversion space; use 'w' or 'w+'")
    if settings.steps < 1:
        raise InputValueError("steps", "inversion needs at least one step")
    net, device = gan.net, gan.device
    target = fit_square(images.to(device).float(), gan.image_size).clamp(-1, 1)
    b = target.shape[0]
    with torch.no_grad():
        z = torch.randn(2048, net.style_dim, generator=torch.Generator().manual_seed(0)).to(device)
        w_std = (net.mapping(z) - gan.w_avg).pow(2).sum(1).mean().sqrt().item()  # spread of W around its centre
    start = gan.w_avg.view(1, 1, -1).expand(b, 1 if settings.space == "w" else net.n_latent, -1)
    w = start.clone().requires_grad_(True)
    noises = [n.to(device) for n in net.make_noise(b, generator)]
    for n in noises:
        n.requires_grad_(settings.optimize_noise)
    params = [w] + (noises if settings.optimize_noise else [])
    opt = torch.optim.Adam(params, lr=settings.lr)
    for step in range(settings.steps):
        progress = step / settings.steps
        for group in opt.param_groups:
            group["lr"] = ramped_lr(progress, settings.lr)
        strength = w_std * settings.initial_noise * max(0.0, 1 - progress / settings.noise_ramp) ** 2
        jitter = torch.randn(w.shape, generator=generator).to(device) * strength
        image = net.synthesis(net.broadcast((w + jitter).squeeze(1)) if settings.space == "w" else w + jitter, noises)
        per_image = (image - target).pow(2).flatten(1).mean(1)
        if settings.perceptual and features is not None:
            per_image = per_image + settings.perceptual * perceptual_distance(features, image, target)
        loss = per_image.sum()
        if settings.optimize_noise and settings.noise_regularize:
            loss = loss + settings.noise_regularize * noise_regularization(noises)
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        opt.step()
        with torch.no_grad():  # keep the noise maps white: zero mean, unit variance
            for n in noises:
                n.sub_(n.mean(dim=(1, 2, 3), keepdim=True)).div_(n.std(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if callback is not None:
            callback(step + 1, settings.steps, image.detach().clamp(-1, 1))
    w_plus = net.broadcast(w.detach().squeeze(1)) if settings.space == "w" else w.detach()
    latent = StyleLatent(w_plus.clone(), tuple(n.detach().clone() for n in noises))
    return latent, gan.render(latent)


def bundled_features(device: torch.device | str) -> Features:
    """The default perceptual encoder: the bundled noisy classifier at t = 0."""
    from nodegraph.models import loader

    classifier = loader.load("classifier", device=device)
    classifier.requires_grad_(False)
    return classifier_features(classifier)
