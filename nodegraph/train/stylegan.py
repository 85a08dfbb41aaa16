"""Train the style-based generator (StyleGAN2 family) on Shapes World at 32x32.

The generator is the trainee (the skeleton's AdamW, lr schedule and EMA: the EMA generator is StyleGAN's
g_ema, and it is what gets exported); the discriminator is its `Adversary`, stepped before every
generator step with the same learning-rate schedule. Losses as in StyleGAN2: non-saturating logistic
loss for both, lazy R1 on real images every `r1_every` discriminator steps, and style mixing (two z's
switched at a random layer for `p_mix` of the batches) so W+ layers stay separable, which the editing
methods (per-layer StyleCLIP codes, NADA's layer selection) rely on. Path-length regularisation is left
out: it costs a second generator pass per regularised step, and CPU steps are the scarce resource here.
Adam with β = (0, 0.99) for both networks, as StyleGAN2.

Evaluation samples a fixed set of z (truncation 1) and reads them with the Shapes World scorer: the valid
scene rate, and attribute coverage, 1 minus the mean total-variation distance between the sampled and
the world's distribution of background, shape colour, kind, size and shape count (a generator that
draws only red circles scores 0.4 however valid they are). Exported: the better of raw and EMA weights by
valid × coverage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from nodegraph.models.stylegan import Generator, StyleGANConfig
from nodegraph.models.stylegan_disc import Discriminator, DiscriminatorConfig
from nodegraph.train.common import TrainConfig
from nodegraph.train.recipe import Adversary, Evaluation, Recipe, Setup, Trainee, run

DEFAULTS = dict(
    steps=30_000, batch_size=16, lr=2e-3, warmup=100, eval_every=500, ckpt_every=100, ema_decay=0.999,
    grad_clip=100.0,  # only a guard against blow-ups: equalised-lr gradients are large by construction
    extra=dict(pool=60_000, style_dim=128, n_mlp=4, g_channels="128,128,64,32", d_channels="32,64,128,128",
               r1=0.5, r1_every=16, p_mix=0.5, eval_n=512, projected=1),
)
EVAL_SEED = 30_000
SIZE = 32


def widths(spec: object) -> tuple[int, ...]:
    """"128,128,64,32" (a --set value) -> (128, 128, 64, 32)."""
    return tuple(int(v) for v in str(spec).split(","))


def generator_config(ex: dict) -> StyleGANConfig:
    return StyleGANConfig(size=SIZE, style_dim=ex["style_dim"], n_mlp=ex["n_mlp"], channels=widths(ex["g_channels"]))


def latents(g: Generator, batch: int, gen: torch.Generator, p_mix: float) -> torch.Tensor:
    """W+ for a training batch: one z per image, or for a style-mixed batch two switched at a random layer."""
    device = g.input.input.device
    z = torch.randn(2, batch, g.style_dim, generator=gen).to(device)
    mix = float(torch.rand((), generator=gen)) < p_mix
    cut = int(torch.randint(1, g.n_latent, (), generator=gen)) if mix else g.n_latent
    w1, w2 = g.mapping(z[0]), g.mapping(z[1])
    return torch.cat([g.broadcast(w1)[:, :cut], g.broadcast(w2)[:, cut:]], dim=1)


def fake_images(g: Generator, batch: int, gen: torch.Generator, p_mix: float) -> torch.Tensor:
    noise = g.make_noise(batch, gen)  # drawn from the run's generator: a resumed run draws the same
    return g.synthesis(latents(g, batch, gen, p_mix), noise)


@torch.no_grad()
def samples(g: Generator, n: int, seed: int = EVAL_SEED, truncation: float = 1.0, chunk: int = 128) -> torch.Tensor:
    """n images from fixed z's (and noise), in [-1, 1], on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    device = g.input.input.device
    w_avg = g.mean_latent(2048, torch.Generator().manual_seed(seed + 1)) if truncation != 1.0 else None
    out = []
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        z = torch.randn(b, g.style_dim, generator=gen).to(device)
        out.append(g(z, g.make_noise(b, gen), truncation, w_avg).clamp(-1, 1).cpu())
    return torch.cat(out)


def quality(images: torch.Tensor) -> dict[str, float]:
    """Valid-scene rate and attribute coverage of samples (see the module docstring)."""
    from nodegraph.world.scene import COLORS, KINDS, SIZES
    from nodegraph.world.scorer import is_valid, read_scenes

    parsed = [p for p in read_scenes(images) if is_valid(p)]
    valid = len(parsed) / max(1, images.shape[0])
    observed = {
        "background": [p.background for p in parsed],
        "color": [s.color for p in parsed for s in p.shapes],
        "kind": [s.kind for p in parsed for s in p.shapes],
        "size": [s.size for p in parsed for s in p.shapes],
        "count": [len(p.shapes) for p in parsed],
    }
    expected = {"background": COLORS, "color": COLORS, "kind": KINDS, "size": tuple(SIZES), "count": (1, 2)}
    tv = {}
    for attr, values in expected.items():
        seen = observed[attr]
        tv[attr] = 0.5 * sum(abs(seen.count(v) / len(seen) - 1 / len(values)) for v in values) if seen else 1.0
    return {"valid": valid, "coverage": 1 - sum(tv.values()) / len(tv), "tv": tv}


