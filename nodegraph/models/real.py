"""One loading path for the released checkpoints of the seed's model families.

`load_real(path)` reads a file without running any code from it (safetensors, or a .pt through
`torch.load(weights_only=True)`; TorchScript archives and pickles that name Python objects are refused
with the reason), unwraps `{"state_dict": ...}` and `module.` prefixes, recognises the family from the
key layout, reads the architecture from tensor shapes, fills what shapes cannot tell (attention heads,
attention order, training resolution) from the released configuration it matches or from the caller,
builds the network, checks every key and shape before copying a weight, and loads strictly. Every
failure is a `CheckpointError` that names the file and the problem.

Families (see `docs/real_checkpoints.md` for the key tables):

| family | released files | network |
| --- | --- | --- |
| `adm` | guided-diffusion `*_diffusion.pt`, `*_upsampler.pt`, `lsun_*.pt` | `adm.ADMUNet` |
| `adm_classifier` | guided-diffusion `*_classifier.pt` | `adm.ADMClassifier` |
| `glide` | GLIDE `base.pt`, `upsample.pt`, `base_inpaint.pt`, `upsample_inpaint.pt` | `adm.GlideUNet` |
| `glide_clip_image` / `glide_clip_text` | GLIDE `clip_image_enc.pt` / `clip_text_enc.pt` | `glide_clip.*` |
| `karlo_prior` / `_decoder` / `_sr` | Karlo `prior-*.ckpt`, `decoder-*.ckpt`, `improved-sr-*.ckpt` | `karlo.*` |
| `ddpm` | ermongroup/ddim, SDEdit's and DiffusionCLIP's `celeba_hq.ckpt` | `ddpm.DDPMUNet` |
| `openai_clip` | OpenAI CLIP weights (Karlo's ViT-L/14) as a state dict | open_clip `CLIP` in `clip.ClipModel` |
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from nodegraph.errors import CheckpointError
from nodegraph.models import real_diffusion as rd
from nodegraph.models.adm import (
    ADMClassifier,
    ADMClassifierConfig,
    ADMConfig,
    ADMUNet,
    GlideConfig,
    GlideUNet,
    attention_ds_from_resolutions,
)
from nodegraph.models.checkpoint import check_compatible
from nodegraph.models.ddpm import DDPMConfig, DDPMUNet
from nodegraph.models.glide_clip import (
    NoisedClipImageConfig,
    NoisedClipImageEncoder,
    NoisedClipTextConfig,
    NoisedClipTextEncoder,
)
from nodegraph.models.karlo import (
    KarloDecoder,
    KarloDecoderConfig,
    KarloPrior,
    KarloPriorConfig,
    KarloSuperRes,
    karlo_sr_config,
)
from nodegraph.models.real_diffusion import DiffusionSettings

State = dict[str, torch.Tensor]

FAMILIES = (
    "adm",
    "adm_classifier",
    "glide",
    "glide_clip_image",
    "glide_clip_text",
    "karlo_prior",
    "karlo_decoder",
    "karlo_sr",
    "ddpm",
    "openai_clip",
)

# Entries of OpenAI's CLIP state dicts that are not weights (TorchScript module attributes).
_OPENAI_CLIP_EXTRAS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class RealModel:
    """A loaded released model: the network (eval mode, no grad), its config and diffusion settings."""

    family: str
    variant: str  # "base", "upsample", "inpaint", "class_cond", "super_res", "classifier", ...
    net: Any  # nn.Module (for openai_clip: a nodegraph.models.clip.ClipModel)
    config: Any
    diffusion: DiffusionSettings | None
    path: Path
    preset: str | None = None  # the released configuration the file matched, if any
    tokenizer: Any = None  # GLIDE's caption tokenizer, attached by whoever loads a GLIDE UNet with its vocabulary

    @property
    def kind(self) -> str:
        """What the model is for, as socket types name it: the family, refined where one family has several
        roles ("glide_base", "glide_upsample", "glide_inpaint", "glide_upsample_inpaint", "adm_super_res")."""
        if self.family == "glide":
            return f"glide_{self.variant}"
        if self.family == "adm" and self.variant == "super_res":
            return "adm_super_res"
        return self.family

    @property
    def device(self) -> torch.device:
        first = next(iter(self.net.parameters()), None) if isinstance(self.net, nn.Module) else None
        return first.device if first is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> RealModel:
        """Move the network in place (its dtype stays)."""
        self.net.to(device)
        return self


@dataclass(frozen=True)
class Preset:
    """A released configuration: what the file's shapes cannot tell, and how the model is sampled."""

    family: str
    config: dict[str, Any]
    diffusion: DiffusionSettings | None
    files: str  # the released file names it describes


# --------------------------------------------------------------------------------------------- presets

_GD = dict(use_scale_shift_norm=True, resblock_updown=True, out_channels=6)
_GLIDE = dict(
    model_channels=192, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, out_channels=6,
    text_ctx=128, xf_width=512, xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True, n_vocab=50257,
    use_fp16=True, dropout=0.1,
)
_GLIDE_BASE = dict(_GLIDE, image_size=64, num_res_blocks=3, channel_mult=(1, 2, 3, 4), attention_ds=(2, 4, 8))
_GLIDE_UP = dict(_GLIDE, image_size=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(8, 16, 32),
                 low_res=True)


def _clf(size: int, depth: int) -> dict[str, Any]:
    mult = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4), 512: (0.5, 1, 1, 2, 2, 4, 4)}[size]
    return dict(image_size=size, model_channels=128, out_channels=1000, num_res_blocks=depth, channel_mult=mult,
                attention_ds=attention_ds_from_resolutions(size, "32,16,8"), num_head_channels=64,
                use_scale_shift_norm=True, resblock_updown=True, pool="attention")


