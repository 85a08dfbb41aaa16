"""A denoising network together with the diffusion process it was trained for.

Bundled checkpoints carry everything needed to rebuild both in their safetensors metadata:
`kind`, the network config, and `diffusion` = {schedule, timesteps, prediction, variance}.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nodegraph.diffusion import GaussianDiffusion, make_betas
from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import build_checked, load_state_dict, read_metadata
from nodegraph.models.config import MAX_INT, PRECISIONS, from_metadata
from nodegraph.models.inference_cache import Conv2d
from nodegraph.models.unet import UNet, UNetConfig

UNET_KINDS = ("decoder", "upsampler", "inpaint")


@dataclass
class DiffusionSpec:
    schedule: str = field(default="cosine", metadata={"choices": ("linear", "cosine")})
    timesteps: int = field(default=1000, metadata={"min": 2, "max": 100_000})
    prediction: str = field(default="eps", metadata={"choices": ("eps", "x0", "v")})
    variance: str = field(default="learned_range",
                          metadata={"choices": ("fixed_small", "fixed_large", "learned_range")})

    def build(self) -> GaussianDiffusion:
        return GaussianDiffusion(make_betas(self.schedule, self.timesteps), self.prediction, self.variance)


@dataclass
class DiffusionModel:
    kind: str
    net: nn.Module
    diffusion: GaussianDiffusion
    spec: DiffusionSpec
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def image_size(self) -> int:
        """The resolution a UNet samples at (images are resized to it)."""
        return int(self.net.cfg.image_size)

    @property
    def embed_dim(self) -> int:
        """The CLIP embedding width a prior samples."""
        return int(self.net.cfg.clip_dim)

    @property
    def low_res(self) -> int:
        """An upsampler's input resolution (recorded in its checkpoint)."""
        return int(self.meta.get("low_res", 32))

    @property
    def aug_level(self) -> int:
        """The noise level an upsampler's low-res input gets at sampling time (recorded in its checkpoint)."""
        return int(self.meta.get("aug_level", 0))

    def to(self, device: torch.device | str) -> DiffusionModel:
        self.net.to(device)
        return self

    @property
    def weight_dtype(self) -> torch.dtype:
        """What the network computes in; samplers keep x_t and their own arithmetic in fp32 whatever it is."""
        return next(self.net.parameters()).dtype

    @property
    def precision(self) -> str:
        """"bf16", "auto" or "fp32": what `with_precision` made of the network (a loaded model is "fp32")."""
        if self.weight_dtype == torch.bfloat16:
            return "bf16"
        convs = (m for m in self.net.modules() if isinstance(m, Conv2d))
        return "auto" if any(m.compute_dtype == torch.bfloat16 for m in convs) else "fp32"

    def compile_for_inference(self) -> DiffusionModel:
        """This model, its UNet's per-step work compiled for CPU inference from the next call on (in place; see
        models/compiled.py for what it costs and when the network runs as written instead)."""
        if self.kind not in UNET_KINDS:
            raise ValueError(f"compiling applies to the UNets ({', '.join(UNET_KINDS)}), not to a {self.kind}")
        self.net.compile_for_inference()
        return self

    @property
    def compiled(self) -> bool:
        return bool(getattr(self.net, "compiled", False))

    def with_precision(self, name: str, copy_weights: bool = True) -> DiffusionModel:
        """The model computing at precision `name`:

        - "fp32": as trained (this model itself when its weights are fp32).
        - "auto": fp32 weights and activations, with the UNets' convolutions (most of their arithmetic) done in
          bf16 where the CPU has native bf16 instructions (AVX512-BF16, AMX), about 1.8x faster there; plain
          fp32 elsewhere (other CPUs, CUDA, autograd). The prior has no convolutions and stays fp32.
        - "bf16": every weight and activation in bf16 (buffers such as the prior's embedding statistics stay
          fp32); fast on GPUs and on CPUs with native bf16, slower than fp32 on CPUs without.

        A new precision is a copy, and the model it came from is left as it was; a caller that owns this model
        alone (a loader, right after reading the file) may pass copy_weights=False to convert it in place."""
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
        if name == self.precision:
            return self
        net = copy.deepcopy(self.net) if copy_weights else self.net
        weights = torch.bfloat16 if name == "bf16" else torch.float32
        for p in net.parameters():
            p.data = p.data.to(weights)
        for module in net.modules():
            if isinstance(module, Conv2d):
                module.compute_dtype = torch.bfloat16 if name == "auto" else None
        return DiffusionModel(self.kind, net, self.diffusion, self.spec, self.meta) if copy_weights else self


