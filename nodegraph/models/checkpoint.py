"""The one checkpoint loader: safetensors (or .pt read with weights_only=True), checked against the
architecture before any weight is copied, with errors that name the mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nodegraph.errors import CheckpointError


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], dtype: torch.dtype | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
        for k, v in state.items()
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    return path


def read_metadata(path: Path) -> dict[str, object]:
    """The JSON-decoded metadata of a safetensors file ({} for .pt files)."""
    path = _check_file(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    out: dict[str, object] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_state_dict(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint onto the CPU; never unpickles arbitrary objects."""
    path = _check_file(path)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            state = _unwrap(obj, path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints often nest the weights under "state_dict" or "model".
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat mapping of names to tensors")
    return obj


def check_compatible(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            parts.append(f"{title}: {shown}")
    raise CheckpointError(
        f"{what} does not match the architecture it is loaded into ({'; '.join(parts)}); "
        "check that the checkpoint and the chosen config are the same model"
    )


def build_checked(build: Callable[[], nn.Module], probe: Callable[[nn.Module], object],
                  state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """The network `build` makes, with `state` loaded, after proving the metadata describes it: the network is
    first built on the meta device (no memory, whatever sizes the metadata claims), `probe` runs a forward
    pass there (shapes only), and every key and shape is compared with the file. Any failure is a
    CheckpointError naming the file; only then is the real network built and the weights copied."""
    try:
        with torch.device("meta"):
            shell = build()
            probe(shell)
    except CheckpointError:
        raise
    except Exception as exc:  # an inconsistent config fails in construction or in the forward pass
        raise CheckpointError(f"{what}: its config does not describe a working network "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    check_compatible(shell, state, what)
    net = build()
    net.load_state_dict(state)
    return net


def load_into(model: nn.Module, path: Path, what: str | None = None) -> nn.Module:
    """Load a checkpoint into `model` after checking every key and shape."""
    state = load_state_dict(path)
    check_compatible(model, state, what or str(path))
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model