PRESETS: dict[str, Preset] = {
    "adm-64-cond": Preset("adm", dict(
        _GD, image_size=64, model_channels=192, num_res_blocks=3, channel_mult=(1, 2, 3, 4), attention_ds=(2, 4, 8),
        num_classes=1000, num_head_channels=64, use_new_attention_order=True, use_fp16=True, dropout=0.1,
    ), rd.ADM_COSINE, "64x64_diffusion.pt"),
    "adm-128-cond": Preset("adm", dict(
        _GD, image_size=128, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4),
        attention_ds=(4, 8, 16), num_classes=1000, num_heads=4, use_fp16=True,
    ), rd.ADM_LINEAR, "128x128_diffusion.pt"),
    "adm-256-cond": Preset("adm", dict(
        _GD, image_size=256, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
        attention_ds=(8, 16, 32), num_classes=1000, num_head_channels=64, use_fp16=True,
    ), rd.ADM_LINEAR, "256x256_diffusion.pt"),
    "adm-256-uncond": Preset("adm", dict(
        _GD, image_size=256, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
        attention_ds=(8, 16, 32), num_head_channels=64, use_fp16=True,
    ), rd.ADM_LINEAR, "256x256_diffusion_uncond.pt, lsun_bedroom.pt, lsun_cat.pt, lsun_horse*.pt"),
    "adm-512-cond": Preset("adm", dict(
        _GD, image_size=512, model_channels=256, num_res_blocks=2, channel_mult=(0.5, 1, 1, 2, 2, 4, 4),
        attention_ds=(16, 32, 64), num_classes=1000, num_head_channels=64,
    ), rd.ADM_LINEAR, "512x512_diffusion.pt"),
    "adm-64-256-upsampler": Preset("adm", dict(
        _GD, image_size=256, model_channels=192, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
        attention_ds=(8, 16, 32), num_classes=1000, num_heads=4, use_fp16=True, low_res=True,
    ), rd.ADM_LINEAR, "64_256_upsampler.pt"),
    "adm-128-512-upsampler": Preset("adm", dict(
        _GD, image_size=512, model_channels=192, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
        attention_ds=(16, 32), num_classes=1000, num_head_channels=64, use_fp16=True, low_res=True,
    ), rd.ADM_LINEAR, "128_512_upsampler.pt"),
    "adm-classifier-64": Preset("adm_classifier", _clf(64, 4), rd.ADM_COSINE, "64x64_classifier.pt"),
    "adm-classifier-128": Preset("adm_classifier", _clf(128, 2), rd.ADM_LINEAR, "128x128_classifier.pt"),
    "adm-classifier-256": Preset("adm_classifier", _clf(256, 2), rd.ADM_LINEAR, "256x256_classifier.pt"),
    "adm-classifier-512": Preset("adm_classifier", _clf(512, 2), rd.ADM_LINEAR, "512x512_classifier.pt"),
    "glide-base": Preset("glide", _GLIDE_BASE, rd.GLIDE_BASE, "base.pt"),
    "glide-base-inpaint": Preset("glide", dict(_GLIDE_BASE, inpaint=True), rd.GLIDE_BASE, "base_inpaint.pt"),
    "glide-upsample": Preset("glide", _GLIDE_UP, rd.GLIDE_UPSAMPLE, "upsample.pt"),
    "glide-upsample-inpaint": Preset("glide", dict(_GLIDE_UP, inpaint=True), rd.GLIDE_UPSAMPLE,
                                     "upsample_inpaint.pt"),
    "glide-clip-image": Preset("glide_clip_image", dict(
        image_size=64, patch_size=4, width=768, heads=12, layers=12, embed_dim=512, n_timesteps=1000,
    ), rd.GLIDE_CLIP, "clip_image_enc.pt"),
    "glide-clip-text": Preset("glide_clip_text", dict(
        n_vocab=65536, context=77, width=512, heads=8, layers=12, embed_dim=512,
    ), None, "clip_text_enc.pt"),
    "karlo-prior": Preset("karlo_prior", dict(
        text_ctx=77, xf_width=2048, xf_layers=20, xf_heads=32, xf_final_ln=True, clip_dim=768,
    ), rd.KARLO_PRIOR, "prior-ckpt-step=01000000-of-01000000.ckpt (+ ViT-L-14_stats.th)"),
    "karlo-decoder": Preset("karlo_decoder", dict(
        image_size=64, model_channels=320, num_res_blocks=3, channel_mult=(1, 2, 3, 4), attention_ds=(2, 4, 8),
        num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, out_channels=6, dropout=0.1,
        clip_dim=768, clip_emb_mult=4, text_ctx=77, xf_width=1536,
    ), rd.KARLO_DECODER, "decoder-ckpt-step=01000000-of-01000000.ckpt"),
    "karlo-sr-64-256": Preset("karlo_sr", dict(karlo_sr_config().to_dict()), rd.KARLO_SR,
                              "improved-sr-ckpt-step=1.2M.ckpt"),
    "ddpm-celebahq": Preset("ddpm", dict(
        resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
    ), rd.DDPM_FIXED_SMALL, "celeba_hq.ckpt (SDEdit, DiffusionCLIP), LSUN bedroom / church"),
    "ddpm-cifar10": Preset("ddpm", dict(
        resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
    ), rd.DDPM_FIXED_LARGE, "ermongroup/ddim CIFAR-10"),
    "ddpm-celeba64": Preset("ddpm", dict(
        resolution=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
    ), rd.DDPM_FIXED_LARGE, "ermongroup/ddim CelebA 64x64"),
}

# What must agree between a file's shapes and a preset for the preset to describe it.
_STRUCTURE = {
    "adm": ("model_channels", "channel_mult", "num_res_blocks", "attention_ds", "num_classes", "low_res",
            "out_channels"),
    "adm_classifier": ("model_channels", "channel_mult", "num_res_blocks", "attention_ds", "out_channels", "pool"),
    "glide": ("model_channels", "channel_mult", "num_res_blocks", "attention_ds", "low_res", "inpaint", "xf_width",
              "xf_layers"),
    "karlo_decoder": ("model_channels", "channel_mult", "num_res_blocks", "attention_ds", "clip_dim", "xf_width"),
    "ddpm": ("ch", "ch_mult", "num_res_blocks"),
}


# ------------------------------------------------------------------------------------- reading files