class FeatureHead(nn.Module):
    """A small patch discriminator on one frozen feature map: stride-2 convs down to 4x4, then a logit map."""

    def __init__(self, channels: int, size: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        while size > 4:
            layers += [spectral_norm(nn.Conv2d(c, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c, size = width, size // 2
        layers.append(spectral_norm(nn.Conv2d(c, 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).mean(1)


class ProjectedCritic(nn.Module):
    """The StyleGAN2 discriminator plus small discriminators on the frozen feature maps of the bundled noisy
    classifier at t = 0 (Projected GAN, Sauer et al. 2021): pretrained features tell a blob from a shape and
    a tint from a palette colour from the first step, which a discriminator learning its own features from
    scratch needs far more images than a CPU budget gives to learn. The logit is the sum of the pixel
    discriminator's and the mean of the feature heads'. The classifier stays frozen (its weights are
    buffers of no optimiser)."""

    def __init__(self, d: Discriminator, classifier: nn.Module):
        super().__init__()
        from nodegraph.generate.gan_inversion import classifier_features

        self.d = d
        self.classifier = classifier.eval().requires_grad_(False)
        self._features = classifier_features(self.classifier)
        with torch.no_grad():
            maps = self._features(torch.zeros(1, 3, SIZE, SIZE))[1:]  # the three resolution blocks
        self.heads = nn.ModuleList(FeatureHead(m.shape[1], m.shape[-1]) for m in maps)

    def trainable(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("classifier.")]

    def train(self, mode: bool = True) -> ProjectedCritic:
        super().train(mode)
        self.classifier.eval()  # GroupNorm only, but keep the frozen network's mode fixed
        return self

    def requires_grad_(self, requires_grad: bool = True) -> ProjectedCritic:
        for p in self.trainable():
            p.requires_grad_(requires_grad)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self._features(x)[1:]
        heads = torch.stack([head(m) for head, m in zip(self.heads, maps, strict=True)]).mean(0)
        return self.d(x).view(-1) + heads


def build(setup: Setup) -> Trainee:
    cfg, pool, ex = setup.cfg, setup.pool, setup.cfg.extra
    g = Generator(generator_config(ex))
    d: nn.Module = Discriminator(DiscriminatorConfig(size=SIZE, channels=widths(ex["d_channels"])))
    if ex["projected"]:
        from nodegraph.train.recipe import load_start

        d = ProjectedCritic(d, load_start("classifier", ex.get("classifier")))
    d = d.to(cfg.device)
    trainable = d.trainable() if isinstance(d, ProjectedCritic) else list(d.parameters())
    d_opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.0, 0.99))
    b, p_mix = cfg.batch_size, ex["p_mix"]
    pending: dict[str, torch.Tensor] = {}

    def d_step(model: torch.nn.Module, gen: torch.Generator, i: int, lr: float) -> dict[str, float]:
        for group in d_opt.param_groups:
            group["lr"] = lr
        real = pool.batch(pool.sample_indices(b, gen), SIZE).to(cfg.device)
        # one generator pass per step: the discriminator learns from these fakes (detached), and the
        # generator's step that follows backpropagates through the same pass (as DCGAN's loop does)
        fake = fake_images(model, b, gen, p_mix)
        pending["fake"] = fake
        d.requires_grad_(True)
        fake_logit, real_logit = d(fake.detach()), d(real)
        loss = F.softplus(fake_logit).mean() + F.softplus(-real_logit).mean()
        stats = {"d_loss": loss.item(), "real_logit": real_logit.mean().item(), "fake_logit": fake_logit.mean().item()}
        if i % ex["r1_every"] == 0:
            # R1: the gradient of D on real images, penalised lazily (scaled up to the interval it stands for)
            real.requires_grad_(True)
            (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss = loss + ex["r1"] / 2 * r1 * ex["r1_every"]
            stats["r1"] = r1.item()
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()
        return stats

    def g_loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        d.requires_grad_(False)  # the generator's step needs gradients through D, not for D
        fake = pending.pop("fake", None)
        loss = F.softplus(-d(fake if fake is not None else fake_images(model, b, gen, p_mix))).mean()
        d.requires_grad_(True)
        return loss, {}

    def evaluate(model: Generator) -> Evaluation:
        q = quality(samples(model, ex["eval_n"]))
        tv = q.pop("tv")
        return Evaluation(q["valid"] * q["coverage"], q, {"quality": {**q, "tv": tv}})

    d_cfg = (d.d if isinstance(d, ProjectedCritic) else d).cfg.to_dict()
    d_cfg["projected"] = bool(ex["projected"])
    meta = {"kind": "stylegan", "config": g.cfg.to_dict(), "discriminator": d_cfg,
            "metric": "valid-scene rate x attribute coverage of 512 samples (truncation 1)"}
    return Trainee(g, g_loss, evaluate, meta, adversary=Adversary(d, d_opt, d_step), betas=(0.0, 0.99))


RECIPE = Recipe("stylegan", build, pool_seed=5, device_aware=True)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
