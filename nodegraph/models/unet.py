"""ADM-style UNet (Dhariwal & Nichol; GLIDE; unCLIP decoder), sized for CPU training.

One class serves the decoder, the inpainting decoder and the upsamplers; the config says which
conditioning it takes:

- timestep: sinusoidal embedding -> MLP; every ResBlock applies it by scale-shift GroupNorm.
- CLIP image embedding (unCLIP): projected and added to the timestep embedding, and projected to
  `image_tokens` extra context tokens.
- CLIP text token sequence (GLIDE): projected into every attention layer's keys and values
  (concatenated to the image's own tokens); the pooled text embedding is added to the timestep
  embedding.
- extra input channels: the upsampler's low-res image, the inpainting model's [image * mask, mask].
- noise-augmentation level of the low-res conditioning (upsampler): embedded like a timestep.

Conditions can be switched off per sample (classifier-free guidance): an absent image embedding or
text is replaced by a learned null vector, and absent text tokens are masked out of attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.compiled import CompiledForward
from nodegraph.models.inference_cache import Conv2d, InputMemo


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: int = 6  # 2C: eps and the learned-range variance interpolation
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = field(default=1, metadata={"max": 64})
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes that get attention
    image_size: int = 32
    head_channels: int = field(default=32, metadata={"min": 1})
    norm_groups: int = field(default=16, metadata={"min": 1})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    clip_dim: int = 0  # CLIP image-embedding width; 0 = no image conditioning
    image_tokens: int = field(default=4, metadata={"max": 256})
    text_dim: int = 0  # width of the CLIP text token sequence; 0 = no text conditioning
    text_embed_dim: int = 0  # width of the pooled text embedding added to the time embedding
    aug_level: bool = False  # condition on a noise-augmentation level (upsampler)

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the last layer of a residual branch so each block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm computed in fp32 for reduced-precision activations (bf16 weights): torch's bf16 kernel is up
    to 4x slower on channels-last maps and keeps 8 bits of mantissa in the statistics. fp32 goes straight
    through, bit for bit. (ADM's GroupNorm32 does the same for fp16.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA, in fp32 for reduced-precision inputs: the fused CPU kernel is slower in bf16 than in fp32."""
    if q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero(Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In-place SiLU on the norms' fresh outputs and one addcmul for the scale-shift: the sampler's time goes
        # mostly to small element-wise ops, and these save an allocation and a pass each (5% of the main job).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.drop(F.silu(h, inplace=True)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the feature map whose keys/values also include the context tokens."""

    def __init__(self, channels: int, head_channels: int, groups: int, context_dim: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj = zero(nn.Conv1d(channels, channels, 1))

    def context_heads(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The context's keys and values [B, H, L, d]: the same at every sampling step, so the UNet computes them
        once per set of conditions (`UNet._conditions`) and hands them to `forward`."""
        return _split_heads(self.context_kv(context), 2, self.heads)

    def forward(self, x: torch.Tensor, context_heads: tuple[torch.Tensor, ...] | None,
                context_mask: torch.Tensor | None):
        b, c, hgt, wid = x.shape
        # Token-major [B, N, C]: a free view of the channels-last feature map, and heads whose last dim is
        # contiguous, which the fused (flash) attention kernel requires; channel-major q/k/v sent every call
        # to the unfused path (~25% of the decoder's time). The 1x1 Conv1d weights act as linear layers.
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = _split_heads(F.linear(tokens, self.qkv.weight[..., 0], self.qkv.bias), 3, self.heads)
        mask = None
        if context_heads is not None:
            ck, cv = context_heads
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
            # Image tokens are always visible, so a fully masked context never empties a row.
            mask = torch.cat([context_mask, context_mask.new_ones(b, hgt * wid)], dim=1)
            mask = mask[:, None, None, :]
        out = attention(q, k, v, mask).transpose(1, 2).reshape(b, hgt * wid, c)
        out = F.linear(out, self.proj.weight[..., 0], self.proj.bias)
        return x + out.transpose(1, 2).view(b, c, hgt, wid)  # a channels-last view again, no copy


def _recomputes(module: nn.Module, x: torch.Tensor) -> bool:
    """Training and autograd need every step's own graph; a meta-device shape probe has no values to compare."""
    return torch.is_grad_enabled() or module.training or x.device.type == "meta"


def _split_heads(t: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """[B, N, parts * C] -> `parts` tensors [B, H, N, C / H] (channel = head * d + i, as in the channel-major
    layout the weights were trained with)."""
    b, n, width = t.shape
    return t.view(b, n, parts, heads, width // (parts * heads)).permute(2, 0, 3, 1, 4).unbind(0)


# The UNet's submodules that turn conditions into the time-embedding term and the context tokens.
_CONDITIONING = ("image_emb", "image_to_tokens", "null_image", "text_proj", "text_emb", "null_text", "context_norm")


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * mc
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        context_dim = 0
        if cfg.aug_level:
            self.aug_mlp = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.clip_dim:
            self.image_emb = nn.Linear(cfg.clip_dim, emb_dim)
            self.image_to_tokens = nn.Linear(cfg.clip_dim, cfg.image_tokens * emb_dim)
            self.null_image = nn.Parameter(torch.zeros(cfg.clip_dim))
            context_dim = emb_dim
        if cfg.text_dim:
            self.text_proj = nn.Linear(cfg.text_dim, emb_dim)
            context_dim = emb_dim
        if cfg.text_embed_dim:
            self.text_emb = nn.Linear(cfg.text_embed_dim, emb_dim)
            self.null_text = nn.Parameter(torch.zeros(cfg.text_embed_dim))
        self.context_norm = nn.LayerNorm(emb_dim) if context_dim else None
        self._conditions_memo: InputMemo[tuple] = InputMemo()
        self._compiled: CompiledForward | None = None

        self.inp = Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [mc], mc, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, mult * mc, emb_dim, g, cfg.dropout)])
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.head_channels, g, context_dim))
                self.down.append(block)
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([
            ResBlock(ch, ch, emb_dim, g, cfg.dropout),
            AttentionBlock(ch, cfg.head_channels, g, context_dim),
            ResBlock(ch, ch, emb_dim, g, cfg.dropout),
        ])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), mult * mc, emb_dim, g, cfg.dropout)])
                ch = mult * mc
                if res in cfg.attention_resolutions:
                    block.append(AttentionBlock(ch, cfg.head_channels, g, context_dim))
                if level > 0 and i == cfg.num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(Conv2d(ch, ch, 3, padding=1))
                    res *= 2
                self.up.append(block)
        self.out = nn.Sequential(
            GroupNorm(g, ch), nn.SiLU(inplace=True), zero(Conv2d(ch, cfg.out_channels, 3, padding=1))
        )
        self._attention = tuple(m for m in self.modules() if isinstance(m, AttentionBlock))  # in `denoise`'s order

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        image_embed: torch.Tensor | None = None,
        image_on: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        aug_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, C, H, W]; t: [B] timesteps; `*_on` / `text_mask` switch conditions off per sample.

        `extra` is concatenated to x along channels (low-res image, or [image * mask, mask]).
        """
        cond_emb, context_heads, context_mask = self._conditions(x, image_embed, image_on, text_tokens, text_mask,
                                                                 text_embed)
        compiled = self._compiled
        if compiled is not None and compiled.serves(self, x):
            return compiled(x, t, cond_emb, context_heads, context_mask, extra, aug_level)
        return self.denoise(x, t, cond_emb, context_heads, context_mask, extra, aug_level)

    def denoise(self, x, t, cond_emb, context_heads, context_mask, extra, aug_level) -> torch.Tensor:
        """The per-step work, given the conditions' step-invariant part (`_conditions`): what `compile_for_inference`
        compiles."""
        cfg = self.cfg
        emb = self.time_mlp(timestep_embedding(t, cfg.model_channels).to(x.dtype))  # bf16 weights: bf16 in
        if cfg.aug_level:
            emb = emb + self.aug_mlp(timestep_embedding(aug_level, cfg.model_channels).to(x.dtype))
        if cond_emb is not None:
            emb = emb + cond_emb
        heads = iter(context_heads)

        def run(block: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
            for layer in block:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                elif isinstance(layer, AttentionBlock):
                    h = layer(h, next(heads), context_mask)
                else:
                    h = layer(h)
            return h

        h = self.inp(torch.cat([x, extra], dim=1) if extra is not None else x)
        hs = [h]
        for block in self.down:
            h = run(block, h)
            hs.append(h)
        h = run(self.mid, h)
        for block in self.up:
            h = run(block, torch.cat([h, hs.pop()], dim=1))
        return self.out(h)

    def compile_for_inference(self) -> None:
        """From now on, inference on the CPU runs `denoise` compiled by torch.compile (see models/compiled.py);
        training, autograd, other devices and weights changed since then run it as written."""
        self._compiled = CompiledForward(self.denoise, self.parameters())

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _apply(self, fn, recurse=True):
        # A move or cast must not keep the old device's tensors alive (the memo) nor the old weights (frozen into
        # the compiled code); a compiled network compiles again for its new weights on its next call.
        self._conditions_memo.clear()
        compiled, self._compiled = self._compiled is not None, None
        out = super()._apply(fn, recurse)
        if compiled:
            self.compile_for_inference()
        return out

    def __getstate__(self) -> dict:
        # A copy (deepcopy, pickling) starts uncompiled: copies are made to be trained, and a fine-tuned copy
        # sampled between steps would compile again after every step.
        return {**super().__getstate__(), "_compiled": None}

    def _conditions(self, x, image_embed, image_on, text_tokens, text_mask, text_embed):
        """(embedding added to the time embedding, each attention block's context keys and values or None, context
        mask): none of it depends on x_t or t, so sampling computes it once per set of conditions."""
        def compute() -> tuple:
            cond_emb, context, mask = self._compute_conditions(x, image_embed, image_on, text_tokens, text_mask,
                                                               text_embed)
            heads = tuple(None if context is None or blk.context_kv is None else blk.context_heads(context)
                          for blk in self._attention)
            return cond_emb, heads, mask

        if _recomputes(self, x):
            return compute()
        # The empty [B, 0] tensor stands for what the defaults of absent conditions take from x: batch, dtype, device.
        inputs = (image_embed, image_on, text_tokens, text_mask, text_embed, x.new_empty(x.shape[0], 0))
        return self._conditions_memo.get(inputs, self._conditioning_params(), compute)

    def _conditioning_params(self) -> list[torch.Tensor]:
        params = []
        for name in _CONDITIONING:
            part = getattr(self, name, None)
            if isinstance(part, nn.Parameter):
                params.append(part)
            elif part is not None:
                params.extend(part.parameters())
        for blk in self._attention:
            if blk.context_kv is not None:
                params.extend(blk.context_kv.parameters())
        return params

    def _compute_conditions(self, x, image_embed, image_on, text_tokens, text_mask, text_embed) -> tuple:
        cfg, b = self.cfg, x.shape[0]
        cond_emb = None
        tokens, masks = [], []
        if cfg.clip_dim:
            on = image_on if image_on is not None else x.new_ones(b)
            if image_embed is None:
                image_embed, on = x.new_zeros(b, cfg.clip_dim), x.new_zeros(b)
            img = torch.where(on.view(b, 1) > 0.5, image_embed, self.null_image.expand(b, -1))
            # Embeddings arrive unit-norm (the sphere DALL-E 2 works on); scale to unit variance per entry.
            img = img * math.sqrt(cfg.clip_dim)
            cond_emb = self.image_emb(img)
            tokens.append(self.image_to_tokens(img).view(b, cfg.image_tokens, -1))
            masks.append(torch.ones(b, cfg.image_tokens, dtype=torch.bool, device=x.device))
        if cfg.text_dim:
            if text_tokens is None:
                text_tokens = x.new_zeros(b, 1, cfg.text_dim)
                text_mask = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
            tokens.append(self.text_proj(text_tokens))
            masks.append(text_mask.bool())
        if cfg.text_embed_dim:
            text_on = (
                text_mask.any(dim=1) if text_mask is not None
                else torch.zeros(b, dtype=torch.bool, device=x.device)
            )
            te = text_embed if text_embed is not None else x.new_zeros(b, cfg.text_embed_dim)
            text_term = self.text_emb(torch.where(text_on.view(b, 1), te, self.null_text.expand(b, -1)))
            cond_emb = text_term if cond_emb is None else cond_emb + text_term
        context = self.context_norm(torch.cat(tokens, dim=1)) if tokens else None
        context_mask = torch.cat(masks, dim=1) if masks else None
        return cond_emb, context, context_mask


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["UNet", "UNetConfig", "count_params", "timestep_embedding"]