def read_weights(path: str | Path) -> State:
    """The tensors of a checkpoint file, on the CPU, without running code from it.

    safetensors, or a PyTorch file read with `weights_only=True`. Unwraps `{"state_dict": ...}` (Lightning,
    Karlo), `{"model": ...}`, the ddim repository's `[model, optimizer, epoch, step, ema]` lists (the EMA
    weights, which it samples with), and a `module.` prefix on every key (DataParallel).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    state = _unwrap(obj, path)
    return _strip_common_prefix(state, "module.")


def _read_safetensors(path: Path) -> State:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for bad headers and short files
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_torch(path: Path) -> Any:
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path} is a TorchScript archive (as OpenAI's CLIP .pt files are): reading it means running the "
            "TorchScript code inside it, which nodegraph does not do with files it cannot vouch for. Export its "
            "weights once where you trust the file, e.g. `m = torch.jit.load(PATH, map_location='cpu'); "
            "safetensors.torch.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, OUT)`, and load "
            "the .safetensors file"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _pickle_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({', '.join(names[:5])})" if names else ""
        raise CheckpointError(
            f"{path} is a pickle that names Python objects beyond tensors{what}; rebuilding them would let the "
            "file run code, so it is refused. Re-save only its weights (a state dict of tensors, or "
            "safetensors) where you trust the file"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint (truncated or not one?): {e}") from e


# Globals a weights-only checkpoint legitimately names (tensor rebuilding, storages, dtypes, containers).
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "_codecs.encode", "numpy.")


def _pickle_globals(path: Path) -> list[str]:
    """The Python objects a zip-format torch file's pickle names, found by reading its opcodes (nothing
    is executed), minus the ones tensors themselves need; [] when the file cannot be scanned."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as z:
            data = next((z.read(n) for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if data is None:
            return []
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "GLOBAL" and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:
        return []
    return sorted({g for g in found if not g.startswith(_SAFE_GLOBAL_PREFIXES)})


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> State:
    if isinstance(obj, list | tuple) and obj and _is_state(obj[0]):
        # ermongroup/ddim training checkpoints: [model, optimizer, epoch, step, (ema)]; sample with the EMA.
        last = obj[-1]
        return dict(last) if _is_state(last) and set(last) == set(obj[0]) else dict(obj[0])
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "ema"):
            if key in obj and _is_state(obj[key]):
                return dict(obj[key])
        if _is_state(obj):
            return dict(obj)
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        if bad and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path} holds no weights: a mapping of {', '.join(map(str, bad))}, ...")
        if bad:
            raise CheckpointError(f"{path} mixes weights with other entries ({', '.join(map(str, bad))}); "
                                  "expected a flat mapping of names to tensors")
    raise CheckpointError(f"{path} does not hold a mapping of names to tensors (found {type(obj).__name__})")


def _strip_common_prefix(state: State, prefix: str) -> State:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _sub(state: State, prefix: str) -> State:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# -------------------------------------------------------------------------------------------- families


def detect_family(state: State) -> str | None:
    """The family whose key layout the state dict has, or None."""
    keys = set(state)

    def has(*names: str) -> bool:
        return all(n in keys for n in names)

    if any(k.startswith("model_first_steps.") for k in keys) and any(k.startswith("model_last_step.") for k in keys):
        return "karlo_sr"
    # Karlo's files nest the network under "model."; a bare copy of the network is accepted too.
    if has("model.prd_emb", "model.clip_img_proj.weight") or has("prd_emb", "clip_img_proj.weight"):
        return "karlo_prior"
    if has("model.clip_tok_proj.weight", "model.time_embed.0.weight") or has("clip_tok_proj.weight"):
        return "karlo_decoder"
    if has("blocks.input.patch_proj"):
        return "glide_clip_image"
    if has("blocks.input.w_voc"):
        return "glide_clip_text"
    if has("temb.dense.0.weight", "conv_in.weight"):
        return "ddpm"
    if has("visual.conv1.weight", "text_projection", "token_embedding.weight") or has(
        "visual.attnpool.positional_embedding", "text_projection"
    ):
        return "openai_clip"
    if has("time_embed.0.weight", "input_blocks.0.0.weight"):
        if has("token_embedding.weight") or any(k.startswith("transformer.resblocks.") for k in keys):
            return "glide"
        if "output_blocks.0.0.in_layers.0.weight" in keys or any(k.startswith("output_blocks.") for k in keys):
            return "adm"
        return "adm_classifier"
    return None


def _need(state: State, key: str, path: Path, family: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: cannot read the {family} architecture: its key {key!r} is missing "
                              "(a truncated or differently laid out file?)")
    return state[key]


