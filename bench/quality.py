"""Quality, speed and memory of the bundled models, on fixed seeds: prints one table per section.

    python bench/quality.py              # everything (tens of minutes on the 2-core CPU)
    python bench/quality.py --quick      # smaller prompt sets, same sections
    python bench/quality.py --only clip,pipeline,speed
    python bench/quality.py --only speed --threads 1   # torch threads: N, or auto (the CLI's policy; default)
    python bench/quality.py --only speed --compile     # and the job with the UNets compiled (torch.compile)

Sections: clip (retrieval), pipeline (DALL·E 2 / GLIDE / unconditional accuracy), upsampler, inpaint,
classifier, noised_clip, speed (the main job's warm time per model beside its FLOP floor measured in the same
run, at each precision (auto, fp32, bf16) with its scorer result; CLI time and peak RSS), cfg (guidance sweep: accuracy
against diversity), variations, text_diff, inversion (PSNR over steps, edits), guided (CLIP- and
classifier-guided against unguided), cache (seed change in dalle2_text2img).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nodegraph import weights
from nodegraph.generate.conditions import ClassifierTerm, ClipTerm, Condition, Guidance
from nodegraph.generate.sampling import SamplerSettings, inpaint, invert, run_denoiser, sample_prior, upsample
from nodegraph.models import loader
from nodegraph.models.diffusion_model import UNET_KINDS
from nodegraph.world.captions import PromptSpec, ShapeSpec, caption, parse_prompt
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import random_scenes
from nodegraph.world.scorer import score_batch, valid_rate

REPO = Path(__file__).resolve().parents[1]
SEED = 1234  # prompt sets: scenes from seeds no training pool or training-time eval uses


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


class Models:
    def __init__(self) -> None:
        self._cache: dict[str, object] = {}

    def __getattr__(self, family: str):
        if family.startswith("_"):
            raise AttributeError(family)
        if family not in self._cache:
            self._cache[family] = loader.load(family)
        return self._cache[family]


def prompts(n: int, two: bool, seed: int = SEED) -> tuple[list, list[str]]:
    scenes = random_scenes(n, seed + (1 if two else 0), p_two=1.0 if two else 0.0)
    return scenes, [caption(s) for s in scenes]


def noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def dalle2(m: Models, caps: list[str], seed: int, *, prior_scale=2.0, scale=3.0, prior_steps=25, steps=50,
           up_steps=20, upsample_out=True, chunk=50, sampler="ddim", stage=None) -> torch.Tensor:
    """Text -> prior -> decoder (image embedding + text, CFG) -> upsampler, in chunks of prompts.

    `stage(name)` (optional) gives a context manager each model's part runs in (the speed section times and
    counts FLOPs per model through it)."""
    stage = stage or (lambda name: contextlib.nullcontext())
    outs = []
    for sl in chunks(len(caps), chunk):
        with stage("clip"):
            text = m.clip.encode_text(caps[sl])
        g = torch.Generator().manual_seed(seed + sl.start)
        n = len(caps[sl])
        with stage("prior"):
            emb = sample_prior(m.prior, Condition(text=text), prior_scale, SamplerSettings(steps=prior_steps), n,
                               generator=g, best_of=2)
        with stage("decoder"):
            img = run_denoiser(m.decoder, noise(n, (3, 32, 32), seed + sl.start),
                               Guidance.cfg(Condition(text=text, image_embed=emb), scale),
                               SamplerSettings(sampler=sampler, steps=steps), generator=g).clamp(-1, 1)
        if upsample_out:
            with stage("upsampler"):
                img = upsample(m.upsampler, img, SamplerSettings(steps=up_steps), generator=g)
        outs.append(img)
    return torch.cat(outs)


def glide(m: Models, caps: list[str], seed: int, *, scale=3.0, steps=50, chunk=50, sampler="ddim") -> torch.Tensor:
    outs = []
    for sl in chunks(len(caps), chunk):
        text = m.clip.encode_text(caps[sl])
        g = torch.Generator().manual_seed(seed + sl.start)
        outs.append(run_denoiser(m.decoder, noise(len(caps[sl]), (3, 32, 32), seed + sl.start),
                                 Guidance.cfg(Condition(text=text), scale),
                                 SamplerSettings(sampler=sampler, steps=steps), generator=g).clamp(-1, 1))
    return torch.cat(outs)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


# ----------------------------------------------------------------------------------------------- sections
def sec_clip(m: Models, q: bool) -> None:
    from nodegraph.train.clip import retrieval_top1

    table("CLIP: text -> image retrieval (held-out scenes, canonical captions)", ["scenes", "top-1"],
          [[256, retrieval_top1(m.clip, 256, seed=SEED + 7)]])


def sec_pipeline(m: Models, q: bool) -> None:
    n = 40 if q else 100
    rows = []
    for two in (False, True):
        _, caps = prompts(n, two)
        t0 = time.time()
        r_d = score_batch(dalle2(m, caps, 0), caps)
        t_d = time.time() - t0
        r_g = score_batch(glide(m, caps, 0), caps)
        r_p = score_batch(glide(m, caps, 0, sampler="ddpm"), caps)
        label = "two shapes" if two else "one shape"
        for mode, r, t in (("DALL·E 2 (prior->decoder->upsampler)", r_d, t_d), ("GLIDE (decoder on text)", r_g, None),
                           ("GLIDE, DDPM sampler", r_p, None)):
            rows.append([mode, label, n, r.attribute_accuracy, r.exact_rate, _per(r), "" if t is None else f"{t:.0f}s"])
    # Unconditional samples per sampler: the stochastic sampler corrects the small model's errors on the way.
    for sampler in ("ddim", "dpmpp_2m", "ddpm"):
        x = run_denoiser(m.decoder, noise(n, (3, 32, 32), 7), Guidance(), SamplerSettings(sampler=sampler, steps=50),
                         generator=torch.Generator().manual_seed(7)).clamp(-1, 1)
        rows.append([f"unconditional decoder, {sampler}", "-", n, f"valid scenes {valid_rate(x):.3f}", "", "", ""])
    table("Text to image on canonical prompts (scale: prior 2, decoder 3; 25 / 50 / 20 steps; DDIM unless named)",
          ["mode", "prompts", "n", "attribute acc", "exact", "per attribute", "time"], rows)


def _per(r) -> str:
    return " ".join(f"{k[:4]}={v:.2f}" for k, v in r.per_attribute.items() if v == v)


def sec_upsampler(m: Models, q: bool) -> None:
    n = 32 if q else 96
    scenes, caps = prompts(n, False, SEED + 11)
    scenes2, caps2 = prompts(n, True, SEED + 11)
    low = to_model_range(render(scenes + scenes2, 32))
    high = to_model_range(render(scenes + scenes2, 64))
    rows = []
    for steps in (10, 20):
        out = torch.cat([upsample(m.upsampler, low[sl], SamplerSettings(steps=steps),
                                  generator=torch.Generator().manual_seed(0)) for sl in chunks(len(low), 48)])
        r = score_batch(out, caps + caps2)
        bilinear = F.interpolate(low, size=64, mode="bilinear", align_corners=False)
        rows.append([steps, r.attribute_accuracy, psnr(out, high), psnr(bilinear, high)])
    table("Upsampler 32->64 on true 32x32 renders", ["steps", "attributes preserved", "PSNR dB", "bilinear PSNR dB"],
          rows)


def sec_inpaint(m: Models, q: bool) -> None:
    from nodegraph.train.inpaint import shape_box_mask

    n = 32 if q else 96
    scenes, caps = prompts(n, False, SEED + 13)
    image = to_model_range(render(scenes, 32))
    known = shape_box_mask(scenes)
    text = m.clip.encode_text(caps)
    rows = []
    for method, model in (("model (GLIDE inpainting checkpoint)", m.inpaint), ("repaint (decoder)", m.decoder)):
        out = torch.cat([
            inpaint(model, image[sl], known[sl], Guidance.cfg(Condition(text=_slice_text(text, sl)), 3.0),
                    SamplerSettings(steps=50), generator=torch.Generator().manual_seed(sl.start),
                    method=method.split()[0])
            for sl in chunks(n, 48)
        ])
        outside = ((out - image).abs() * known).max().item()
        specs = [PromptSpec(None, tuple(ShapeSpec(s.kind, s.color) for s in parse_prompt(c).shapes)) for c in caps]
        r = score_batch(out, specs)
        rows.append([method, n, outside, r.attribute_accuracy, r.exact_rate])
    table("Inpainting: the shape's box masked, regenerated from the caption (scale 3, 50 steps)",
          ["method", "n", "max |change| outside mask", "kind+colour acc inside", "both right"], rows)


def _slice_text(text, sl):
    return type(text)(embed=text.embed[sl], tokens=text.tokens[sl], mask=text.mask[sl], prompts=text.prompts[sl])


def sec_classifier(m: Models, q: bool) -> None:
    from nodegraph.train.classifier import accuracy_by_t

    acc = accuracy_by_t(m.classifier, 256)
    heads = list(next(iter(acc.values())))
    table("Noisy classifier: accuracy per head on held-out one-shape scenes noised to t", ["t", *heads],
          [[t, *[row[h] for h in heads]] for t, row in acc.items()])


def sec_noised_clip(m: Models, q: bool) -> None:
    from nodegraph.train.noised_clip import retrieval_by_t

    r = retrieval_by_t(m.noised_clip, m.clip, 256)
    table("Noised CLIP: text -> noised image top-1 (256 held-out scenes)", ["t", "top-1"],
          [[t, v] for t, v in r.items()])


JOB_CAPTION = "a large red circle on the left on a blue background"
JOB_PRIOR_STEPS = 25  # dalle2()'s defaults: the main job (workflows/dalle2_text2img.json)
STAGES = ("clip", "prior", "decoder", "upsampler")


def sec_speed(m: Models, q: bool) -> None:
    cap = [JOB_CAPTION]
    threads = _job_threads()
    dalle2(m, cap, 0, prior_steps=2, steps=2, up_steps=2)  # warm-up
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "nodegraph", "run", str(REPO / "workflows" / "dalle2_text2img.json"),
               "--param", f"prompt={cap[0]}", "--out", out, "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ok = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    variants = {"auto": PrecisionModels(m, "auto"), "fp32": m, "bf16": PrecisionModels(m, "bf16")}
    if COMPILE[0]:
        variants["auto compiled"] = PrecisionModels(m, "auto", compiled=True)
    for models in variants.values():
        dalle2(models, cap, 0, prior_steps=2, steps=2, up_steps=2)
    runs = _interleaved_job_times(variants, 3 if q else 5, threads)
    dense, executed = job_flops(m)
    _floor_table(runs, dense, executed, list(variants))
    table("Speed and memory: text -> 64x64 (25 prior, 50 decoder steps with CFG, 20 upsampler steps)",
          ["measure", "value"],
          [*([f"in-process pipeline {name}, median (s)", statistics.median(r[name]["total"] for r in runs)]
             for name in variants),
           ["CLI run incl. start-up (s)", f"{wall:.1f} ({ok})"],
           ["CLI peak RSS (MB)", f"{rss:.0f}"], ["torch threads", threads.describe()]])
    _precision_quality_table(variants, 16 if q else 48)


class PrecisionModels:
    """The bundled models with the diffusion networks at another precision, as a loader's `dtype` gives them:
    "auto" (the loaders' default: the UNets' convolutions in bf16 where the CPU has native bf16) or "bf16"."""

    def __init__(self, m: Models, precision: str, compiled: bool = False) -> None:
        self._m, self._precision, self._compiled, self._cache = m, precision, compiled, {}

    def __getattr__(self, family: str):
        if family.startswith("_"):
            raise AttributeError(family)
        if family not in self._cache:
            model = getattr(self._m, family)
            cast = family in loader.DIFFUSION_FAMILIES
            model = model.with_precision(self._precision) if cast else model
            if self._compiled and family in UNET_KINDS:
                model = model.compile_for_inference()  # a copy: "auto" is another precision than the file's
            self._cache[family] = model
        return self._cache[family]


class _JobThreads:
    """The bench's --threads: a fixed count, or "auto" (nodegraph.threads' policy, decided before each job as the
    CLI does)."""

    def __init__(self, setting: str) -> None:
        from nodegraph.threads import ThreadPolicy

        self.policy = ThreadPolicy(setting)
        self.used: list[int] = []

    def start(self) -> None:
        n = self.policy.start()
        self.used.append(n or torch.get_num_threads())

    def describe(self) -> str:
        used = ", ".join(f"{n}x{self.used.count(n)}" for n in sorted(set(self.used))) or str(torch.get_num_threads())
        return f"{self.policy.setting} (jobs ran with {used})"


_THREADS: list[_JobThreads] = []  # set by main() from --threads
COMPILE = [False]  # set by main() from --compile


def _job_threads() -> _JobThreads:
    return _THREADS[0]


def _interleaved_job_times(variants: dict, repeats: int, threads: _JobThreads) -> list[dict]:
    """Per repeat: the fp32 matmul/conv peak, then the main job once per variant, each model's part timed."""
    runs = []
    for i in range(repeats):
        threads.start()
        run = dict(zip(("peak", "peak_cpu"), peak_gflops(), strict=True))
        for name, models in variants.items():
            wall, cpu = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0)

            @contextlib.contextmanager
            def timed(stage, wall=wall, cpu=cpu):
                t0, c0 = time.perf_counter(), time.process_time()
                yield
                wall[stage] += time.perf_counter() - t0
                cpu[stage] += time.process_time() - c0

            dalle2(models, [JOB_CAPTION], i, stage=timed)
            run[name] = {**wall, "total": sum(wall.values())}
            run[name + " cpu"] = {**cpu, "total": sum(cpu.values())}
        runs.append(run)
    return runs


