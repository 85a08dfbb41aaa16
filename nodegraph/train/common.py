"""What every training run shares: seeding, EMA with warm-up, resumable checkpoints, logging, export.

A run lives in `runs/<name>/` under the current directory: `last.pt` (model, EMA, optimiser, step, RNG
state; written atomically every `ckpt_every` steps so a killed job resumes where it stopped) and
`log.jsonl`. Exported weights go to the models directory the loaders read (`nodegraph.weights`: the
bundled weights, or $NODEGRAPH_MODELS) in fp16 with the config in the file's metadata.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from nodegraph import weights
from nodegraph.models.checkpoint import save_safetensors


def default_run_dir(name: str) -> Path:
    # relative to the working directory: an installed package has no repository root to put runs in
    return Path("runs") / name


@dataclass
class TrainConfig:
    name: str
    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    ckpt_every: int = 100
    log_every: int = 20
    eval_every: int = 500
    threads: int = 2
    device: str = "cpu"
    deadline: float = 0.0  # time.time() by which this invocation must have ended (--time-limit); 0 = none
    run_dir: str = ""
    out_dir: str = ""
    extra: dict = field(default_factory=dict)

    def dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else default_run_dir(self.name)

    def export_path(self, family: str) -> Path:
        """Where the best weights of a family go: its default file, where the loaders look, unless
        `out_dir` says otherwise (tests do)."""
        default = weights.default_path(family)
        return Path(self.out_dir) / default.name if self.out_dir else default


class EMA:
    """Exponential moving average with warm-up: decay = min(max, (1 + n) / (10 + n)).

    A plain 0.999 average is still mostly the initial weights after 1000 steps; the warm-up lets
    the average follow early training and only later smooth it.
    """

    def __init__(self, model: nn.Module, max_decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.max_decay, (1 + self.updates) / (10 + self.updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item()))


@dataclass
class RunState:
    model: nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    step: int
    gen: torch.Generator
    # what else the run trains (a GAN's discriminator and its optimiser), by name: saved in last.pt and,
    # for modules, in the weight pair, and restored with the rest; empty for single-network models
    companions: dict[str, nn.Module | torch.optim.Optimizer] = field(default_factory=dict)


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_state(state: RunState, cfg: TrainConfig) -> None:
    cfg.dir().mkdir(parents=True, exist_ok=True)
    _atomic_save(
        {
            "model": state.model.state_dict(),
            "ema": state.ema.model.state_dict(),
            "ema_updates": state.ema.updates,
            "opt": state.opt.state_dict(),
            "step": state.step,
            "gen": state.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": asdict(cfg),
            **({"companions": {k: v.state_dict() for k, v in state.companions.items()}} if state.companions else {}),
        },
        cfg.dir() / "last.pt",
    )
    save_weight_pair(state, cfg)


WEIGHT_PAIR = "weights.safetensors"


def save_weight_pair(state: RunState, cfg: TrainConfig) -> None:
    """fp16 raw and EMA weights beside last.pt, with the EMA's update count: a third of its size (no
    optimiser moments), so a run on a lent machine that returns only small files can still be continued,
    raw and EMA both, with `--set init=runs/MODEL/weights.safetensors` (the optimiser restarts)."""
    tensors = {**{f"raw.{k}": v for k, v in state.model.state_dict().items()},
               **{f"ema.{k}": v for k, v in state.ema.model.state_dict().items()}}
    for name, companion in state.companions.items():
        if isinstance(companion, nn.Module):
            tensors.update({f"{name}.{k}": v for k, v in companion.state_dict().items()})
    tmp = cfg.dir() / (WEIGHT_PAIR + ".tmp")
    save_safetensors(tensors, tmp, {"ema_updates": json.dumps(state.ema.updates), "step": json.dumps(state.step)},
                     dtype=torch.float16)
    os.replace(tmp, cfg.dir() / WEIGHT_PAIR)


def start_or_resume(model: nn.Module, cfg: TrainConfig, params: list | None = None,
                    betas: tuple[float, float] = (0.9, 0.999),
                    companions: dict[str, nn.Module | torch.optim.Optimizer] | None = None) -> RunState:
    """Fresh state seeded from cfg.seed, or the run's last checkpoint if one exists.

    A fresh run with ``--set init=PATH`` starts from exported weights (fine-tuning, e.g. from the
    committed model of an earlier session), the EMA from the same weights; from a run's weight pair
    (`save_weight_pair`) the raw weights and the EMA, with its update count, each continue.
    `companions` (built by the caller, already on the device) are restored from the checkpoint too, and
    companion modules from a weight pair that holds them.
    """
    torch.manual_seed(cfg.seed)
    ckpt = cfg.dir() / "last.pt"
    ema_init: tuple[dict, int] | None = None
    companions = companions or {}
    if not ckpt.exists() and cfg.extra.get("init"):
        ema_init = init_from(model, Path(cfg.extra["init"]), companions)
        print(f"[{cfg.name}] initialised from {cfg.extra['init']}")
    model.to(cfg.device)  # before the optimiser and EMA are built, so their state lives beside the weights
    opt = torch.optim.AdamW(
        params if params is not None else model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    state = RunState(model, EMA(model, cfg.ema_decay), opt, 0, gen, companions)
    if ema_init is not None:
        state.ema.model.load_state_dict(ema_init[0])
        state.ema.updates = ema_init[1]
    if ckpt.exists():
        data = torch.load(ckpt, weights_only=True, map_location="cpu")
        model.load_state_dict(data["model"])
        state.ema.model.load_state_dict(data["ema"])
        state.ema.updates = data["ema_updates"]
        opt.load_state_dict(data["opt"])
        state.step = data["step"]
        gen.set_state(data["gen"])
        torch.set_rng_state(data["torch_rng"])
        for name, companion in companions.items():
            companion.load_state_dict(data["companions"][name])
        print(f"[{cfg.name}] resumed at step {state.step} from {ckpt}")
    return state


def init_from(model: nn.Module, path: Path,
              companions: dict[str, nn.Module | torch.optim.Optimizer] | None = None) -> tuple[dict, int] | None:
    """Load exported weights (e.g. the committed model of an earlier session) into the model; for a weight
    pair, load its raw half (and any companion module it holds) and return the EMA half and update count
    for the caller's EMA."""
    from nodegraph.models.checkpoint import check_compatible, load_state_dict, read_metadata

    state = load_state_dict(path, dtype=torch.float32)
    if not any(k.startswith("raw.") for k in state):
        check_compatible(model, state, f"init={path}")
        model.load_state_dict(state)
        return None
    raw = {k[4:]: v for k, v in state.items() if k.startswith("raw.")}
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    check_compatible(model, raw, f"init={path} (raw half)")
    check_compatible(model, ema, f"init={path} (EMA half)")
    model.load_state_dict(raw)
    for name, companion in (companions or {}).items():
        part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")}
        if part and isinstance(companion, nn.Module):
            check_compatible(companion, part, f"init={path} ({name})")
            companion.load_state_dict(part)
    return ema, int(read_metadata(path).get("ema_updates", 0))