def _indices(state: State, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def _mult(ch: int, model_channels: int) -> float:
    m = ch / model_channels
    return int(m) if m.is_integer() else m


def _adm_structure(state: State, path: Path, family: str) -> dict[str, Any]:
    """UNet fields readable from shapes (guided-diffusion, GLIDE and Karlo share this layout)."""
    te = _need(state, "time_embed.0.weight", path, family)
    mc = int(te.shape[1])
    first = _need(state, "input_blocks.0.0.weight", path, family)
    inputs = _indices(state, "input_blocks.")
    outputs = _indices(state, "output_blocks.")
    if not outputs:
        raise CheckpointError(f"{path}: no output_blocks: not a complete {family} UNet")
    # Each level but the first ends its output path with an upsampling layer after the ResBlock (and
    # attention): a ResBlock (resblock_updown) or a conv (`conv_resample`); both hold parameters.
    up_kind: set[str] = set()
    markers = 0
    for i in outputs:
        for j in _indices(state, f"output_blocks.{i}.")[1:]:
            if f"output_blocks.{i}.{j}.in_layers.0.weight" in state:
                up_kind.add("res")
            elif f"output_blocks.{i}.{j}.conv.weight" in state:
                up_kind.add("conv")
            else:
                continue
            markers += 1
    if markers:
        levels = markers + 1
    else:
        # Parameter-free resampling (no conv): the downsample blocks are gaps among input_blocks.
        levels = len(set(range(1, max(inputs) + 1)) - set(inputs)) + 1
    n_out = max(outputs) + 1
    if n_out % levels:
        raise CheckpointError(f"{path}: {n_out} output blocks cannot be split into {levels} levels")
    nrb = n_out // levels - 1
    mult, attention_ds = [], []
    for level in range(levels):
        idx = 1 + level * (nrb + 1)
        w = _need(state, f"input_blocks.{idx}.0.in_layers.2.weight", path, family)
        mult.append(_mult(int(w.shape[0]), mc))
        if f"input_blocks.{idx}.1.qkv.weight" in state:
            attention_ds.append(2**level)
    out_ch = int(_need(state, "input_blocks.1.0.in_layers.2.weight", path, family).shape[0])
    emb_out = int(_need(state, "input_blocks.1.0.emb_layers.1.weight", path, family).shape[0])
    enc = next((v for k, v in state.items() if k.endswith(".encoder_kv.weight")), None)
    fields_: dict[str, Any] = dict(
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=nrb,
        attention_ds=tuple(attention_ds),
        resblock_updown="res" in up_kind,
        conv_resample=markers > 0,  # without any resampling parameters, resampling is conv-free
        use_scale_shift_norm=emb_out == 2 * out_ch,
        middle_attention="middle_block.1.qkv.weight" in state,
        encoder_channels=int(enc.shape[1]) if enc is not None else None,
        net_in_channels=int(first.shape[1]),
    )
    if "out.2.weight" in state:
        fields_["out_channels"] = int(state["out.2.weight"].shape[0])
    if "label_emb.weight" in state:
        fields_["num_classes"] = int(state["label_emb.weight"].shape[0])
    return fields_


def _classifier_structure(state: State, path: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    fam = "adm_classifier"
    mc = int(_need(state, "time_embed.0.weight", path, fam).shape[1])
    last = max(_indices(state, "input_blocks."))

    def kind(i: int) -> str:
        if f"input_blocks.{i}.0.in_layers.0.weight" in state:
            return "res"
        return "conv" if f"input_blocks.{i}.0.op.weight" in state else "none"

    def widths(i: int) -> tuple[int, int]:
        return (int(state[f"input_blocks.{i}.0.in_layers.0.weight"].shape[0]),
                int(state[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]))

    def attn(i: int) -> bool:
        return f"input_blocks.{i}.1.qkv.weight" in state

    # Without an upsampling path a downsampling ResBlock has the same shapes as a plain one, so the level
    # boundaries are found by trying every split the shapes allow: widths change only at a level's
    # first block, a level's blocks all have attention or none, downsample blocks keep the width and
    # never carry attention, and all downsample blocks are of one kind.
    candidates = []
    for levels in range(1, last + 2):
        if (last + 1 - levels) % levels or (last + 1 - levels) // levels < 1:
            continue
        nrb = (last + 1 - levels) // levels
        mult, attention_ds, down_kinds, ok = [], [], set(), True
        for level in range(levels):
            start = 1 + level * (nrb + 1)
            blocks = range(start, start + nrb)
            if any(kind(i) != "res" for i in blocks) or any(widths(i)[0] != widths(i)[1] for i in blocks[1:]):
                ok = False
                break
            if len({attn(i) for i in blocks}) > 1:
                ok = False
                break
            mult.append(_mult(widths(start)[1], mc))
            if attn(start):
                attention_ds.append(2**level)
            if level < levels - 1:
                d = start + nrb
                down_kinds.add(kind(d))
                if attn(d) or (kind(d) == "res" and widths(d)[0] != widths(d)[1]):
                    ok = False
                    break
        if ok and len(down_kinds) <= 1:
            candidates.append(dict(num_res_blocks=nrb, channel_mult=tuple(mult), attention_ds=tuple(attention_ds),
                                   levels=levels, down=next(iter(down_kinds), "res")))
    if "num_res_blocks" in overrides:
        candidates = [c for c in candidates if c["num_res_blocks"] == overrides["num_res_blocks"]]
    if "channel_mult" in overrides:
        candidates = [c for c in candidates if _same(c["channel_mult"], overrides["channel_mult"])]
    if not candidates:
        raise CheckpointError(f"{path}: its input blocks fit no classifier layout (a truncated file?)")
    emb_out = int(_need(state, "input_blocks.1.0.emb_layers.1.weight", path, fam).shape[0])
    out: dict[str, Any] = dict(
        model_channels=mc,
        use_scale_shift_norm=emb_out == 2 * widths(1)[1],
        in_channels=int(_need(state, "input_blocks.0.0.weight", path, fam).shape[1]),
    )
    head = {k: v for k, v in state.items() if k.startswith("out.")}
    if "out.2.positional_embedding" in head:
        out["pool"] = "attention"
        out["out_channels"] = int(head["out.2.c_proj.weight"].shape[0])
        out["_pool_side"] = round((head["out.2.positional_embedding"].shape[1] - 1) ** 0.5)
    elif "out.3.weight" in head:
        out["pool"] = "adaptive" if head["out.3.weight"].ndim == 4 else "spatial_v2"
        out["out_channels"] = int(head["out.3.weight"].shape[0])
    else:
        out["pool"] = "spatial"
        out["out_channels"] = int(_need(state, "out.2.weight", path, fam).shape[0])
    out["_candidates"] = candidates
    return out


# -------------------------------------------------------------------------------- config inference


def _match_preset(family: str, inferred: dict[str, Any]) -> str | None:
    keys = _STRUCTURE.get(family)
    if keys is None:
        return None
    for name, p in PRESETS.items():
        if p.family != family:
            continue
        cfg = p.config
        if all(_same(cfg.get(k, _DEFAULTS[family].get(k)), inferred.get(k)) for k in keys):
            return name
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b, strict=True))
    return a == b


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: getattr(cls(), f.name) for f in fields(cls)}


_DEFAULTS = {
    "adm": _defaults(ADMConfig),
    "adm_classifier": _defaults(ADMClassifierConfig),
    "glide": _defaults(GlideConfig),
    "karlo_decoder": _defaults(KarloDecoderConfig),
    "ddpm": _defaults(DDPMConfig),
}


def _resolve_preset(family: str, config: str | None) -> Preset | None:
    if config is None:
        return None
    if config not in PRESETS:
        raise CheckpointError(f"unknown config {config!r}; known: {', '.join(PRESETS)}", input="config")
    preset = PRESETS[config]
    if preset.family != family:
        raise CheckpointError(f"config {config!r} is a {preset.family} config, but the file holds a {family} "
                              "model", input="config")
    return preset


