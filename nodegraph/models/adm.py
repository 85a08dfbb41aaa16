"""The ADM UNet family as OpenAI released it: guided-diffusion's UNets (unconditional, class-conditional,
super-resolution) and noisy classifiers, and the UNet half of GLIDE and of Karlo's decoder.

Module and parameter names follow the published checkpoints (`input_blocks.3.0.in_layers.2.weight`,
`middle_block.1.qkv.weight`, `out.2.weight`, ...), so a released state dict loads with strict key
matching; `docs/real_checkpoints.md` lists the mapping. Written from the papers and the reference
repositories' behaviour, with these details that decide the numbers:

- timestep embedding: [cos, sin] of t·10000^(-i/half), i < half = model_channels/2 (cos first), then
  Linear -> SiLU -> Linear to 4·model_channels; class labels add a learned embedding to it.
- ResBlock: GroupNorm(32) -> SiLU -> conv3x3, the embedding through SiLU -> Linear either added to the
  features (`use_scale_shift_norm=False`) or applied as GroupNorm(h)·(1 + scale) + shift before the
  second SiLU -> dropout -> conv3x3; a 1x1 conv on the skip when the width changes. With
  `resblock_updown` the down/up-sampling happens inside a ResBlock, between its first norm+SiLU and its
  first conv (nearest x2 up, 2x2 average pool down) and on the skip path.
- attention: GroupNorm -> 1x1 conv to q, k, v -> softmax(q·k / sqrt(d)) with q and k each scaled by
  d^(-1/4) -> 1x1 conv, residual. The qkv channels are laid out per head ([q_h, k_h, v_h] for each head h,
  the "legacy" order) or per role ([q_1..q_H, k_1..k_H, v_1..v_H] with `use_new_attention_order`). GLIDE
  and Karlo project their text tokens with a 1x1 conv (`encoder_kv`, laid out [k_h, v_h] per head) and
  put those keys and values before the image's own; Karlo adds a padding mask over the text tokens.
- GroupNorm is computed in float32 and cast back, so `use_fp16` (the torso's convolutions in float16,
  norms and embeddings in float32, softmax in float32) reproduces the released half-precision models.
- the output: GroupNorm -> SiLU -> conv3x3 to 2C channels with a learned variance (`learn_sigma`), else C.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.xf import LayerNorm, Transformer

# ---------------------------------------------------------------------------------------------- configs


@dataclass
class ADMConfig:
    """Architecture of an ADM UNet. Field names follow guided-diffusion's flags, except `attention_ds`:
    the downsampling rates (1, 2, 4, ...) whose levels get attention, i.e. image_size // resolution for
    each entry of the `--attention_resolutions` flag (see `attention_ds_from_resolutions`)."""

    image_size: int = 64  # what it was trained at; the network itself is fully convolutional
    in_channels: int = 3  # channels of x (the extra conditioning channels are added by `low_res`/`inpaint`)
    model_channels: int = 128
    out_channels: int = 3  # 2 * in_channels with a learned variance
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (2, 4, 8)
    dropout: float = 0.0
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    conv_resample: bool = True
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = -1  # > 0 overrides num_heads: heads = channels // num_head_channels
    num_heads_upsample: int = -1  # -1 = num_heads
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    use_fp16: bool = False
    low_res: bool = False  # super-resolution: an upsampled low-res image is concatenated to x
    inpaint: bool = False  # GLIDE inpainting: [image * mask, mask] are concatenated to x
    encoder_channels: int | None = None  # width of the text tokens every attention layer also attends to
    middle_attention: bool = True  # Karlo's super-resolution UNets have none

    def __post_init__(self) -> None:
        self.attention_ds = tuple(int(d) for d in self.attention_ds)
        self.channel_mult = tuple(_int_if_whole(m) for m in self.channel_mult)
        if self.use_new_attention_order and self.encoder_channels:
            raise ValueError("text attention (encoder_channels) exists only with the legacy attention order")

    @property
    def net_in_channels(self) -> int:
        """Channels of the first convolution: x, then [image * mask, mask], then the low-res image."""
        c = self.in_channels
        return c + (c + 1 if self.inpaint else 0) + (c if self.low_res else 0)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ADMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ADMClassifierConfig:
    """guided-diffusion's noisy classifier: the encoder half of the UNet and a pooling head."""

    image_size: int = 64  # the attention pool's position table is sized for it
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 1000
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (2, 4, 8)
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    conv_resample: bool = True
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    use_fp16: bool = False
    pool: str = "attention"  # "attention" | "adaptive" | "spatial" | "spatial_v2"

    def __post_init__(self) -> None:
        self.attention_ds = tuple(int(d) for d in self.attention_ds)
        self.channel_mult = tuple(_int_if_whole(m) for m in self.channel_mult)
        if self.pool not in ("attention", "adaptive", "spatial", "spatial_v2"):
            raise ValueError(f"unknown classifier pool {self.pool!r}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ADMClassifierConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _int_if_whole(m: float) -> float:
    return int(m) if float(m).is_integer() else float(m)


def attention_ds_from_resolutions(image_size: int, resolutions: str | tuple[int, ...]) -> tuple[int, ...]:
    """guided-diffusion's `--attention_resolutions 32,16,8` at `image_size` -> downsampling rates."""
    res = [int(r) for r in resolutions.split(",")] if isinstance(resolutions, str) else list(resolutions)
    return tuple(image_size // r for r in res)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The channel multipliers guided-diffusion and GLIDE pick for an image size when none is given."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image size {image_size}")
    return table[image_size]


# ----------------------------------------------------------------------------------------- primitives


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = max_period^(-i/half), computed in float32; odd dims get a 0."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm over 32 groups computed in float32 (the weights stay float32 in half-precision models)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q [N, d, T], k and v [N, d, S] -> [N, d, T]. q and k are scaled by d^(-1/4) each before the product
    (it keeps float16 logits in range); the softmax runs in float32."""
    scale = q.shape[1] ** -0.25
    logits = torch.einsum("ndt,nds->nts", q * scale, k * scale)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.einsum("nts,nds->ndt", weights, v)


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    if num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(f"{channels} channels cannot be split into heads of {num_head_channels}")
        return channels // num_head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
    return num_heads


# ------------------------------------------------------------------------------------------- layers


class ResBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        use_scale_shift_norm: bool,
        resample: str | None = None,  # None | "up" | "down"
    ):
        super().__init__()
        self.scale_shift = use_scale_shift_norm
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        # Resampling sits between the first activation and the first conv, and on the skip path too.
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, out_act, drop, out_conv = self.out_layers
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        return self.skip_connection(x) + out_conv(drop(out_act(h)))


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op`), or a parameter-free 2x2 average pool without `conv_resample`."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (`conv`) with `conv_resample`."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class AttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map, optionally also over projected text tokens."""

    def __init__(self, channels: int, heads: int, new_order: bool, encoder_channels: int | None = None):
        super().__init__()
        self.heads = heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        if encoder_channels:
            self.encoder_kv = nn.Conv1d(encoder_channels, 2 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, C, H, W]; context [B, E, L] text tokens (channels first); context_bias [B, L] additive
        logits (0 or -inf) for those tokens."""
        b, c, *spatial = x.shape
        n = b * self.heads
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))
        length = qkv.shape[-1]
        if self.new_order:
            q, k, v = (part.reshape(n, c // self.heads, length) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(n, 3 * c // self.heads, length).chunk(3, dim=1)
        bias = None
        if context is not None and hasattr(self, "encoder_kv"):
            ek, ev = self.encoder_kv(context).reshape(n, 2 * c // self.heads, -1).chunk(2, dim=1)
            # The text's keys and values come first, then the image's own.
            k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
            if context_bias is not None:
                full = F.pad(context_bias, (0, length), value=0.0)  # image tokens are always visible
                bias = full.repeat_interleave(self.heads, dim=0)[:, None, :]
        h = _attention(q, k, v, bias).reshape(b, c, length)
        return x + self.proj_out(h).reshape(b, c, *spatial)


class Stage(nn.ModuleList):
    """One entry of input_blocks / middle_block / output_blocks: layers applied in order, each given what
    it takes (ResBlocks the embedding, attention the text context)."""

    def forward(self, h, emb, context=None, context_bias=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, context, context_bias)
            else:
                h = layer(h)
        return h


def _convert_convs(module: nn.Module, dtype: torch.dtype) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            m.to(dtype)


# -------------------------------------------------------------------------------------------- UNet


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel (and SuperResModel with `low_res`), GLIDE's inpainting inputs, and
    the text attention GLIDE and Karlo build on (`encoder_channels`)."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.torso_dtype = torch.float32
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, cfg.dropout, cfg.use_scale_shift_norm, resample)

        def attn(ch: int, num_heads: int) -> AttentionBlock:
            heads = _heads(ch, num_heads, cfg.num_head_channels)
            return AttentionBlock(ch, heads, cfg.use_new_attention_order, cfg.encoder_channels)

        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.net_in_channels, ch, 3, padding=1)])])
        skips = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                down = res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(Stage([down]))
                skips.append(ch)
                ds *= 2
        middle: list[nn.Module] = [res(ch, ch)]
        if cfg.middle_attention:
            middle.append(attn(ch, cfg.num_heads))
        middle.append(res(ch, ch))
        self.middle_block = Stage(middle)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, heads_up))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        if cfg.use_fp16:
            self.convert_torso(torch.float16)

    def convert_torso(self, dtype: torch.dtype) -> ADMUNet:
        """Run the convolutions of input, middle and output blocks in `dtype` (the released models'
        `use_fp16`); norms, embeddings and the output layer stay float32."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            _convert_convs(part, dtype)
        self.torso_dtype = dtype
        return self

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        if self.cfg.num_classes is not None:
            if y is None:
                raise ValueError("this model is class-conditional: pass y (class labels)")
            emb = emb + self.label_emb(y)
        return emb

    def net_input(
        self,
        x: torch.Tensor,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = [x]
        if self.cfg.inpaint:
            # An absent image / mask means "nothing known": zeros, as GLIDE does.
            image = torch.zeros_like(x) if inpaint_image is None else inpaint_image
            mask = torch.zeros_like(x[:, :1]) if inpaint_mask is None else inpaint_mask
            parts += [image * mask, mask]
        if self.cfg.low_res:
            if low_res is None:
                raise ValueError("this is a super-resolution model: pass low_res")
            if low_res.shape[-2:] != x.shape[-2:]:
                low_res = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
            parts.append(low_res)
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def run_blocks(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UNet proper on the assembled input h; returns the output layer's result in h's dtype."""
        dtype = h.dtype
        h = h.to(self.torso_dtype)
        if context is not None:
            context = context.to(self.torso_dtype)
        skips = []
        for stage in self.input_blocks:
            h = stage(h, emb, context, context_bias)
            skips.append(h)
        h = self.middle_block(h, emb, context, context_bias)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, context_bias)
        return self.out(h.to(dtype))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, H, W] at timesteps t [B] (original indices); y [B] class labels for class-conditional
        models; low_res [B, C, h, w] for super-resolution (bilinearly resized to x's size)."""
        return self.run_blocks(self.net_input(x, low_res, inpaint_image, inpaint_mask), self.embed(t, y))


# -------------------------------------------------------------------------------------- classifier


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token plus every pixel, a learned position table, one
    attention layer (per-role qkv layout), the mean token's output projected to the logits."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_channels: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(channels, spatial**2 + 1))
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.heads = channels // head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        qkv = self.qkv_proj(x)
        n, length = b * self.heads, qkv.shape[-1]
        q, k, v = (part.reshape(n, c // self.heads, length) for part in qkv.chunk(3, dim=1))
        h = _attention(q, k, v, None).reshape(b, c, length)
        return self.c_proj(h)[:, :, 0]


class ADMClassifier(nn.Module):
    """guided-diffusion's EncoderUNetModel: the noisy ImageNet classifier of classifier guidance."""

    def __init__(self, cfg: ADMClassifierConfig):
        super().__init__()
        self.cfg = cfg
        mc, emb_dim = cfg.model_channels, cfg.time_embed_dim
        self.torso_dtype = torch.float32
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, 0.0, cfg.use_scale_shift_norm, resample)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, _heads(ch, cfg.num_heads, cfg.num_head_channels), cfg.use_new_attention_order)

        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(cfg.in_channels, ch, 3, padding=1)])])
        feature_size = ch  # the spatial pools concatenate every block's mean
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(Stage(layers))
                feature_size += ch
            if level < len(cfg.channel_mult) - 1:
                down = res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(Stage([down]))
                feature_size += ch
                ds *= 2
        self.middle_block = Stage([res(ch, ch), attn(ch), res(ch, ch)])
        feature_size += ch
        if cfg.pool == "attention":
            head = AttentionPool2d(cfg.image_size // ds, ch, cfg.num_head_channels, cfg.out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), head)
        elif cfg.pool == "adaptive":
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(ch, cfg.out_channels, 1), nn.Flatten()
            )
        elif cfg.pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, cfg.out_channels))
        else:
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), GroupNorm32(2048), nn.SiLU(), nn.Linear(2048, cfg.out_channels)
            )
        if cfg.use_fp16:
            self.convert_torso(torch.float16)

    def convert_torso(self, dtype: torch.dtype) -> ADMClassifier:
        for part in (self.input_blocks, self.middle_block):
            _convert_convs(part, dtype)
        self.torso_dtype = dtype
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits [B, out_channels] of noised images x [B, C, H, W] at timesteps t [B]."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        spatial = self.cfg.pool.startswith("spatial")
        means = []
        h = x.to(self.torso_dtype)
        for stage in self.input_blocks:
            h = stage(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.to(x.dtype))


