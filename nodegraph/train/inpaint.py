"""Fine-tune the decoder into GLIDE's inpainting model.

The network gets 4 extra input channels, [image * mask, mask] (mask = 1 where pixels are known),
initialised from the trained decoder with zero weights on the new channels so training starts from
the decoder's behaviour (the bundled decoder, or `--set decoder=PATH`). Masks are random rectangles and
free-form strokes (GLIDE, sec. 4).
"""

from __future__ import annotations

import dataclasses

import torch

from nodegraph import weights
from nodegraph.generate.conditions import Condition, unet_condition
from nodegraph.models.clip import ClipModel
from nodegraph.models.diffusion_model import DiffusionModel
from nodegraph.models.unet import UNet
from nodegraph.train.common import TrainConfig
from nodegraph.train.decoder import SPEC, training_conditions
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, load_start, run
from nodegraph.world.captions import caption
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import POSITIONS, SIZES, random_scenes

DEFAULTS = dict(
    steps=2000, batch_size=32, lr=1e-4, warmup=100, eval_every=500, ckpt_every=100, ema_decay=0.999,
    extra=dict(pool=60_000, p_drop_image=0.5, p_drop_text=0.2, eval_n=48, eval_steps=25, min_snr=5.0),
)
EVAL_SEED = 70_000


def random_masks(b: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """[B, 1, S, S] masks, 1 = known: half random rectangles, half free-form strokes."""
    masks = torch.ones(b, 1, size, size)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    for i in range(b):
        if float(torch.rand((), generator=gen)) < 0.5:
            w, h = (torch.randint(size // 4, size * 3 // 4 + 1, (2,), generator=gen)).tolist()
            x0 = int(torch.randint(size - w + 1, (1,), generator=gen))
            y0 = int(torch.randint(size - h + 1, (1,), generator=gen))
            masks[i, 0, y0 : y0 + h, x0 : x0 + w] = 0
        else:
            # A stroke: a few thick segments between random points.
            pts = torch.rand(int(torch.randint(2, 5, (1,), generator=gen)), 2, generator=gen) * size
            radius = float(torch.rand((), generator=gen) * size / 8 + size / 16)
            for p, q in zip(pts[:-1], pts[1:], strict=True):
                d = q - p
                s = ((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / d.pow(2).sum().clamp_min(1e-6)
                s = s.clamp(0, 1)
                dist = ((xs - p[0] - s * d[0]) ** 2 + (ys - p[1] - s * d[1]) ** 2).sqrt()
                masks[i, 0][dist <= radius] = 0
    return masks


def shape_box_mask(scenes, size: int = 32, margin: float = 2.0) -> torch.Tensor:
    """Masks that hide each scene's first shape's bounding square (plus a margin), at `size` pixels."""
    masks = torch.ones(len(scenes), 1, size, size)
    scale = size / 64
    for i, sc in enumerate(scenes):
        sh = sc.shapes[0]
        cx, cy = POSITIONS[sh.position]
        half = SIZES[sh.size] / 2 + margin
        x0, x1 = int((cx - half) * scale), int((cx + half) * scale + 0.999)
        y0, y1 = int((cy - half) * scale), int((cy + half) * scale + 0.999)
        masks[i, 0, max(0, y0) : y1, max(0, x0) : x1] = 0
    return masks


@torch.no_grad()
def inpaint_score(net: UNet, clip: ClipModel, n: int, steps: int) -> float:
    """Hide the shape of held-out one-shape scenes and regenerate it from the full caption (text only,
    no guidance); the score is the accuracy of the shape's kind and colour in the result."""
    from nodegraph.diffusion.samplers import sample
    from nodegraph.world.captions import parse_prompt
    from nodegraph.world.scorer import score_batch

    scenes = random_scenes(n, EVAL_SEED, p_two=0.0)
    image = to_model_range(render(scenes, 32))
    mask = shape_box_mask(scenes)
    caps = [caption(s) for s in scenes]
    cond = unet_condition(net.cfg, Condition(text=clip.encode_text(caps)), n, clip.context_length, clip.device)
    gen = torch.Generator().manual_seed(0)
    extra = torch.cat([image * mask, mask], dim=1)
    out = sample(SPEC.build(), lambda x, t: net(x, t, extra=extra, **cond), torch.randn(image.shape, generator=gen),
                 sampler="ddim", steps=steps, generator=gen, spacing="leading", clip_denoised=True)
    out = out.clamp(-1, 1) * (1 - mask) + image * mask
    specs = []
    for c in caps:
        p = parse_prompt(c)
        specs.append(type(p)(background=None, shapes=tuple(type(s)(s.kind, s.color) for s in p.shapes)))
    return score_batch(out, specs).attribute_accuracy


def from_decoder(decoder: DiffusionModel) -> UNet:
    """The decoder's network with 4 more input channels whose weights start at zero: it begins as the decoder."""
    net = UNet(dataclasses.replace(decoder.net.cfg, in_channels=decoder.net.cfg.in_channels + 4))
    state = decoder.net.state_dict()
    w = state["inp.weight"]
    state["inp.weight"] = torch.cat([w, torch.zeros(w.shape[0], 4, *w.shape[2:])], dim=1)
    net.load_state_dict(state)
    return net


def build(setup: Setup) -> Trainee:
    cfg, pool, clip, ex = setup.cfg, setup.pool, setup.clip, setup.cfg.extra
    net = from_decoder(load_start("decoder", ex.get("decoder")))
    print(f"[inpaint] initialised from {ex.get('decoder') or weights.default_path('decoder')}")
    diffusion = SPEC.build()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, gen)
        x0 = pool.batch(idx, 32)
        cond = training_conditions(net.cfg, clip, x0, pool.captions(idx, gen), ex["p_drop_image"],
                                   ex["p_drop_text"], gen)
        mask = random_masks(x0.shape[0], 32, gen)
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = diffusion.q_sample(x0, t, noise)
        out = model(x_t, t, extra=torch.cat([x0 * mask, mask], dim=1), **cond)
        return diffusion.training_losses(out, x0, x_t, t, noise, ex["min_snr"]).mean(), {}

    def evaluate(model: UNet) -> Evaluation:
        acc = inpaint_score(model, clip, ex["eval_n"], ex["eval_steps"])
        return Evaluation(acc, {"acc": acc})

    meta = {"kind": "inpaint", "config": net.cfg.to_dict(), "diffusion": SPEC.__dict__,
            "clip_model_name": clip.model_name, "mask_convention": "1 = known pixel",
            "metric": "kind+colour accuracy of the regenerated shape, text only, unguided"}
    return Trainee(net, loss, evaluate, meta)


RECIPE = Recipe("inpaint", build, uses_clip=True)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