def infer_config(
    family: str, state: State, path: Path, config: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[Any, str | None]:
    """(config dataclass, preset name) for a family's state dict (its file-level prefixes removed).

    With `config` (a PRESETS name) that released configuration is used as given. Otherwise the sizes are
    read from the shapes, the released configuration they match (if any) supplies what shapes cannot
    tell, and `overrides` come last."""
    overrides = dict(overrides or {})
    preset = _resolve_preset(family, config)
    if preset is not None:
        # A named configuration is taken as given; the strict key check then says where a file differs.
        return _apply(_CONFIG_CLASS[family], dict(preset.config), overrides, path), config
    builder = _INFER.get(family)
    if builder is None:
        raise CheckpointError(f"{path}: family {family!r} has no config to infer", input="family")
    return builder(state, path, overrides)


def _apply(cls: type, base: dict[str, Any], overrides: dict[str, Any], path: Path) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CheckpointError(f"{path}: {', '.join(unknown)} are not settings of {cls.__name__}; known: "
                              f"{', '.join(sorted(known))}", input="config")
    try:
        return cls(**{k: v for k, v in {**base, **overrides}.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {cls.__name__}: {e}", input="config") from e


def _heads_known(overrides: dict[str, Any]) -> bool:
    return any(k in overrides for k in ("num_heads", "num_head_channels"))


def _infer_adm(state: State, path: Path, overrides: dict[str, Any]) -> tuple[Any, str | None]:
    s = _adm_structure(state, path, "adm")
    net_in = s.pop("net_in_channels")
    s.pop("encoder_channels")
    # RGB models take 3 channels, super-resolution ones 3 + the 3 of the upsampled low-res image.
    s["low_res"] = bool(overrides.get("low_res", net_in == 6))
    s["in_channels"] = net_in // 2 if s["low_res"] else net_in
    s.setdefault("num_classes", None)
    name = _match_preset("adm", s)
    base = dict(PRESETS[name].config) if name else {}
    base.update(s)
    if name is None and (s["attention_ds"] or s["middle_attention"]) and not _heads_known(overrides):
        raise CheckpointError(
            f"{path}: a guided-diffusion UNet that matches no released configuration, and the number of attention "
            "heads cannot be read from its shapes; pass config=<one of "
            f"{', '.join(n for n, p in PRESETS.items() if p.family == 'adm')}> or num_heads= / num_head_channels= "
            "(and use_new_attention_order= if it was trained with it)", input="config")
    cfg = _apply(ADMConfig, base, overrides, path)
    return cfg, name


def _infer_classifier(state: State, path: Path, overrides: dict[str, Any]):
    s = _classifier_structure(state, path, overrides)
    candidates = s.pop("_candidates")
    side = s.pop("_pool_side", None)
    name = next((
        n for n, p in PRESETS.items()
        if p.family == "adm_classifier" and p.config["model_channels"] == s["model_channels"]
        and p.config["pool"] == s["pool"] and p.config["out_channels"] == s["out_channels"]
        and any(_same(p.config["channel_mult"], c["channel_mult"]) and p.config["num_res_blocks"] == c["num_res_blocks"]
                and _same(p.config["attention_ds"], c["attention_ds"]) for c in candidates)
    ), None)
    if name is not None:
        pc = PRESETS[name].config
        chosen = next((c for c in candidates if _same(c["channel_mult"], pc["channel_mult"])
                       and c["num_res_blocks"] == pc["num_res_blocks"]), candidates[0])
    elif len(candidates) == 1:
        chosen = candidates[0]
    else:
        options = "; ".join(f"num_res_blocks={c['num_res_blocks']}, channel_mult={c['channel_mult']}"
                            for c in candidates)
        raise CheckpointError(f"{path}: the classifier's level boundaries are ambiguous from its shapes ({options}); "
                              "pass num_res_blocks= or config=", input="config")
    levels = chosen.pop("levels")
    down = chosen.pop("down")
    s.update(chosen, resblock_updown=down == "res", conv_resample=down != "none")
    if side is not None:
        s["image_size"] = side * 2 ** (levels - 1)
    base = dict(PRESETS[name].config) if name else {}
    base.update(s)
    if name is None and not _heads_known(overrides):
        base.setdefault("num_head_channels", 64)  # every released classifier uses 64 channels per head
    return _apply(ADMClassifierConfig, base, overrides, path), name


def _infer_glide(state: State, path: Path, overrides: dict[str, Any]):
    s = _adm_structure(state, path, "glide")
    net_in = s.pop("net_in_channels")
    s.pop("encoder_channels")
    variants = {3: (False, False), 6: (True, False), 7: (False, True), 10: (True, True)}
    if net_in not in variants:
        raise CheckpointError(f"{path}: a GLIDE UNet with {net_in} input channels (expected 3, 6, 7 or 10)")
    s["low_res"], s["inpaint"] = variants[net_in]
    pos = _need(state, "positional_embedding", path, "glide")
    s["text_ctx"], s["xf_width"] = int(pos.shape[0]), int(pos.shape[1])
    s["n_vocab"] = int(_need(state, "token_embedding.weight", path, "glide").shape[0])
    s["xf_layers"] = len(_indices(state, "transformer.resblocks."))
    s["xf_final_ln"] = "final_ln.weight" in state
    s["xf_padding"] = "padding_embedding" in state
    name = _match_preset("glide", s)
    base = dict(PRESETS[name].config) if name else {"num_head_channels": 64, "xf_heads": max(1, s["xf_width"] // 64)}
    base.update(s)
    return _apply(GlideConfig, base, overrides, path), name


def _infer_glide_clip_image(state: State, path: Path, overrides: dict[str, Any]):
    fam = "glide_clip_image"
    proj = _need(state, "blocks.input.patch_proj", path, fam)
    pos = _need(state, "blocks.input.w_pos", path, fam)
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    grid = round((pos.shape[0] - 1) ** 0.5)
    s = dict(
        image_size=grid * patch, patch_size=patch, width=width, heads=max(1, width // 64),
        layers=len([k for k in state if re.fullmatch(r"blocks\.block_\d+\.f_attn\.f_q\.w", k)]),
        embed_dim=int(_need(state, "blocks.output.f.w", path, fam).shape[0]),
        n_timesteps=int(state["blocks.input.w_t"].shape[0]) if "blocks.input.w_t" in state else 0,
    )
    name = "glide-clip-image" if _same_cfg(s, "glide-clip-image") else None
    return _apply(NoisedClipImageConfig, s, overrides, path), name


def _infer_glide_clip_text(state: State, path: Path, overrides: dict[str, Any]):
    fam = "glide_clip_text"
    voc = _need(state, "blocks.input.w_voc", path, fam)
    pos = _need(state, "blocks.input.w_pos", path, fam)
    width = int(voc.shape[1])
    s = dict(
        n_vocab=int(voc.shape[0]), context=int(pos.shape[0]), width=width, heads=max(1, width // 64),
        layers=len([k for k in state if re.fullmatch(r"blocks\.block_\d+\.f_attn\.f_q\.w", k)]),
        embed_dim=int(_need(state, "blocks.output.f.w", path, fam).shape[0]),
    )
    name = "glide-clip-text" if _same_cfg(s, "glide-clip-text") else None
    return _apply(NoisedClipTextConfig, s, overrides, path), name


def _same_cfg(s: dict[str, Any], preset: str) -> bool:
    return all(_same(v, s.get(k)) for k, v in PRESETS[preset].config.items())


def _infer_karlo_prior(state: State, path: Path, overrides: dict[str, Any]):
    fam = "karlo_prior"
    pos = _need(state, "positional_embedding", path, fam)
    proj = _need(state, "clip_img_proj.weight", path, fam)
    width = int(pos.shape[-1])
    s = dict(
        text_ctx=int(pos.shape[1]) - 4, xf_width=width, xf_layers=len(_indices(state, "transformer.resblocks.")),
        xf_heads=max(1, width // 64), xf_final_ln="final_ln.weight" in state, clip_dim=int(proj.shape[1]),
    )
    return _apply(KarloPriorConfig, s, overrides, path), "karlo-prior" if _same_cfg(s, "karlo-prior") else None


def _infer_karlo_decoder(state: State, path: Path, overrides: dict[str, Any]):
    s = _adm_structure(state, path, "karlo_decoder")
    net_in = s.pop("net_in_channels")
    s["in_channels"] = net_in
    s["xf_width"] = s.pop("encoder_channels") or 0
    clip = _need(state, "clip_emb.weight", path, "karlo_decoder")
    s["clip_dim"] = int(clip.shape[1])
    tokens = int(_need(state, "clip_tok_proj.weight", path, "karlo_decoder").shape[0])
    s["clip_emb_mult"] = tokens // max(1, s["xf_width"])
    s["null_image_embed"] = "cf_param" in state
    name = _match_preset("karlo_decoder", s)
    base = dict(PRESETS[name].config) if name else {"num_head_channels": 64}
    base.update(s)
    return _apply(KarloDecoderConfig, base, overrides, path), name


def _infer_karlo_sr(state: State, path: Path, overrides: dict[str, Any]):
    first = _sub(state, "model_first_steps.")
    s = _adm_structure(first, path, "karlo_sr")
    net_in = s.pop("net_in_channels")
    s.pop("encoder_channels")
    s["in_channels"] = net_in // 2
    s["low_res"] = True
    base = karlo_sr_config().to_dict()
    base.update(s)
    cfg = _apply(ADMConfig, base, overrides, path)
    name = "karlo-sr-64-256" if _same(cfg.channel_mult, (1, 2, 3, 4)) and cfg.model_channels == 320 else None
    return cfg, name


def _infer_ddpm(state: State, path: Path, overrides: dict[str, Any]):
    fam = "ddpm"
    conv_in = _need(state, "conv_in.weight", path, fam)
    ch = int(conv_in.shape[0])
    levels = _indices(state, "down.")
    if not levels:
        raise CheckpointError(f"{path}: no down.N blocks: not a complete DDPM UNet")
    nrb = len(_indices(state, "down.0.block."))
    mult = tuple(int(_need(state, f"down.{i}.block.0.conv1.weight", path, fam).shape[0]) // ch for i in levels)
    attn_levels = [i for i in levels if f"down.{i}.attn.0.q.weight" in state]
    s: dict[str, Any] = dict(
        in_channels=int(conv_in.shape[1]), out_ch=int(_need(state, "conv_out.weight", path, fam).shape[0]), ch=ch,
        ch_mult=mult, num_res_blocks=nrb,
        resamp_with_conv=len(levels) == 1 or "down.0.downsample.conv.weight" in state,
    )
    name = _match_preset("ddpm", s)
    base = dict(PRESETS[name].config) if name else {}
    base.update(s)
    resolution = int(overrides.get("resolution", base.get("resolution", 256)))
    # Attention placement is structural (which levels have it); the resolution only names it.
    base["resolution"] = resolution
    base["attn_resolutions"] = tuple(resolution // 2**i for i in attn_levels)
    return _apply(DDPMConfig, base, {k: v for k, v in overrides.items() if k != "resolution"}, path), name


_CONFIG_CLASS: dict[str, type] = {
    "adm": ADMConfig,
    "adm_classifier": ADMClassifierConfig,
    "glide": GlideConfig,
    "glide_clip_image": NoisedClipImageConfig,
    "glide_clip_text": NoisedClipTextConfig,
    "karlo_prior": KarloPriorConfig,
    "karlo_decoder": KarloDecoderConfig,
    "karlo_sr": ADMConfig,
    "ddpm": DDPMConfig,
}

_INFER: dict[str, Callable[..., tuple[Any, str | None]]] = {
    "adm": _infer_adm,
    "adm_classifier": _infer_classifier,
    "glide": _infer_glide,
    "glide_clip_image": _infer_glide_clip_image,
    "glide_clip_text": _infer_glide_clip_text,
    "karlo_prior": _infer_karlo_prior,
    "karlo_decoder": _infer_karlo_decoder,
    "karlo_sr": _infer_karlo_sr,
    "ddpm": _infer_ddpm,
}


# -------------------------------------------------------------------------------------------- loading


def _prepare(family: str, state: State, path: Path) -> State:
    """The state dict as the family's module names it (Karlo's wrapper prefix removed)."""
    if family in ("karlo_prior", "karlo_decoder") and any(k.startswith("model.") for k in state):
        inner = _sub(state, "model.")
        others = sorted(k for k in state if not k.startswith("model."))
        if others:
            raise CheckpointError(f"{path}: a Karlo {family.split('_')[1]} checkpoint with keys outside its "
                                  f"'model.' prefix: {', '.join(others[:5])}")
        return inner
    return state


def _build(family: str, cfg: Any) -> tuple[nn.Module, str]:
    if family == "adm":
        variant = "super_res" if cfg.low_res else ("class_cond" if cfg.num_classes is not None else "uncond")
        return ADMUNet(replace(cfg, use_fp16=False)), variant
    if family == "adm_classifier":
        return ADMClassifier(replace(cfg, use_fp16=False)), "classifier"
    if family == "glide":
        variant = {(False, False): "base", (True, False): "upsample", (False, True): "inpaint",
                   (True, True): "upsample_inpaint"}[(cfg.low_res, cfg.inpaint)]
        return GlideUNet(replace(cfg, use_fp16=False)), variant
    if family == "glide_clip_image":
        return NoisedClipImageEncoder(cfg), "image"
    if family == "glide_clip_text":
        return NoisedClipTextEncoder(cfg), "text"
    if family == "karlo_prior":
        return KarloPrior(cfg), "prior"
    if family == "karlo_decoder":
        return KarloDecoder(replace(cfg, use_fp16=False)), "decoder"
    if family == "karlo_sr":
        return KarloSuperRes(cfg), "sr_64_256"
    if family == "ddpm":
        return DDPMUNet(cfg), "uncond"
    raise CheckpointError(f"unknown family {family!r}", input="family")


def _diffusion_for(family: str, cfg: Any, preset: str | None) -> DiffusionSettings | None:
    if preset is not None:
        return PRESETS[preset].diffusion
    if family == "adm":
        return rd.ADM_LINEAR if cfg.out_channels == 2 * cfg.in_channels else rd.ADM_LINEAR_FIXED
    if family == "glide":
        return rd.GLIDE_UPSAMPLE if cfg.low_res else rd.GLIDE_BASE
    return {
        "adm_classifier": rd.ADM_LINEAR,
        "glide_clip_image": rd.GLIDE_CLIP,
        "karlo_prior": rd.KARLO_PRIOR,
        "karlo_decoder": rd.KARLO_DECODER,
        "karlo_sr": rd.KARLO_SR,
        "ddpm": rd.DDPM_FIXED_SMALL,
    }.get(family)


def load_real(
    path: str | Path,
    family: str | None = None,
    config: str | Any | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    clip_stats: str | Path | None = None,
    **overrides: Any,
) -> RealModel:
    """Load a released checkpoint of one of `FAMILIES`.

    family: skip detection (else read from the keys). config: a `PRESETS` name, or a config dataclass
    used as-is (still checked key by key). overrides: config fields the shapes cannot tell (e.g.
    `num_head_channels=64, use_new_attention_order=True`). dtype: float16 / bfloat16 runs the UNets the
    way the released `use_fp16` models run (convolutions of the torso in half precision, norms and
    embeddings in float32), the transformers with half-precision linear layers; without it everything
    is float32, whatever `use_fp16` the config records. clip_stats: Karlo's `ViT-L-14_stats.th` for the
    prior (its samples are de-normalised with it). The returned network is in eval mode without grads.
    """
    path = Path(path)
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}", input="family")
    state = read_weights(path)
    detected = detect_family(state)
    if family is None:
        if detected is None:
            shown = ", ".join(list(state)[:6])
            raise CheckpointError(f"{path}: its keys ({shown}, ...) match none of the known layouts "
                                  f"({', '.join(FAMILIES)}); is it one of these models?")
        family = detected
    if family == "openai_clip":
        clip = load_openai_clip(path, state=state, **overrides)
        if dtype is not None:
            clip.model.to(dtype)
        return RealModel("openai_clip", "clip", clip.to(device), clip.model_name, None, path)
    state = _prepare(family, state, path)
    preset_name: str | None
    if config is None or isinstance(config, str):
        cfg, preset_name = infer_config(family, state, path, config, overrides)
    else:
        if not isinstance(config, _CONFIG_CLASS[family]):
            raise CheckpointError(f"{path} holds a {family} model, which takes a {_CONFIG_CLASS[family].__name__}, "
                                  f"not a {type(config).__name__}", input="config")
        cfg, preset_name = config, None
        if overrides:
            cfg = _apply(type(cfg), {f.name: getattr(cfg, f.name) for f in fields(cfg)}, overrides, path)
    # Check keys and shapes on a weightless (meta) copy first: a file that does not fit is reported
    # before gigabytes of randomly initialised weights are allocated.
    with torch.device("meta"):
        probe, _ = _build(family, cfg)
    check_compatible(probe, state, f"{family} checkpoint {path}")
    del probe
    net, variant = _build(family, cfg)
    expected = net.state_dict()
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    if family == "karlo_prior" and clip_stats is not None:
        net.set_clip_stats(*load_karlo_clip_stats(clip_stats, dim=cfg.clip_dim))
    if dtype is not None:
        _to_dtype(net, dtype)
    net = net.eval().requires_grad_(False).to(device)
    return RealModel(family, variant, net, cfg, _diffusion_for(family, cfg, preset_name), path, preset_name)


def _to_dtype(net: nn.Module, dtype: torch.dtype) -> None:
    if isinstance(net, KarloSuperRes):
        net.model_first_steps.convert_torso(dtype)
        net.model_last_step.convert_torso(dtype)
    elif hasattr(net, "convert_torso"):
        net.convert_torso(dtype)  # type: ignore[operator]
    else:
        # Linear, conv and embedding layers only, as the references' fp16 conversions do: the norms keep
        # float32 weights and compute in float32.
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Embedding):
                m.to(dtype)


def describe(path: str | Path, family: str | None = None, config: str | None = None, **overrides: Any) -> dict:
    """What `load_real` would build, without building it: family, matched preset, config, key count."""
    path = Path(path)
    state = read_weights(path)
    family = family or detect_family(state)
    if family is None:
        raise CheckpointError(f"{path}: its keys match none of the known layouts ({', '.join(FAMILIES)})")
    if family == "openai_clip":
        return {"family": family, "config": _openai_clip_config(state, path), "preset": None, "keys": len(state)}
    state = _prepare(family, state, path)
    cfg, preset = infer_config(family, state, path, config, overrides)
    return {"family": family, "config": cfg.to_dict(), "preset": preset, "keys": len(state)}


# ------------------------------------------------------------------------------------- Karlo / CLIP


def load_karlo_clip_stats(path: str | Path, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Karlo's `ViT-L-14_stats.th`: the (mean, std) of CLIP ViT-L/14 image embeddings, two [768] vectors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CLIP statistics file not found: {path}", input="clip_stats")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
        obj = (obj.get("mean"), obj.get("std"))
    else:
        obj = _read_torch(path)
        if isinstance(obj, dict):
            obj = (obj.get("mean"), obj.get("std"))
    ok = (isinstance(obj, list | tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)
          and obj[0].ndim == 1 and obj[0].shape == obj[1].shape)
    if not ok:
        raise CheckpointError(f"{path} does not hold a (mean, std) pair of equal-length vectors", input="clip_stats")
    mean, std = obj[0].float(), obj[1].float()
    if dim is not None and mean.shape[0] != dim:
        raise CheckpointError(f"{path} holds {mean.shape[0]}-d statistics, but the prior samples {dim}-d "
                              "embeddings", input="clip_stats")
    return mean, std


def _openai_clip_config(state: State, path: Path) -> dict[str, Any]:
    """open_clip vision/text configs read from an OpenAI-layout state dict (ViT or ModifiedResNet)."""
    fam = "openai_clip"
    vit = "visual.proj" in state
    if vit:
        conv = _need(state, "visual.conv1.weight", path, fam)
        grid = round((_need(state, "visual.positional_embedding", path, fam).shape[0] - 1) ** 0.5)
        vision = dict(
            width=int(conv.shape[0]), patch_size=int(conv.shape[-1]), image_size=int(conv.shape[-1]) * grid,
            layers=len([k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]),
        )
    else:
        counts = [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
        side = round((_need(state, "visual.attnpool.positional_embedding", path, fam).shape[0] - 1) ** 0.5)
        vision = dict(layers=tuple(counts), width=int(state["visual.layer1.0.conv1.weight"].shape[0]),
                      image_size=side * 32, patch_size=None)
    width = int(_need(state, "ln_final.weight", path, fam).shape[0])
    text = dict(
        context_length=int(_need(state, "positional_embedding", path, fam).shape[0]),
        vocab_size=int(_need(state, "token_embedding.weight", path, fam).shape[0]),
        width=width, heads=width // 64,
        layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )
    embed_dim = int(_need(state, "text_projection", path, fam).shape[1])
    return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}


def _open_clip_name(cfg: dict[str, Any]) -> str | None:
    """The open_clip model config (e.g. "ViT-L-14") with exactly these sizes, if there is one."""
    import open_clip

    for name in open_clip.list_models():
        known = open_clip.get_model_config(name)
        if not known or known.get("embed_dim") != cfg["embed_dim"] or "hf_model_name" in known.get("text_cfg", {}):
            continue
        v, t = known.get("vision_cfg", {}), known.get("text_cfg", {})
        if "timm_model_name" in v:
            continue
        same_v = all(_same(v.get(k), cfg["vision_cfg"].get(k)) if isinstance(cfg["vision_cfg"].get(k), tuple)
                     else v.get(k) == cfg["vision_cfg"].get(k) for k in ("width", "layers", "image_size", "patch_size"))
        same_t = all(t.get(k, d) == cfg["text_cfg"][k] for k, d in
                     (("width", 512), ("layers", 12), ("context_length", 77), ("vocab_size", 49408)))
        if same_v and same_t and v.get("head_width", 64) == 64 and t.get("heads", cfg["text_cfg"]["heads"]) == \
                cfg["text_cfg"]["heads"]:
            return name
    return None


def load_openai_clip(
    path: str | Path, quick_gelu: bool = True, model_name: str | None = None, state: State | None = None
):
    """An OpenAI-layout CLIP state dict (Karlo's ViT-L/14, or any OpenAI CLIP) as a `ClipModel`.

    Sizes are read from the shapes (as OpenAI's own loader does); when they equal a registered open_clip
    config (ViT-L-14, ViT-B-32, ...) that config is used, so its tokenizer and preprocessing come along.
    OpenAI's weights were trained with QuickGELU. The three integer entries OpenAI's files carry
    (input_resolution, context_length, vocab_size) are dropped.
    """
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    from nodegraph.models.clip import ClipModel, create_model

    path = Path(path)
    state = dict(read_weights(path) if state is None else state)
    for key in _OPENAI_CLIP_EXTRAS:
        state.pop(key, None)
    cfg = _openai_clip_config(state, path)
    name = model_name or _open_clip_name(cfg)
    if name is not None:
        if name not in open_clip.list_models():
            raise CheckpointError(f"unknown open_clip config {name!r}", input="config")
        model = create_model(name, quick_gelu)
    else:
        model = CLIP(cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=quick_gelu)
    check_compatible(model, state, f"openai_clip checkpoint {path}")
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    clip = ClipModel(model.eval().requires_grad_(False), name or "ViT-B-32")
    if name is None:
        # A size open_clip has no name for: its own tokenizer at this model's context length.
        clip.model_name = "openai-layout"
        clip.tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return clip


__all__ = [
    "FAMILIES",
    "PRESETS",
    "Preset",
    "RealModel",
    "describe",
    "detect_family",
    "infer_config",
    "load_karlo_clip_stats",
    "load_openai_clip",
    "load_real",
    "read_weights",
]
