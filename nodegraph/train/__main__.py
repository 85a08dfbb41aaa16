"""`python -m nodegraph.train MODEL [options]`: train one bundled model (seeded, resumable).

A run resumes from `runs/<MODEL>/last.pt` (under the current directory) when it exists; `--steps` may be
raised to continue a finished run. The best weights (raw or EMA, by the model's own metric) go to
`<MODEL>.safetensors` in the models directory: the bundled weights' (nodegraph/weights/), or $NODEGRAPH_MODELS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch

from nodegraph.errors import CheckpointError
from nodegraph.train.common import TrainConfig

MODELS = ("clip", "prior", "decoder", "upsampler", "inpaint", "classifier", "noised_clip", "stylegan")


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()  # --time-limit counts from here: pool rendering and model loading are part of the run
    ap = argparse.ArgumentParser(prog="python -m nodegraph.train", description=__doc__)
    ap.add_argument("model", choices=MODELS)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--ckpt-every", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="cpu, cuda or auto (cuda when available); decoder and stylegan only")
    ap.add_argument("--time-limit", type=float, default=0.0, metavar="MINUTES",
                    help="end this invocation (final checkpoint, eval, export) within MINUTES of wall time")
    ap.add_argument("--run-dir", default="", help="default: runs/MODEL")
    ap.add_argument("--out-dir", default="",
                    help="where best weights are exported; default: the models directory (or $NODEGRAPH_MODELS)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model-specific option (see the model's DEFAULTS), e.g. --set pool=20000")
    args = ap.parse_args(argv)
    module = importlib.import_module(f"nodegraph.train.{args.model}")
    defaults = dict(module.DEFAULTS)
    extra = dict(defaults.pop("extra", {}))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key] = _parse(value)
    for key in ("steps", "batch_size", "lr", "eval_every", "ckpt_every"):
        if getattr(args, key) is not None:
            defaults[key] = getattr(args, key)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not module.RECIPE.device_aware:
        ap.error(f"--device {args.device}: training {args.model} runs on the CPU only so far; drop --device")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible here; use --device cpu (or auto)")
        torch.backends.cuda.matmul.allow_tf32 = True  # small nets: TF32 matmuls, fp32 weights and EMA
        torch.backends.cudnn.allow_tf32 = True
    cfg = TrainConfig(name=args.model, seed=args.seed, threads=args.threads, device=device,
                      deadline=t0 + 60 * args.time_limit if args.time_limit else 0.0,
                      run_dir=args.run_dir, out_dir=args.out_dir,
                      extra=extra, **defaults)
    try:
        module.main(cfg)
    except CheckpointError as exc:  # a wrong --set init= or clip= file: say which, without a traceback
        ap.exit(2, f"{ap.prog}: error: {exc}\n")
    return 0


def _parse(value: str) -> object:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


if __name__ == "__main__":
    sys.exit(main())