# ------------------------------------------------------------------------------------- GLIDE text UNet


@dataclass
class GlideConfig(ADMConfig):
    """GLIDE's text-conditional UNet: an ADM UNet plus a transformer over the caption's tokens, whose
    last token (projected) is added to the timestep embedding and whose every token is attended to by
    each attention layer (`encoder_channels` = xf_width)."""

    text_ctx: int = 128
    xf_width: int = 512
    xf_layers: int = 16
    xf_heads: int = 8
    xf_final_ln: bool = True
    xf_padding: bool = True
    n_vocab: int = 50257

    def __post_init__(self) -> None:
        self.encoder_channels = self.xf_width or None
        super().__post_init__()

    @classmethod
    def from_dict(cls, d: dict) -> GlideConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class GlideUNet(ADMUNet):
    """GLIDE base (64x64), upsampler (`low_res`), and their inpainting variants (`inpaint`)."""

    def __init__(self, cfg: GlideConfig):
        super().__init__(cfg)
        self.cfg: GlideConfig = cfg
        w = cfg.xf_width
        self.transformer = Transformer(w, cfg.xf_layers, cfg.xf_heads)
        self.final_ln = LayerNorm(w) if cfg.xf_final_ln else None
        self.token_embedding = nn.Embedding(cfg.n_vocab, w)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.text_ctx, w))
        self.transformer_proj = nn.Linear(w, cfg.time_embed_dim)
        if cfg.xf_padding:
            self.padding_embedding = nn.Parameter(torch.zeros(cfg.text_ctx, w))
        self.text_dtype = torch.float32
        if cfg.use_fp16:
            self.convert_torso(torch.float16)

    def convert_torso(self, dtype: torch.dtype) -> GlideUNet:
        super().convert_torso(dtype)
        if hasattr(self, "transformer"):
            # As released: the transformer's linear layers, the token table and the pooled projection
            # go to half precision; the position and padding tables and the layer norms stay float32.
            for m in self.transformer.modules():
                if isinstance(m, nn.Linear):
                    m.to(dtype)
            self.token_embedding.to(dtype)
            self.transformer_proj.to(dtype)
            self.text_dtype = dtype
        return self

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, text_ctx] -> (pooled projection [B, 4·model_channels], token states [B, xf_width, L])."""
        xf = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.cfg.xf_padding:
            if mask is None:
                raise ValueError("GLIDE's text encoder needs the padding mask of its tokens")
            # Padding positions get a learned embedding instead of token + position.
            xf = torch.where(mask[..., None].bool(), xf, self.padding_embedding[None].to(xf.dtype))
        xf = self.transformer(xf.to(self.text_dtype))
        if self.final_ln is not None:
            xf = self.final_ln(xf)
        # The caption is summarised by the last position, padding included, as GLIDE was trained.
        return self.transformer_proj(xf[:, -1]), xf.permute(0, 2, 1)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """GLIDE's call: tokens [B, text_ctx] and their mask [B, text_ctx] (True = caption token)."""
        emb = self.embed(t)
        context = None
        if self.cfg.xf_width:
            if tokens is None:
                raise ValueError("GLIDE's UNet needs tokens (an empty caption's tokens for the unconditional half)")
            pooled, context = self.encode_text(tokens, mask)
            emb = emb + pooled.to(emb.dtype)
        return self.run_blocks(self.net_input(x, low_res, inpaint_image, inpaint_mask), emb, context)


__all__ = [
    "ADMClassifier",
    "ADMClassifierConfig",
    "ADMConfig",
    "ADMUNet",
    "AttentionBlock",
    "GlideConfig",
    "GlideUNet",
    "GroupNorm32",
    "ResBlock",
    "attention_ds_from_resolutions",
    "default_channel_mult",
    "timestep_embedding",
]