class Logger:
    def __init__(self, cfg: TrainConfig):
        cfg.dir().mkdir(parents=True, exist_ok=True)
        self.path = cfg.dir() / "log.jsonl"
        self.t0 = time.time()

    def log(self, **row: object) -> None:
        row = {"time": round(time.time() - self.t0, 1), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def hardware_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU"
    return f"{os.cpu_count()}-core CPU"


def fit_steps_to_deadline(cfg: TrainConfig, step: int, seconds_per_step: float, now: float, cap: int = 0) -> int:
    """The step count that ends this invocation by ``cfg.deadline``, planned from the measured speed and at
    most ``cap`` (default ``cfg.steps``).

    Re-planning early (still inside the lr warm-up) lets the cosine decay finish on time instead of a
    run being cut off at a high learning rate; 10% of the remaining time is kept for evaluation.
    """
    remaining = cfg.deadline - now
    return max(step + 1, min(cap or cfg.steps, step + int(0.9 * remaining / seconds_per_step)))


def train_loop(
    cfg: TrainConfig,
    state: RunState,
    loss_fn: Callable[[nn.Module, int], tuple[torch.Tensor, dict[str, float]]],
    evaluate: Callable[[RunState], dict[str, float]] | None = None,
    on_checkpoint: Callable[[RunState], None] | None = None,
    plan_after: int = 50,
) -> RunState:
    """The shared optimisation loop: lr schedule, clipping, EMA, periodic checkpoint and eval.

    With ``cfg.deadline`` the run measures its first ``plan_after`` steps and shortens ``cfg.steps`` so
    that it ends (with its final checkpoint and evaluation) by then; the time spent before the loop
    (rendering the pool, loading CLIP) counts, since the deadline is set when the command starts. It plans
    once more after the next ``plan_after`` steps from their speed alone: the first steps carry one-off
    costs (on a GPU, CUDA's start-up made them 1.3x slower, and a plan from them alone left 24% of a
    6-minute budget unused).
    """
    torch.set_num_threads(cfg.threads)
    log = Logger(cfg)
    model = state.model.train()
    params = [p for g in state.opt.param_groups for p in g["params"]]
    window: list[float] = []
    t_last = t_planned = time.time()
    first_step = state.step
    cap = cfg.steps  # re-planning may lengthen a run planned short again, never beyond the steps asked for
    # the card reads where and how each segment ran (its wall time means little without the hardware)
    log.log(step=state.step, device=cfg.device, hardware=hardware_name(cfg.device), batch_size=cfg.batch_size,
            lr_max=cfg.lr)
    while state.step < cfg.steps:
        if cfg.deadline and state.step - first_step in (plan_after, 2 * plan_after):
            now = time.time()
            planned = fit_steps_to_deadline(cfg, state.step, (now - t_planned) / plan_after, now, cap)
            t_planned = now
            if planned != cfg.steps:
                log.log(step=state.step, planned_steps=planned, seconds_left=round(cfg.deadline - now, 1))
                cfg.steps = planned
        for g in state.opt.param_groups:
            g["lr"] = lr_at(state.step, cfg)
        loss, stats = loss_fn(model, state.step)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        state.opt.step()
        state.ema.update(model)
        state.step += 1
        window.append(loss.item())
        if state.step % cfg.log_every == 0:
            now = time.time()
            log.log(step=state.step, loss=sum(window) / len(window), gnorm=float(gnorm),
                    lr=state.opt.param_groups[0]["lr"], s_per_step=(now - t_last) / cfg.log_every, **stats)
            window.clear()
            t_last = now
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
            save_state(state, cfg)
            if on_checkpoint is not None:
                on_checkpoint(state)
        if evaluate is not None and (state.step % cfg.eval_every == 0 or state.step == cfg.steps):
            model.eval()
            log.log(step=state.step, **evaluate(state))
            model.train()
    return state


def export(model: nn.Module, path: Path, metadata: dict[str, object]) -> None:
    """Write fp16 weights with the architecture config in the metadata."""
    save_safetensors(model.state_dict(), path, {k: json.dumps(v) for k, v in metadata.items()}, dtype=torch.float16)


def export_if_best(
    state: RunState, cfg: TrainConfig, scores: dict[str, float], out: Path, metadata: dict[str, object],
    per_weights: dict[str, dict[str, object]] | None = None,
) -> dict[str, float]:
    """Export whichever of raw / EMA weights scores higher, if it beats the run's best so far.

    `scores` holds "raw" and "ema" (higher is better); `per_weights` holds metadata that describes one
    of them (e.g. its accuracy table), so the file records the numbers of the weights it holds. The best
    score is kept in the run directory so a resumed run does not overwrite better weights with worse
    ones; a best scored under another metric (the code's metric changed since) does not count.
    """
    best_file = cfg.dir() / "best.json"
    best = json.loads(best_file.read_text()) if best_file.exists() else {}
    if best.get("metric") != metadata.get("metric"):
        best = {"score": float("-inf")}
    which = "ema" if scores["ema"] >= scores["raw"] else "raw"
    if scores[which] > best["score"]:
        model = state.ema.model if which == "ema" else state.model
        meta = {**metadata, **(per_weights or {}).get(which, {}), "weights": which, "step": state.step,
                "score": scores[which]}
        export(model, out, meta)
        best = {"score": scores[which], "step": state.step, "weights": which, "metric": metadata.get("metric")}
        best_file.parent.mkdir(parents=True, exist_ok=True)
        best_file.write_text(json.dumps(best))
    return {"best": best["score"], "best_step": best.get("step", -1)}