def peak_gflops(reps: int = 8) -> tuple[float, float]:
    """The best fp32 rate at the current thread count over a 512^3 matmul and 3x3 convolutions of the job's
    sizes (channels-last, as the loader lays the UNets out): the peak the floor divides by, in GFLOP per
    second of wall time and per CPU-second (the latter is what preemption by other processes cannot inflate)."""
    best, best_cpu = 0.0, 0.0
    for fn, flops in _peak_kernels():
        fn()
        wall, cpu = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        best, best_cpu = max(best, flops / min(wall) / 1e9), max(best_cpu, flops / max(min(cpu), 1e-9) / 1e9)
    return best, best_cpu


def _peak_kernels() -> list:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)
    kernels = [(lambda: a @ b, 2 * 512**3)]
    for batch, ch, size in ((2, 96, 16), (2, 48, 32), (1, 64, 32)):
        x = torch.randn(batch, ch, size, size, generator=g).to(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, generator=g).to(memory_format=torch.channels_last)
        kernels.append((lambda x=x, w=w: F.conv2d(x, w, padding=1), 2 * batch * ch * ch * 9 * size * size))
    return kernels


def _flop_counter():
    """torch's FLOP counter, also counting the fused CPU attention kernel (it counts only the GPU ones) and the
    prepacked oneDNN convolutions the UNets run at inference (`models/inference_cache.py`)."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def packed_conv(x, w, *args, out_shape=None, **kwargs):
        return conv_flop_count(x, w, out_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        mapping[torch.ops.mkldnn._convolution_pointwise] = packed_conv
    return FlopCounterMode(display=False, custom_mapping=mapping)


def job_flops(m: Models) -> tuple[dict, dict]:
    """Per model, the FLOPs of one main job: as full forward passes x steps (the floor's count), and as executed.

    Sampling computes what does not change between steps once: the prior's causal text prefix (then 3 of its 36
    rows per step), the UNets' context tokens and their attention keys/values. The full count recomputes all of
    it at every step: the prior as one full causal pass (training's path, under grad mode) x steps, the UNets
    with their step-invariant memo switched off."""
    import nodegraph.models.unet as unet

    def counted(recompute: bool) -> dict:
        flops = dict.fromkeys(STAGES, 0)

        @contextlib.contextmanager
        def count(stage):
            with _flop_counter() as fc:
                yield
            flops[stage] += fc.get_total_flops()

        memo = unet._recomputes
        if recompute:
            unet._recomputes = lambda module, x: True
        try:
            dalle2(m, [JOB_CAPTION], 0, stage=count)
        finally:
            unet._recomputes = memo
        return flops

    executed = counted(recompute=False)
    dense = {**counted(recompute=True), "prior": _prior_full_pass_flops(m) * JOB_PRIOR_STEPS}
    return dense, executed


def _prior_full_pass_flops(m: Models) -> int:
    from nodegraph.generate.conditions import prior_inputs

    c = m.prior.net.cfg
    batch = 4  # best_of 2 x (conditional, null)
    inputs = prior_inputs(m.clip.encode_text([JOB_CAPTION]), batch, c.context_length, c.text_width, c.clip_dim, "cpu")
    with torch.enable_grad(), _flop_counter() as fc:
        m.prior.net(torch.zeros(batch, c.clip_dim), torch.zeros(batch, dtype=torch.long), **inputs)
    return fc.get_total_flops()


def _floor_table(runs: list[dict], dense: dict, executed: dict, variants: list[str]) -> None:
    """Per model: FLOPs, the floor (FLOPs over the peak measured beside each repeat), each precision's time and its
    ratio to the fp32 floor; "CPU" ratios use CPU time on both sides, which other processes cannot inflate."""
    peaks = [r["peak"] for r in runs]
    rows = []
    for stage in (*STAGES, "total"):
        flops = sum(dense.values()) if stage == "total" else dense[stage]
        done = sum(executed.values()) if stage == "total" else executed[stage]
        floor = statistics.median(_floors(runs, flops, "peak"))
        row = [stage, f"{flops / 1e9:.1f}", f"{done / 1e9:.1f}", f"{floor:.3f}"]
        for variant in variants:
            t = [r[variant][stage] for r in runs]
            row += [f"{statistics.median(t):.3f}", _ratio(runs, variant, stage, flops, "peak"),
                    _ratio(runs, variant + " cpu", stage, flops, "peak_cpu")]
        rows.append(row)
    load = os.getloadavg()[0]
    header = ["model", "GFLOP (forwards x steps)", "GFLOP executed", "floor (s)"]
    for variant in variants:
        header += [f"{variant} median (s)", f"{variant} / floor", f"{variant} / floor, CPU"]
    table(f"Main job warm against its fp32 FLOP floor ({len(runs)} interleaved repeats; peak fp32 "
          f"{statistics.median(peaks):.0f} GFLOP/s median, {min(peaks):.0f}-{max(peaks):.0f}, measured before each "
          f"repeat, {statistics.median(r['peak_cpu'] for r in runs):.0f} per CPU-second; 1-min load average {load:.1f} "
          f"on {os.cpu_count()} CPUs). The main job runs at the loaders' default precision, auto", header, rows)


def _floors(runs: list[dict], flops: float, peak: str) -> list[float]:
    return [flops / (r[peak] * 1e9) for r in runs]  # each repeat against the peak measured beside it


def _ratio(runs: list[dict], variant: str, stage: str, flops: float, peak: str) -> str:
    ratios = [r[variant][stage] / f for r, f in zip(runs, _floors(runs, flops, peak), strict=True) if f]
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


def _precision_quality_table(variants: dict, n: int) -> None:
    _, caps = prompts(n, False)
    images = {name: dalle2(models, caps, 0) for name, models in variants.items()}
    rows = []
    for name, imgs in images.items():
        r = score_batch(imgs, caps)
        rows.append([name, n, r.attribute_accuracy, r.exact_rate, _per(r)])
    for name, imgs in images.items():
        if name != "fp32":
            rows.append([f"{name} vs fp32 images", n, f"PSNR {psnr(imgs, images['fp32']):.1f} dB", "", ""])
    table("Precisions of the diffusion networks on the DALL·E 2 pipeline (one-shape canonical prompts, same seeds; "
          "auto = convolutions in bf16 where native, bf16 = every weight and activation)",
          ["precision", "n", "attribute acc", "exact", "per attribute"], rows)


def distinct(images: torch.Tensor, seeds: int) -> float:
    """Diversity: mean pairwise RMS pixel distance between samples of the same prompt, [0, 2] scale."""
    x = images.view(-1, seeds, *images.shape[1:]).flatten(2)
    d = torch.cdist(x, x) / x.shape[-1] ** 0.5
    return (d.sum((1, 2)) / (seeds * (seeds - 1))).mean().item()


def sec_cfg(m: Models, q: bool) -> None:
    n, seeds = (12, 3) if q else (32, 4)
    _, caps = prompts(n, False, SEED + 17)
    rep = [c for c in caps for _ in range(seeds)]
    rows = []
    for s in (1.0, 2.0, 3.0, 5.0, 8.0):
        g = glide(m, rep, 100, scale=s)
        d = dalle2(m, rep, 100, scale=s, upsample_out=False)
        rows.append([s, score_batch(g, rep).attribute_accuracy, distinct(g, seeds),
                     score_batch(d, rep).attribute_accuracy, distinct(d, seeds)])
    table(f"Classifier-free guidance sweep ({n} one-shape prompts x {seeds} seeds, decoder at 32x32)",
          ["scale", "GLIDE acc", "GLIDE diversity", "DALL·E 2 acc", "DALL·E 2 diversity"], rows)


def sec_variations(m: Models, q: bool) -> None:
    """DALL·E 2 variations decode the bipartite latent (CLIP image embedding, DDIM-inverted x_T) with DDIM
    eta > 0: eta trades faithfulness for variety. Decoding the embedding from fresh noise is the baseline."""
    n, k = (8, 4) if q else (24, 4)
    scenes, caps = prompts(n, False, SEED + 19)
    src = to_model_range(render(scenes, 32))
    z = F.normalize(m.clip.encode_image(src), dim=-1)
    emb = z.repeat_interleave(k, 0)
    rep = [c for c in caps for _ in range(k)]
    specs = [PromptSpec(None, tuple(ShapeSpec(s.kind, s.color) for s in parse_prompt(c).shapes)) for c in rep]
    xT, ts = invert(m.decoder, src, Condition(image_embed=z), SamplerSettings(steps=50))
    guide = Guidance.cfg(Condition(image_embed=emb), 3.0)
    rows = []
    for eta in (None, 0.25, 0.35, 0.5, 1.0):
        g = torch.Generator().manual_seed(5)
        if eta is None:
            out = run_denoiser(m.decoder, noise(n * k, (3, 32, 32), 5), guide, SamplerSettings(steps=50), generator=g)
        else:
            out = run_denoiser(m.decoder, xT.repeat_interleave(k, 0), guide, SamplerSettings(eta=eta), timesteps=ts,
                               generator=g)
        out = out.clamp(-1, 1)
        r = score_batch(out, specs)
        diff = (out.view(n, k, -1) - src.view(n, 1, -1)).abs().mean().item()
        rows.append(["fresh noise (eta 0)" if eta is None else f"inverted x_T, eta {eta}", r.attribute_accuracy,
                     r.per_attribute["kind"], r.per_attribute["color"], diff, distinct(out, k)])
    table(f"Variations ({n} sources x {k}, decoder on the CLIP embedding of a render, scale 3, 50 steps)",
          ["x_T", "shape+colour kept", "kind", "colour", "mean |pixel diff| to source", "diversity"], rows)


# Each edit on four scenes (where, background, colour of the kind edits), so a row is not one image's luck.
TEXT_DIFF_SCENES = [("in the center", "purple", "yellow"), ("on the left", "black", "green"),
                    ("at the top", "green", "white"), ("on the right", "yellow", "red")]
TEXT_DIFF_EDITS = [  # (source kind, source colour, target kind, target colour); None = the scene's colour
    ("square", None, "circle", None), ("triangle", "red", "triangle", "blue"),
    ("circle", None, "cross", None), ("cross", "orange", "cross", "white"),
]


def text_diff_pairs() -> list[list[tuple[str, str]]]:
    """Per edit, (source caption, target caption) on each of the four scenes."""
    def cap(kind, color, where, bg):
        return f"a large {color} {kind} {where} on a {bg} background"

    return [[(cap(k0, c0 or col, where, bg), cap(k1, c1 or col, where, bg)) for where, bg, col in TEXT_DIFF_SCENES]
            for k0, c0, k1, c1 in TEXT_DIFF_EDITS]


def sec_text_diff(m: Models, q: bool) -> None:
    """DALL·E 2 text diffs, three ways, each as the decoded path from the image (θ = 0) to the edit:

    - the paper's: slerp toward z_d = normalize(z_target − z_source) of the captions' text embeddings,
      θ ≤ 0.5 (beyond that the slerp leaves the image embeddings), decoded plainly (scale 1, exact at θ = 0)
      and with CFG 3;
    - the workflow's: slerp toward the image embedding moved by the prior's difference between the captions
      (mean of 8 paired prior samples each), θ ≤ 1, CFG 3;
    - an oracle endpoint: a render of the target caption's own embedding, CFG 3, which bounds what the
      decoder can make of the inverted x_T at all.

    Directions are between full captions (short ones like "a yellow square" are outside the captions CLIP
    was trained on). Smoothness: how the CLIP score of each frame (cos to the target text − cos to the
    source text) moves with θ, and how much of the total pixel change the largest single θ step carries.
    Every number is over the edit's four scenes (exact: scenes whose last frame matches the target caption)."""
    from nodegraph.generate.embeddings import analogy, interpolate, text_direction

    k, per_edit = 5, len(TEXT_DIFF_SCENES)
    pairs = [p for edit in text_diff_pairs() for p in edit]
    n = len(pairs)
    src_caps, tgt_caps = [a for a, _ in pairs], [b for _, b in pairs]
    img = to_model_range(render([_scene(c) for c in src_caps], 32))
    z = F.normalize(m.clip.encode_image(img), dim=-1)
    z_tgt = F.normalize(m.clip.encode_image(to_model_range(render([_scene(c) for c in tgt_caps], 32))), dim=-1)
    xT, ts = invert(m.decoder, img, Condition(image_embed=z), SamplerSettings(steps=50))
    ta, tb = m.clip.encode_text(src_caps), m.clip.encode_text(tgt_caps)
    # Paired prior samples: the same x_T for both captions, so the difference is the captions', not the noise's.
    g = torch.Generator().manual_seed(SEED)
    pa, pb = torch.zeros_like(z), torch.zeros_like(z)
    for _ in range(8):
        x = torch.randn(n, z.shape[-1], generator=g)
        pa += sample_prior(m.prior, Condition(text=ta), 2.0, SamplerSettings(steps=25), n, x_T=x) / 8
        pb += sample_prior(m.prior, Condition(text=tb), 2.0, SamplerSettings(steps=25), n, x_T=x) / 8
    text_path, d_text = [0.0, 0.125, 0.25, 0.375, 0.5], text_direction(ta.embed, tb.embed)
    methods = [
        ("text direction, θ ≤ .5, scale 1", d_text, text_path, 1.0),
        ("text direction, θ ≤ .5, CFG 3", d_text, text_path, 3.0),
        ("prior analogy, θ ≤ 1, CFG 3 (workflow)", analogy(z, pa, pb), [0.0, 0.25, 0.5, 0.75, 1.0], 3.0),
    ]
    rows = []
    for name, toward, thetas, scale in methods:
        mix = torch.cat([interpolate(z[i : i + 1], toward[i : i + 1], thetas) for i in range(n)])
        out = run_denoiser(m.decoder, xT.repeat_interleave(k, 0), Guidance.cfg(Condition(image_embed=mix), scale),
                           SamplerSettings(), timesteps=ts).clamp(-1, 1)
        e = F.normalize(m.clip.encode_image(out), dim=-1).view(n, k, -1)
        frames = out.view(n, k, *out.shape[1:])
        first = [score_batch(frames[i, :1], [src_caps[i]]) for i in range(n)]
        last = [score_batch(frames[i, -1:], [tgt_caps[i]]) for i in range(n)]
        psnr0 = 10 * torch.log10(4 / (frames[:, 0] - img).pow(2).flatten(1).mean(1).clamp_min(1e-10))
        margins = (e @ F.normalize(tb.embed, dim=-1)[:, :, None] - e @ F.normalize(ta.embed, dim=-1)[:, :, None])
        margins = margins.squeeze(-1)
        rises = (margins[:, 1:] >= margins[:, :-1] - 0.02).sum(1)
        steps = (frames[:, 1:] - frames[:, :-1]).abs().flatten(2).mean(-1)
        largest = steps.max(1).values / steps.sum(1)
        for j in range(len(TEXT_DIFF_EDITS)):
            sl = slice(j * per_edit, (j + 1) * per_edit)
            rows.append([_edit_name(src_caps[sl.start], tgt_caps[sl.start]), name,
                         sum(r.attribute_accuracy for r in first[sl]) / per_edit, psnr0[sl].mean().item(),
                         sum(r.attribute_accuracy for r in last[sl]) / per_edit,
                         f"{sum(r.exact_rate for r in last[sl]):.0f}/{per_edit}",
                         " ".join(f"{v:+.2f}" for v in margins[sl].mean(0).tolist()),
                         f"{int(rises[sl].sum())}/{(k - 1) * per_edit}", largest[sl].mean().item()])
        exact = sum(r.exact_rate for r in last)
        rows.append(["all edits", name, sum(r.attribute_accuracy for r in first) / n, psnr0.mean().item(),
                     sum(r.attribute_accuracy for r in last) / n, f"{exact:.0f}/{n}", "", "", ""])
    oracle = run_denoiser(m.decoder, xT, Guidance.cfg(Condition(image_embed=z_tgt), 3.0), SamplerSettings(),
                          timesteps=ts).clamp(-1, 1)
    scored = [score_batch(oracle[i : i + 1], [tgt_caps[i]]) for i in range(n)]
    rows.append(["all edits", "oracle: the target render's embedding, CFG 3", "", "",
                 sum(r.attribute_accuracy for r in scored) / n, f"{sum(r.exact_rate for r in scored):.0f}/{n}",
                 "", "", ""])
    table(f"Text diffs ({len(TEXT_DIFF_EDITS)} edits x {per_edit} scenes, decoded from the DDIM-inverted x_T, "
          "5 frames from θ = 0 to the last θ; CLIP cos(source render, target render) per edit: "
          + ", ".join(f"{(z * z_tgt).sum(-1)[j * per_edit:(j + 1) * per_edit].mean().item():.2f}"
                      for j in range(len(TEXT_DIFF_EDITS))) + ")",
          ["edit", "method", "first frame matches source", "first frame PSNR to source (dB)",
           "last frame matches target", "last frame exact", "mean CLIP margin target-source per frame",
           "steps with margin not falling", "largest step / total pixel change"], rows)


def _edit_name(src: str, tgt: str) -> str:
    """'square -> circle': the words in which two captions differ."""
    a, b = src.split(), tgt.split()
    return " ".join(x for x, y in zip(a, b, strict=True) if x != y) + " -> " + " ".join(
        y for x, y in zip(a, b, strict=True) if x != y)


def _scene(cap: str):
    from nodegraph.world.scene import Scene, Shape

    spec = parse_prompt(cap)
    return Scene(spec.background, tuple(Shape(s.kind, s.color, s.size, s.position) for s in spec.shapes))


def sec_inversion(m: Models, q: bool) -> None:
    n = 8 if q else 24
    scenes, caps = prompts(n, False, SEED + 23)
    img = to_model_range(render(scenes, 32))
    text = m.clip.encode_text(caps)
    rows = []
    for steps in (10, 25, 50, 100):
        xT, ts = invert(m.decoder, img, Condition(text=text), SamplerSettings(steps=steps))
        rec = run_denoiser(m.decoder, xT, Guidance.cfg(Condition(text=text), 1.0), SamplerSettings(), timesteps=ts)
        rows.append([steps, psnr(rec.clamp(-1, 1), img), score_batch(rec.clamp(-1, 1), caps).attribute_accuracy])
    table("DDIM inversion -> reconstruction under the same caption", ["steps", "PSNR dB", "attributes kept"], rows)
    # Edits: change the colour of the shape; the other named attributes must stay.
    edited = [_replace(s, next(c for c in ("red", "green", "blue", "yellow") if c not in (s.shapes[0].color,
                                                                                       s.background)))
              for s in scenes]
    targets = [caption(s) for s in edited]
    xT, ts = invert(m.decoder, img, Condition(text=text), SamplerSettings(steps=50))
    tgt = m.clip.encode_text(targets)
    rows = []
    # CFG toward the edited caption, and edit guidance: ε(target) + s(ε(target) − ε(inverted-under caption)).
    guides = [(f"CFG {s:g}", Guidance.cfg(Condition(text=tgt), s)) for s in (1.0, 2.0, 3.0)]
    guides += [(f"edit guidance {s:g}", Guidance.edit(Condition(text=tgt), Condition(text=text), s))
               for s in (1.0, 2.0)]
    for name, g in guides:
        out = run_denoiser(m.decoder, xT, g, SamplerSettings(), timesteps=ts).clamp(-1, 1)
        per = score_batch(out, targets).per_attribute
        others = {a: v for a, v in per.items() if a != "color" and v == v}
        rows.append([name, per["color"], sum(others.values()) / len(others),
                     " ".join(f"{a}={v:.2f}" for a, v in others.items())])
    table("Inversion-based colour edit (50 steps): invert under the caption, regenerate under the edited caption",
          ["guidance", "target colour right", "other attributes kept", "per attribute"], rows)


def _replace(scene, color):
    from dataclasses import replace

    return replace(scene, shapes=(replace(scene.shapes[0], color=color),))


def sec_guided(m: Models, q: bool) -> None:
    n = 16 if q else 48
    scenes, caps = prompts(n, False, SEED + 29)
    short = [f"a {s.shapes[0].color} {s.shapes[0].kind} on {'an' if s.background[0] in 'aeiou' else 'a'} "
             f"{s.background} background" for s in scenes]
    specs = [parse_prompt(c) for c in short]
    x = noise(n, (3, 32, 32), 3)
    text = m.clip.encode_text(short)
    rows = []
    noised_clip = ClipTerm("noised", m.noised_clip, text.embed, 100.0)
    configs = [  # (row, guidance, sampler); a number = classifier guidance of that scale, built per prompt below
        ("unguided unconditional", Guidance(), "ddim"),
        ("unguided unconditional, DDPM sampler", Guidance(), "ddpm"),
        ("classifier guidance s=3", 3.0, "ddim"),
        ("classifier guidance s=10", 10.0, "ddim"),
        ("CLIP x̂0 guidance (unconditional)",
         Guidance(clip=ClipTerm("x0", m.clip, text.embed, 200.0, cutn=8, range_scale=50.0)), "ddim"),
        ("noised CLIP guidance (unconditional)", Guidance(clip=noised_clip), "ddim"),
        ("GLIDE text s=1 + noised CLIP", Guidance(conditions=((Condition(text=text), 1.0),), clip=noised_clip), "ddim"),
        ("GLIDE text s=1 (reference)", Guidance.cfg(Condition(text=text), 1.0), "ddim"),
    ]
    for name, g, sampler in configs:
        t0 = time.time()
        settings = SamplerSettings(sampler=sampler, steps=50)
        if isinstance(g, float):
            outs = [run_denoiser(m.decoder, x[i:i + 1], Guidance(classifier=ClassifierTerm(
                m.classifier, {"kind": sp.shapes[0].kind, "color": sp.shapes[0].color, "background": sp.background},
                g)), settings) for i, sp in enumerate(specs)]
            out = torch.cat(outs)
        else:
            out = run_denoiser(m.decoder, x, g, settings, generator=torch.Generator().manual_seed(3))
        r = score_batch(out.clamp(-1, 1), specs)
        rows.append([name, n, r.attribute_accuracy, _per(r), f"{time.time() - t0:.0f}s"])
    table("Guidance against unguided sampling (prompts name colour, kind, background; 50 DDIM steps unless named)",
          ["method", "n", "attribute acc", "per attribute", "time"], rows)


def sec_cache(m: Models, q: bool) -> None:
    from nodegraph.engine.api import Engine

    with tempfile.TemporaryDirectory() as out:
        eng = Engine("cpu", output_dir=out, plugins=False)
        path = str(REPO / "workflows" / "dalle2_text2img.json")
        rows = []
        for label, params in (("cold", {"seed": 1}), ("identical", {"seed": 1}), ("seed changed", {"seed": 2}),
                              ("prompt changed", {"seed": 2, "prompt": "a small green cross on a white background"})):
            t0 = time.perf_counter()
            r = eng.run(path, params=params)
            rows.append([label, f"{time.perf_counter() - t0:.2f}", len(r.executed), ", ".join(r.executed) or "-"])
    table("Cache in practice: dalle2_text2img through the engine",
          ["run", "seconds", "executed", "nodes executed"], rows)


SECTIONS = {
    "clip": sec_clip, "pipeline": sec_pipeline, "upsampler": sec_upsampler, "inpaint": sec_inpaint,
    "classifier": sec_classifier, "noised_clip": sec_noised_clip, "speed": sec_speed, "cfg": sec_cfg,
    "variations": sec_variations, "text_diff": sec_text_diff, "inversion": sec_inversion, "guided": sec_guided,
    "cache": sec_cache,
}


def _openmp_as_the_cli(threads: str) -> None:
    """The CLI sets OpenMP's waits before torch loads it (nodegraph.threads.prepare_openmp); this module has
    imported torch already, so with --threads auto it starts over once in the environment the CLI gives itself."""
    from nodegraph.threads import ask_for_brief_spins

    if threads == "auto" and ask_for_brief_spins():
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller prompt sets")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--threads", default="auto", help="torch threads: N, or auto (nodegraph.threads' policy, "
                    "as the CLI runs; the speed section re-decides before each job)")
    ap.add_argument("--compile", action="store_true", help="speed: also the job with the UNets compiled (the "
                    "loaders' compile input; compiling takes minutes before the timed repeats)")
    args = ap.parse_args()
    COMPILE[0] = args.compile
    _openmp_as_the_cli(args.threads)
    _THREADS.append(_JobThreads(args.threads))
    _THREADS[0].start()
    names = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    m = Models()
    print(f"# nodegraph quality bench ({'quick' if args.quick else 'full'}; models in {weights.models_dir()})")
    with torch.no_grad():
        for name in names:
            t0 = time.time()
            SECTIONS[name](m, args.quick)
            print(f"\n({name}: {time.time() - t0:.0f}s)")
    print(json.dumps({"sections": names}))


if __name__ == "__main__":
    main()
