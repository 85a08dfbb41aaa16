"""The released checkpoints at their released sizes (random weights): forward and sampling throughput, peak
memory, and the memory manager's behaviour when the device budget is smaller than the models.

    .venv/bin/python bench/real_models.py [--all] [--dtypes fp32,bf16] [--steps 2] [--device cpu|cuda]
                                          [--skip-throughput] [--skip-manager]

Tables:
1. throughput: per released configuration (built from `nodegraph.models.real.PRESETS`, weights drawn at
   random), one forward at the batch a sampling step runs (2 with classifier-free guidance), the time per
   sampling step of the library's own entry point (nodegraph.generate.glide / adm / karlo, guidance
   included; the classifier's row is a forward + backward, what one step of classifier guidance adds),
   wall clock and process CPU seconds (on a busy machine compare CPU), and the peak memory of the process
   (RSS high-water mark, reset before each model; on CUDA the allocator's peak). Without --all only the
   models sampled at 64x64 and the prior run (the 256x256 ones take minutes per step on a CPU).
2. memory manager: the released sizes (fp16, as run on a GPU) as models of a sequence of workflow runs
   (GLIDE, ADM + classifier, Karlo, ...) under device budgets smaller than all of them together. The models
   are stand-ins holding 1/1024 of their bytes (MiB for GiB: the manager sees only sizes and order), moved
   by the real engine and cache; the table counts loader executions against the distinct models, moves off
   the device and back, entries dropped, and compares with dropping instead of offloading.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nodegraph.generate import glide, karlo
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.generate.released import Steps, guided, run
from nodegraph.models import real
from nodegraph.models.clip import TextEncoding
from nodegraph.models.glide_tokenizer import GlideTokenizer

REPO = Path(__file__).resolve().parent.parent
VOCAB = REPO / "tests" / "fixtures" / "real_models" / "glide_vocab"  # a cut-down GLIDE vocabulary: enough to time
GIB = 1 << 30

# label, preset, sampled at 64x64 or less (runs without --all)
CASES = [
    ("GLIDE base 64", "glide-base", True),
    ("GLIDE upsample 64->256", "glide-upsample", False),
    ("ADM 64 cond", "adm-64-cond", True),
    ("ADM 256 uncond", "adm-256-uncond", False),
    ("ADM 512 cond", "adm-512-cond", False),
    ("ADM classifier 64", "adm-classifier-64", True),
    ("ADM classifier 256", "adm-classifier-256", False),
    ("Karlo prior", "karlo-prior", True),
    ("Karlo decoder 64", "karlo-decoder", True),
    ("Karlo SR 64->256", "karlo-sr-64-256", False),
    ("DDPM CelebA-HQ 256", "ddpm-celebahq", False),
]


# ------------------------------------------------------------------------------------------ measuring


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # hand the previous model's freed pages back, so the high-water mark starts from this one
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:  # Linux: "5" resets the process's RSS high-water mark (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, float]:
    """(min wall, min process CPU) seconds over `repeats` calls (after the caller's warm-up)."""
    walls, cpus = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w, c = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def build(preset: str, dtype: torch.dtype | None, device: torch.device) -> real.RealModel:
    """A released configuration with random weights (N(0, 0.02); norms' weights 1), as load_real builds it."""
    p = real.PRESETS[preset]
    cfg = real._apply(real._CONFIG_CLASS[p.family], dict(p.config), {}, Path(preset))
    with torch.device("meta"):
        net, variant = real._build(p.family, cfg)
    net = net.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith("weight") and param.ndim == 1:  # norms
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
        for buffer in net.buffers():
            buffer.zero_()
    if isinstance(net, real.KarloPrior):
        net.set_clip_stats(torch.zeros(cfg.clip_dim, device=device), torch.ones(cfg.clip_dim, device=device))
    if dtype is not None:
        real._to_dtype(net, dtype)
    model = real.RealModel(p.family, variant, net.eval().requires_grad_(False), cfg, p.diffusion, Path(preset),
                           preset)
    if p.family == "glide":
        model.tokenizer = GlideTokenizer.from_folder(VOCAB)
    return model


def text(dim: int, ctx: int, device: torch.device) -> TextEncoding:
    mask = torch.zeros(1, ctx, dtype=torch.bool, device=device)
    mask[:, :8] = True
    return TextEncoding(torch.randn(1, dim, device=device), torch.randn(1, ctx, dim, device=device), mask)


def calls(m: real.RealModel, device: torch.device, steps: int) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    """(one forward at a sampling step's batch, `steps` sampling steps through the library, that batch)."""
    c, net, s = m.config, m.net, Steps("ddpm", steps)
    noise = NoiseSpec(0)
    t2 = torch.full((2,), 500, device=device)
    t1 = t2[:1]
    if m.family == "glide":
        size = c.image_size
        tok = torch.zeros(2 if not c.low_res else 1, c.text_ctx, dtype=torch.long, device=device)
        mask = torch.ones_like(tok, dtype=torch.bool)
        if c.low_res:
            low = torch.rand(1, 3, 64, 64, device=device) * 2 - 1
            return (lambda: net(torch.randn(1, 3, size, size, device=device), t1, tok, mask, low_res=low),
                    lambda: glide.upsample(m, low, "a corgi", noise, steps=Steps("ddim", steps)), 1)
        return (lambda: net(torch.randn(2, 3, size, size, device=device), t2, tok, mask),
                lambda: glide.text2img(m, "a corgi", noise, steps=s), 2)
    if m.family == "adm":
        size, y = c.image_size, (torch.zeros(1, dtype=torch.long, device=device) if c.num_classes else None)
        cond = {"y": y} if y is not None else {}
        x = torch.randn(1, 3, size, size, device=device)
        return (lambda: net(x, t1, y=y),
                lambda: run(m, guided(m, cond, None, 1.0), torch.randn(1, 3, size, size, device=device), s, noise),
                1)
    if m.family == "adm_classifier":
        x = torch.randn(1, 3, c.image_size, c.image_size, device=device)

        def gradient() -> None:  # what one step of classifier guidance adds to the UNet's forward
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                torch.autograd.grad(net(x_in, t1).float().log_softmax(-1)[:, 0].sum(), x_in)

        return (lambda: net(x, t1), gradient, 1)
    if m.family == "karlo_prior":
        enc = text(c.clip_dim, c.text_ctx, device)
        x = torch.randn(2, c.clip_dim, device=device)
        te, ts, tm = enc.embed.expand(2, -1), enc.tokens.expand(2, -1, -1), enc.mask.expand(2, -1)
        return (lambda: net(x, t2, te, ts, tm), lambda: karlo.prior(m, enc, enc, noise, steps=s), 2)
    if m.family == "karlo_decoder":
        enc = text(c.clip_dim, c.text_ctx, device)
        emb = torch.randn(2, c.clip_dim, device=device)
        x = torch.randn(2, 3, 64, 64, device=device)
        te, ts, tm = enc.embed.expand(2, -1), enc.tokens.expand(2, -1, -1), enc.mask.expand(2, -1)
        return (lambda: net(x, t2, emb, te, ts, tm), lambda: karlo.decode(m, emb[:1], enc, enc, noise, steps=s), 2)
    if m.family == "karlo_sr":
        x = torch.randn(1, 3, 256, 256, device=device)
        low = torch.rand(1, 3, 64, 64, device=device) * 2 - 1
        return (lambda: net(x, t1, x), lambda: karlo.super_resolve(m, low, noise, steps=s), 1)
    if m.family == "ddpm":
        x = torch.randn(1, 3, 256, 256, device=device)
        return (lambda: net(x, t1), lambda: run(m, lambda x_t, t: net(x_t, t), x.clone(), Steps("ddim", steps),
                                                noise), 1)
    raise ValueError(m.family)


def row(label: str, preset: str, dtype_name: str, dtype: torch.dtype | None, device: torch.device,
        steps: int) -> str:
    """One line of the throughput table: build the preset, time a forward and `steps` sampling steps."""
    reset_peak(device)
    with torch.no_grad():
        m = build(preset, dtype, device)
        params = sum(p.numel() for p in m.net.parameters())
        forward, sampling, batch = calls(m, device, steps)
        forward()  # warm-up
        fw = timed(forward, device, repeats=3 if device.type == "cuda" else 1)
        st = timed(sampling, device)
    per_step = (st[0] / steps, st[1] / steps) if m.family != "adm_classifier" else st
    return (f"{label:24} {params / 1e6:6.0f}M {dtype_name:>5} {batch:5d} {fw[0]:10.3f} {fw[1]:8.2f} "
            f"{per_step[0]:8.3f} {per_step[1]:8.2f} {1 / per_step[0]:8.2f} {peak_bytes(device) / GIB:9.2f}")


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    wanted = [d for d in args.dtypes.split(",") if d]
    if device.type == "cpu" and "bf16" in wanted and not torch.backends.mkldnn.is_available():
        wanted.remove("bf16")
    print(f"\n1. throughput on {device} ({torch.get_num_threads()} threads), random weights at the released sizes")
    if device.type != "cuda":
        print("   No GPU was lent to this session: CPU numbers only; on a GPU run the same command with "
              "--device cuda --all --dtypes fp32,bf16,fp16 for every model.")
    header = (f"{'model':24} {'params':>7} {'dtype':>5} {'batch':>5} {'forward s':>10} {'(cpu s)':>8} "
              f"{'step s':>8} {'(cpu s)':>8} {'steps/s':>8} {'peak GiB':>9}")
    print(header)
    print("-" * len(header))
    for label, preset, small in CASES:
        if not (small or args.all):
            continue
        for name in wanted:
            try:
                print(row(label, preset, name, dtypes[name], device, args.steps), flush=True)
            except (RuntimeError, ValueError, NotImplementedError) as exc:  # one case failing keeps the table
                print(f"{label:24} {'':>7} {name:>5} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            gc.collect()
    print("step s: one sampling step through nodegraph.generate (guidance included); for the classifier, the "
          "forward + backward one step of classifier guidance adds to the UNet's.")


# ------------------------------------------------------------------------------------- memory manager

# The models of each workflow, in the order its nodes use them (fp16 GiB, from the presets' parameter counts).
def released_gib(preset: str) -> float:
    p = real.PRESETS[preset]
    cfg = real._apply(real._CONFIG_CLASS[p.family], dict(p.config), {}, Path(preset))
    with torch.device("meta"):
        net, _ = real._build(p.family, cfg)
    return sum(x.numel() for x in net.parameters()) * 2 / GIB


def manager(args: argparse.Namespace) -> None:
    from nodegraph.engine.api import Engine
    from nodegraph.engine.context import RunContext
    from nodegraph.engine.node import In, Node, Out

    sizes = {name: released_gib(name) for name in ("glide-base", "glide-upsample", "adm-256-cond",
                                                   "adm-classifier-256", "adm-256-uncond", "karlo-prior",
                                                   "karlo-decoder", "karlo-sr-64-256")}
    sizes["clip-vit-b-16"] = 149.6e6 * 2 / GIB  # OpenAI CLIP, open_clip's parameter counts
    sizes["clip-vit-l-14"] = 427.6e6 * 2 / GIB
    workflows = {
        "glide_real_text2img": ["glide-base", "glide-upsample"],
        "adm_classifier_guided": ["adm-256-cond+adm-classifier-256"],
        "adm_clip_guided": ["adm-256-uncond+clip-vit-b-16"],
        "karlo_text2img": ["clip-vit-l-14", "karlo-prior", "karlo-decoder", "karlo-sr-64-256"],
    }
    sequence = ["glide_real_text2img", "adm_classifier_guided", "karlo_text2img", "glide_real_text2img",
                "karlo_text2img", "adm_clip_guided", "adm_classifier_guided", "glide_real_text2img"]
    scale = 1 << 20  # bytes held per GiB of the released model

    loads: list[str] = []

    class Model:
        def __init__(self, name: str, device: str) -> None:
            self.name, self._device = name, device
            self.weights = torch.empty(int(sizes[name] * scale) // 4)

        @property
        def device(self) -> str:
            return self._device

        def to(self, device: Any) -> Model:
            self._device = str(device)
            return self

    class LoadModel(Node):
        inputs = {"name": In("STRING")}
        outputs = (Out("BENCH_MODEL"),)

        def run(self, ctx: RunContext, name: str) -> tuple[Model]:
            loads.append(name)
            return (Model(name, str(ctx.device)),)

    class Sample(Node):
        """A sampling node: needs its models on the run's device; its output is a small image."""

        inputs = {"a": In("BENCH_MODEL"), "b": In("BENCH_MODEL", optional=True), "seed": In("INT"),
                  "after": In("*", optional=True)}
        outputs = (Out("BENCH_IMAGE"),)

        def run(self, ctx: RunContext, a: Model, seed: int, b: Model | None = None, after: Any = None):
            for m in (a, b):
                if m is not None and m.device != str(ctx.device):
                    raise RuntimeError(f"{m.name} is on {m.device}")
            return (torch.zeros(16),)

    def graph(workflow: str, seed: int) -> dict[str, Any]:
        g: dict[str, Any] = {}
        previous = None
        for i, step in enumerate(workflows[workflow]):
            names = step.split("+")
            inputs: dict[str, Any] = {"seed": seed}
            for key, name in zip("ab", names, strict=False):
                g[f"load_{name}"] = {"class_type": "LoadModel", "inputs": {"name": name}}
                inputs[key] = [f"load_{name}", 0]
            if previous is not None:
                inputs["after"] = [previous, 0]
            previous = f"step{i}"
            g[previous] = {"class_type": "Sample", "inputs": inputs}
        g["out"] = {"class_type": "Preview", "inputs": {"value": [previous, 0]}}
        return g

    total = sum(sizes.values())
    print(f"\n2. memory manager: {len(sequence)} runs of 4 workflows over {len(sizes)} released models "
          f"({total:.1f} GiB in fp16), simulated device (stand-ins of 1/1024 of each model's bytes)")
    print("   sequence: " + " -> ".join(sequence))
    header = (f"{'device GiB':>10} {'host GiB':>9} {'policy':>8} {'loads':>6} {'reloads':>7} {'offloads':>8} "
              f"{'restores':>8} {'moved GiB':>9} {'dropped':>7} {'peak device GiB':>15}")
    print(header)
    print("-" * len(header))
    for device_gib, host_gib in ((24, 64), (8, 64), (6, 64), (8, 4)):
        for policy in ("offload", "drop"):
            loads.clear()
            engine = Engine("cpu", plugins=False, offload_device="host" if policy == "offload" else None,
                            cache_budgets={"cpu": int(device_gib * scale), "host": int(host_gib * scale)})
            for cls in (LoadModel, Sample):
                engine.registry.register(cls)
            peak = 0
            for seed, workflow in enumerate(sequence):
                engine.run(graph(workflow, seed))
                peak = max(peak, engine.cache.used.get("cpu", 0))
            stats = engine.cache.residency.stats if engine.cache.residency else None
            moved = (stats.offloaded_bytes + stats.restored_bytes) / scale if stats else 0.0
            print(f"{device_gib:10d} {host_gib:9d} {policy:>8} {len(loads):6d} {len(loads) - len(set(loads)):7d} "
                  f"{stats.offloads if stats else 0:8d} {stats.restores if stats else 0:8d} {moved:9.1f} "
                  f"{stats.drops if stats else '-':>7} {peak / scale:15.1f}")
    print("loads: loader executions (a model read from disk); reloads: loads of a model loaded before in the sequence "
          "(what the manager exists to avoid: none while the host holds the offloaded models); dropped: cache "
          "entries evicted, mostly the runs' small images; 'drop' is the cache without the manager.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also the models sampled at 256x256 and 512x512")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps timed per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-manager", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = "available" if torch.cuda.is_available() else "not available"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, CUDA {cuda}")
    if not args.skip_throughput:
        throughput(args, device)
    if not args.skip_manager:
        manager(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
