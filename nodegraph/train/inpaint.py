"""Fine-tune the decoder into GLIDE's inpainting model.

The network gets 4 extra input channels, [image * mask, mask] (mask = 1 where pixels are known),
initialised from the trained decoder with zero weights on the new channels so training starts from
the decoder's behaviour. Masks are random rectangles and free-form strokes (GLIDE, sec. 4).
"""

from __future__ import annotations

import torch

from nodegraph.models.checkpoint import load_state_dict
from nodegraph.models.clip import load_clip
from nodegraph.models.unet import UNet, count_params
from nodegraph.train.common import REPO_ROOT, RunState, TrainConfig, export_if_best, start_or_resume, train_loop
from nodegraph.train.decoder import SPEC, conditions, decoder_config, drop_conditions
from nodegraph.world.captions import caption
from nodegraph.world.dataset import PoolSpec, ScenePool
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
def inpaint_score(net: UNet, clip, n: int, steps: int) -> float:
    """Hide the shape of held-out one-shape scenes and regenerate it from the full caption (text only,
    no guidance); the score is the accuracy of the shape's kind and colour in the result."""
    from nodegraph.diffusion.samplers import sample
    from nodegraph.world.captions import parse_prompt
    from nodegraph.world.scorer import score_batch

    scenes = random_scenes(n, EVAL_SEED, p_two=0.0)
    image = to_model_range(render(scenes, 32))
    mask = shape_box_mask(scenes)
    caps = [caption(s) for s in scenes]
    cond = conditions(clip, None, caps)
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


def main(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)  # weight initialisation is part of the seeded run
    ex = cfg.extra
    clip = load_clip(ex.get("clip", REPO_ROOT / "models" / "clip.safetensors"))
    clip.model.requires_grad_(False)
    net = UNet(decoder_config(ex.get("channels", 48), clip, in_channels=7))
    decoder_path = ex.get("decoder", REPO_ROOT / "models" / "decoder.safetensors")
    init = load_state_dict(decoder_path, dtype=torch.float32)
    w = init["inp.weight"]
    init["inp.weight"] = torch.cat([w, torch.zeros(w.shape[0], 4, *w.shape[2:])], dim=1)
    net.load_state_dict(init)
    print(f"[inpaint] {count_params(net) / 1e6:.2f}M parameters, initialised from {decoder_path}")
    pool = ScenePool(PoolSpec(size=ex["pool"], seed=cfg.seed, resolutions=(32,)),
                     cache_dir=cfg.dir().parent / "pools")
    diffusion = SPEC.build()
    state = start_or_resume(net, cfg)

    def step(model: torch.nn.Module, _: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, state.gen)
        x0 = pool.batch(idx, 32)
        cond = drop_conditions(conditions(clip, x0, pool.captions(idx, state.gen)),
                               ex["p_drop_image"], ex["p_drop_text"], state.gen)
        mask = random_masks(x0.shape[0], 32, state.gen)
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=state.gen)
        noise = torch.randn(x0.shape, generator=state.gen)
        x_t = diffusion.q_sample(x0, t, noise)
        out = model(x_t, t, extra=torch.cat([x0 * mask, mask], dim=1), **cond)
        return diffusion.training_losses(out, x0, x_t, t, noise, ex["min_snr"]).mean(), {}

    def evaluate(st: RunState) -> dict[str, float]:
        scores = {"raw": inpaint_score(st.model, clip, ex["eval_n"], ex["eval_steps"]),
                  "ema": inpaint_score(st.ema.model, clip, ex["eval_n"], ex["eval_steps"])}
        meta = {"kind": "inpaint", "config": net.cfg.to_dict(), "diffusion": SPEC.__dict__,
                "clip_model_name": clip.model_name, "mask_convention": "1 = known pixel",
                "metric": "kind+colour accuracy of the regenerated shape, text only, unguided"}
        return {"acc_raw": scores["raw"], "acc_ema": scores["ema"],
                **export_if_best(st, cfg, scores, cfg.out("inpaint.safetensors"), meta)}

    train_loop(cfg, state, step, evaluate)