def build_net(kind: str, config: UNetConfig | object) -> nn.Module:
    if kind in UNET_KINDS:
        return UNet(config)
    from nodegraph.models.prior import PriorTransformer

    return PriorTransformer(config)


def _probe(kind: str, net: nn.Module) -> None:
    """One forward pass with the shapes sampling gives the network (run on the meta device: shapes only)."""
    cfg, t = net.cfg, torch.zeros(1, dtype=torch.long)
    if kind == "prior":
        net(torch.zeros(1, cfg.clip_dim), t, torch.zeros(1, cfg.context_length, cfg.text_width),
            torch.ones(1, cfg.context_length, dtype=torch.bool), torch.zeros(1, cfg.clip_dim))
    else:
        net(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size), t, aug_level=t if cfg.aug_level else None)


def load_diffusion_model(path: Path, expect_kind: str | None = None) -> DiffusionModel:
    """Rebuild the network from the checkpoint's metadata and load its weights (fp16 files -> fp32).

    Every field of the metadata is checked (see nodegraph.models.config) and the network is proven on the
    meta device before any memory is allocated, so a damaged or hostile file is a CheckpointError.
    """
    meta = read_metadata(path)
    kind = meta.get("kind")
    if not isinstance(kind, str) or "config" not in meta:
        raise CheckpointError(
            f"{path} has no nodegraph metadata (kind/config); it was not exported by nodegraph.train"
        )
    kinds = (*UNET_KINDS, "prior")
    if kind not in kinds:
        raise CheckpointError(f"{path} holds a model of unknown kind {kind!r}; nodegraph loads {', '.join(kinds)}")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, but a {expect_kind!r} model is needed here")
    from nodegraph.models.prior import PriorConfig

    config = from_metadata(UNetConfig if kind in UNET_KINDS else PriorConfig, meta["config"], str(path))
    spec = from_metadata(DiffusionSpec, meta.get("diffusion", {}), f"{path} (diffusion)")
    _check_meta_numbers(meta, spec, path)
    if kind in UNET_KINDS and config.out_channels != 3 * (2 if spec.variance == "learned_range" else 1):
        raise CheckpointError(f"{path}: a {spec.variance!r} model of RGB images has "
                              f"{6 if spec.variance == 'learned_range' else 3} output channels, the config says "
                              f"{config.out_channels}")
    state = load_state_dict(path, dtype=torch.float32)
    net = build_checked(lambda: build_net(kind, config), lambda shell: _probe(kind, shell), state, str(path))
    if kind in UNET_KINDS:
        # NHWC conv weights: oneDNN then skips a layout reorder per convolution (~7% faster sampling on CPU).
        net = net.to(memory_format=torch.channels_last)
    return DiffusionModel(kind, net.eval().requires_grad_(False), spec.build(), spec, meta)


def _check_meta_numbers(meta: dict, spec: DiffusionSpec, path: Path) -> None:
    """The numbers an upsampler's metadata carries beside its config are read at sampling time: check them now."""
    for key, high in (("low_res", MAX_INT), ("aug_level", spec.timesteps - 1)):
        value = meta.get(key, 0)
        if type(value) is not int or not 0 <= value <= high:
            raise CheckpointError(f"{path}: metadata {key!r} must be an integer in [0, {high}], got {value!r}")
