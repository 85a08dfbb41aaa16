"""Sampler overhead and accuracy: what the diffusion library costs around a real UNet, and what it buys.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler_overhead.py [--repeats 5] [--device cpu|cuda]

Tables (times are the minimum over the repeats, wall clock and process CPU time; on a machine busy with
other work compare the CPU column):
1. overhead: a 50-step DDIM loop with classifier-free guidance around the project's UNet
   (nodegraph.models.unet, a small decoder config with CLIP-image conditioning) against a bare loop that
   calls the same model 50 times on the same (2B) batch and does nothing else; and the same guided loop
   around a model that costs nothing, which measures the library's own per-step work directly (robust to
   background load, unlike the difference of two noisy totals);
2. batched CFG (one forward of 2B) against two separate forwards of B per step;
3. DPM-Solver++(2M) at 10/15/20 steps against DDIM at 50/100: RMS error against the exact probability-flow
   solution on the Gaussian oracle (closed form), and the time of the full guided loop on the UNet;
4. DDIM inversion → DDIM sampling round trip on the oracle: max and RMS reconstruction error vs steps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    GaussianMixtureOracle,
    classifier_free_guidance,
    ddim_invert,
    make_betas,
    sample,
    sample_ddim,
    timestep_sequence,
)
from nodegraph.models.unet import UNet, UNetConfig, count_params

BATCH = 4
CLIP_DIM = 32


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Per function (min wall seconds, min process CPU seconds) over ``repeats`` runs after one warm-up.

    The functions' runs are interleaved (A B A B …), so drifting background load hits all of them alike.
    """
    for fn in fns.values():
        fn()
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            w, c = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            walls[name].append(time.perf_counter() - w)
            cpus[name].append(time.process_time() - c)
    return {k: (min(walls[k]), min(cpus[k])) for k in fns}


