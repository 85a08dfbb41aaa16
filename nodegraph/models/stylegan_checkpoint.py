"""Loading StyleGAN2 generators: the bundled Shapes World file and checkpoints in rosinality's layout.

rosinality's stylegan2-pytorch (whose `model.py` StyleCLIP and StyleGAN-NADA vendor) saves two kinds of
file, both read here with `torch.load(weights_only=True)`:
- a training checkpoint `{"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}` (`args` is an
  argparse Namespace of plain values, the one non-tensor object allowed to be rebuilt);
- a converted or adapted one, `{"g_ema", "latent_avg"}` (convert_weight.py, StyleCLIP) or `{"g_ema"}`
  (StyleGAN-NADA's outputs); a bare generator state dict is accepted too.
The generator is the EMA one (`g_ema`), which is what every sampler in those code bases uses.

The architecture is read from the weights, not assumed: the style width from `style.1.weight`, the
mapping depth from the `style.N` layers, the constant's width and side from `input.input`, the width of
every resolution from its convolutions and the number of resolutions from the toRGB layers, so the
reference's 512-wide tables, the bundled 32-px model and anything between load alike. What shapes cannot
tell is the mapping's learning-rate multiplier, which scales its weights at run time; every released
config uses 0.01, the default, and `lr_mlp=` overrides it. The network is then built on the meta device,
compared key by key and shape by shape (strict: a missing noise buffer is as wrong as a missing conv), and
only then allocated and loaded. Every failure is a CheckpointError naming the file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import build_checked, read_metadata
from nodegraph.models.config import from_metadata
from nodegraph.models.stylegan import GanModel, Generator, StyleGANConfig

KIND = "stylegan"
W_AVG_SAMPLES = 4096  # z draws averaged for the centre of W when the file does not carry it
W_AVG_SEED = 0


def load_generator(path: str | Path, device: torch.device | str = "cpu", lr_mlp: float | None = None) -> GanModel:
    """A GENERATOR from a bundled .safetensors file (config in its metadata) or a rosinality-layout file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    state, w_avg = read_generator_state(path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("kind") not in (None, KIND):
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint, not a StyleGAN generator")
    if "config" in meta:
        try:
            cfg = from_metadata(StyleGANConfig, meta["config"], str(path))
        except ValueError as exc:  # the config's own consistency checks (widths per resolution, sizes)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path}: its config does not describe a generator: {exc}") from None
    else:
        cfg = infer_config(state, str(path))
    if lr_mlp is not None:
        cfg.lr_mlp = lr_mlp

    def probe(shell: torch.nn.Module) -> None:
        shell.synthesis(torch.zeros(1, cfg.n_latent, cfg.style_dim))

    try:
        net: Generator = build_checked(lambda: Generator(cfg), probe, state, f"StyleGAN generator {path}")
    except ValueError as exc:  # the config's own consistency checks
        raise CheckpointError(f"{path}: {exc}") from None
    if w_avg is None:
        w_avg = net.mean_latent(W_AVG_SAMPLES, torch.Generator().manual_seed(W_AVG_SEED))
    elif w_avg.numel() != cfg.style_dim:
        raise CheckpointError(f"{path}: latent_avg has {w_avg.numel()} values but the generator's W is "
                              f"{cfg.style_dim}-dimensional")
    return GanModel(net, w_avg.float(), origin=str(path)).to(device)


def read_generator_state(path: Path) -> tuple[dict[str, Tensor], Tensor | None]:
    """The generator's tensors (fp32) and the file's mean latent, if it has one."""
    from nodegraph.models.real import _read_safetensors, _read_torch

    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        # rosinality's train.py pickles its argparse options beside the weights: plain values, nothing to run
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = _read_torch(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a mapping of names to weights")
    w_avg = obj.get("latent_avg")
    if "g_ema" in obj:
        state = obj["g_ema"]
    elif "g" in obj:
        raise CheckpointError(f"{path} has a training generator 'g' but no 'g_ema'; StyleGAN samples with the EMA "
                              "generator, save it as g_ema")
    elif any(k.startswith("style.") for k in obj):
        state, w_avg = {k: v for k, v in obj.items() if k != "latent_avg"}, obj.get("latent_avg")
    else:
        shown = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path} is not a StyleGAN2 generator in rosinality's layout: no 'g_ema' entry and "
                              f"no 'style.*' weights (its top-level keys: {shown})")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'g_ema' is not a mapping of names to tensors")
    if w_avg is not None and not isinstance(w_avg, Tensor):
        raise CheckpointError(f"{path}: 'latent_avg' is a {type(w_avg).__name__}, not a tensor")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, None if w_avg is None else w_avg.detach().float().reshape(-1)


def _shape(state: dict[str, Tensor], key: str, ndim: int, what: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{what} has no {key!r}: not a StyleGAN2 generator in rosinality's layout")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{what}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def infer_config(state: dict[str, Tensor], what: str) -> StyleGANConfig:
    """The generator's architecture from its weights' names and shapes (see the module docstring)."""
    style_dim = _shape(state, "style.1.weight", 2, what)[1]
    mlp = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    if mlp != list(range(1, len(mlp) + 1)):
        raise CheckpointError(f"{what}: mapping layers style.{mlp} are not numbered 1..n")
    _, c0, start, _ = _shape(state, "input.input", 4, what)
    n_up = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    channels = [c0] + [_shape(state, f"convs.{2 * i}.conv.weight", 5, what)[1] for i in range(n_up)]
    kernel: tuple[int, ...] = (1, 3, 3, 1)
    if n_up:
        k2d = state.get("convs.0.conv.blur.kernel")
        if k2d is None or k2d.dim() != 2 or k2d.shape[0] != k2d.shape[1]:
            raise CheckpointError(f"{what}: convs.0.conv.blur.kernel is missing or not a square 2-D kernel")
        row = k2d.sum(1)
        kernel = tuple(int(round(float(v))) for v in row / row.min()) if float(row.min()) > 0 else (1,) * len(row)
    try:
        return StyleGANConfig(size=start * 2**n_up, style_dim=style_dim, n_mlp=len(mlp), channels=tuple(channels),
                              start_size=start, blur_kernel=kernel)
    except ValueError as exc:
        raise CheckpointError(f"{what}: the weights do not describe a StyleGAN2 generator ({exc})") from None