def build_unet(device: torch.device) -> UNet:
    cfg = UNetConfig(in_channels=3, out_channels=6, model_channels=32, channel_mult=(1, 2, 2),
                     attention_resolutions=(8,), image_size=32, clip_dim=CLIP_DIM)  # fmt: skip
    torch.manual_seed(0)
    unet = UNet(cfg).to(device).eval()
    # zero-initialised output layer would make every prediction 0; give it weights so the math is real
    for p in unet.out.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return unet


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    unet = build_unet(device)
    diffusion = GaussianDiffusion(make_betas("linear", 1000), variance="learned_range")
    print(f"UNet: {count_params(unet) / 1e6:.2f}M parameters, 32x32x3, batch {BATCH} (CFG batch {2 * BATCH}), "
          f"device {device}, torch threads {torch.get_num_threads()}")  # fmt: skip

    g = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(BATCH, 3, 32, 32, generator=g, device=device)
    embed = torch.nn.functional.normalize(torch.randn(BATCH, CLIP_DIM, generator=g, device=device), dim=-1)
    cond = {"image_embed": embed, "image_on": torch.ones(BATCH, device=device)}
    null = {"image_embed": embed, "image_on": torch.zeros(BATCH, device=device)}
    cond_model = lambda x, t, c: unet(x, t, **c)
    guided = classifier_free_guidance(cond_model, [cond], [3.0], null)

    # 1. overhead of the guided 50-step DDIM loop over 50 bare forwards of the same 2B batch
    steps = 50
    ts = timestep_sequence(1000, steps)
    x2 = torch.cat([x_T, x_T])
    both = {k: torch.cat([cond[k], null[k]]) for k in cond}
    t_rows = [torch.full((2 * BATCH,), t, device=device, dtype=torch.long) for t in ts]

    def bare() -> None:
        for t in t_rows:
            unet(x2, t, **both)

    def loop() -> None:
        sample(diffusion, guided, x_T, sampler="ddim", timesteps=ts)

    # the library's own per-step work, measured directly: the same guided loop around a model that costs nothing
    free = classifier_free_guidance(lambda x, t, c: x.new_zeros(x.shape[0], 6, *x.shape[2:]), [cond], [3.0], null)

    def loop_free() -> None:
        sample(diffusion, free, x_T, sampler="ddim", timesteps=ts)

    # 2. batched CFG against two separate forwards per step
    def separate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_c, e_u = unet(x, t, **cond), unet(x, t, **null)
        return torch.cat([e_u[:, :3] + 3.0 * (e_c[:, :3] - e_u[:, :3]), e_c[:, 3:]], 1)

    def loop_separate() -> None:
        sample(diffusion, separate, x_T, sampler="ddim", timesteps=ts)

    with torch.no_grad():
        torch.testing.assert_close(
            separate(x_T, t_rows[0][:BATCH]), guided(x_T, t_rows[0][:BATCH]), rtol=1e-4, atol=1e-4
        )
        times = timed({"bare": bare, "loop": loop, "separate": loop_separate, "free": loop_free}, args.repeats)
    (bare_w, bare_c), (loop_w, loop_c), (sep_w, sep_c) = times["bare"], times["loop"], times["separate"]
    free_w, free_c = times["free"]
    table(
        "1. 50-step DDIM + CFG loop vs 50 bare UNet forwards (same 2B batch)",
        ["", "wall s", "cpu s", "per step ms (cpu)"],
        [
            ["bare forwards", f"{bare_w:.3f}", f"{bare_c:.3f}", f"{1e3 * bare_c / steps:.2f}"],
            ["sampler loop", f"{loop_w:.3f}", f"{loop_c:.3f}", f"{1e3 * loop_c / steps:.2f}"],
            ["overhead", f"{100 * (loop_w / bare_w - 1):+.1f}%", f"{100 * (loop_c / bare_c - 1):+.1f}%", ""],
            ["loop, zero-cost model", f"{free_w:.3f}", f"{free_c:.3f}", f"{1e3 * free_c / steps:.2f}"],
            ["= library share", f"{100 * free_w / bare_w:.1f}%", f"{100 * free_c / bare_c:.1f}%", ""],
        ],
    )
    table(
        "2. CFG: one batched forward (2B) vs two forwards (B each), 50-step DDIM",
        ["", "wall s", "cpu s"],
        [
            ["batched", f"{loop_w:.3f}", f"{loop_c:.3f}"],
            ["two forwards", f"{sep_w:.3f}", f"{sep_c:.3f}"],
            ["ratio two/batched", f"{sep_w / loop_w:.2f}x", f"{sep_c / loop_c:.2f}x"],
        ],
    )

    # 3. DPM-Solver++ vs DDIM: oracle error (exact flow of Gaussian data) and UNet time
    mu, sd = torch.tensor([[0.5, -0.3]], dtype=torch.float64), torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    oracle = GaussianMixtureOracle(mu, sd)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = []
    for name, n in [("dpmpp_2m", 10), ("dpmpp_2m", 15), ("dpmpp_2m", 20), ("ddim", 50), ("ddim", 100)]:
        errors = []
        for schedule in ("linear", "cosine"):
            d = GaussianDiffusion(make_betas(schedule, 1000))
            a = d.alphas_cumprod[999].item()
            exact = mu + sd * (z - a**0.5 * mu) / (a * sd**2 + 1 - a) ** 0.5
            x = sample(d, oracle.model_fn(d), z, sampler=name, steps=n)
            errors.append(f"{(x - exact).pow(2).mean().sqrt().item():.4f}")
        run = lambda: sample(diffusion, guided, x_T, sampler=name, steps=n)  # noqa: B023
        with torch.no_grad():
            w, c = timed({"run": run}, max(1, args.repeats // 2))["run"]
        rows.append([f"{name} {n}", *errors, f"{w:.3f}", f"{c:.3f}"])
    table(
        "3. Fast sampler: RMS error vs the exact flow (Gaussian oracle, trailing spacing) and UNet time",
        ["sampler steps", "rms err linear", "rms err cosine", "UNet+CFG wall s", "cpu s"],
        rows,
    )

    # 4. DDIM inversion round trip on the oracle
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0 = oracle.sample(1000, torch.Generator().manual_seed(2))[0]
    rows = []
    for n in (10, 20, 50, 100, 200, 500, 1000):
        ts_n = timestep_sequence(1000, n)
        rec = sample_ddim(d, oracle.model_fn(d), ddim_invert(d, oracle.model_fn(d), x0, ts_n), ts_n)
        err = (rec - x0).abs()
        rows.append([str(n), f"{err.max().item():.2e}", f"{err.pow(2).mean().sqrt().item():.2e}"])
    table(
        "4. DDIM inversion -> DDIM sampling, Gaussian oracle (linear schedule)", ["steps", "max err", "rms err"], rows
    )


if __name__ == "__main__":
    main()
