"""Karlo (kakaobrain/karlo v1.0 alpha), the open unCLIP reproduction: a diffusion prior from CLIP text
features to CLIP image embeddings, a 64x64 decoder conditioned on the image embedding and on CLIP's
text tokens, and a 64 -> 256 super-resolution pair whose last step runs a separately fine-tuned UNet.
CLIP itself is OpenAI's ViT-L/14, loaded through open_clip (`nodegraph.models.real.load_openai_clip`).

The released files are Lightning-style `{"state_dict": ...}` checkpoints whose keys carry the wrapper's
attribute names: `model.` (prior, decoder), `model_first_steps.` / `model_last_step.` (super-resolution).
The modules here hold exactly what follows those prefixes; `nodegraph.models.real` strips and checks them.

- prior: a causal transformer over [77 projected text tokens, projected text embedding, timestep
  embedding, projected noised image embedding, a learned query token], each plus a position table;
  padding text tokens are masked out as keys; the query token's output, projected to clip_dim, is the
  prediction of x0 in normalised units. Samples are de-normalised with the per-dimension CLIP image
  embedding statistics shipped as `ViT-L-14_stats.th` (a (mean, std) pair).
- decoder: an ADM UNet whose time embedding also receives the image embedding and the pooled text
  embedding; its attention layers attend to [4 tokens made from the image embedding, the projected CLIP
  text tokens] with padding masked out. The image-embedding tokens come from one Linear whose output is
  read as [width, 4] (channel-major), as Karlo does. `cf_param` is the learned null image embedding of
  classifier-free guidance.
- super-resolution: two plain ADM UNets (no attention, additive time embedding, ResBlock resampling)
  that read x and the low-res image already resized to 256x256 (bicubic, antialiased).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.errors import ConditionError
from nodegraph.models.adm import ADMConfig, ADMUNet, timestep_embedding
from nodegraph.models.xf import LayerNorm, Transformer

# Karlo appends these to the 77 text tokens, in this order.
PRIOR_EXTRA_TOKENS = ("text_embedding", "timestep", "noised_image_embedding", "query")


@dataclass
class KarloPriorConfig:
    text_ctx: int = 77
    xf_width: int = 2048
    xf_layers: int = 20
    xf_heads: int = 32
    xf_final_ln: bool = True
    clip_dim: int = 768

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> KarloPriorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class KarloPrior(nn.Module):
    """The prior's `model` (PriorTransformer) plus the CLIP statistics its outputs are scaled by."""

    def __init__(self, cfg: KarloPriorConfig):
        super().__init__()
        self.cfg = cfg
        w, d = cfg.xf_width, cfg.clip_dim
        n = cfg.text_ctx + len(PRIOR_EXTRA_TOKENS)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.text_enc_proj = nn.Linear(d, w)
        self.text_emb_proj = nn.Linear(d, w)
        self.clip_img_proj = nn.Linear(d, w)
        self.out_proj = nn.Linear(w, d)
        self.transformer = Transformer(w, cfg.xf_layers, cfg.xf_heads)
        self.final_ln = LayerNorm(w) if cfg.xf_final_ln else None
        self.positional_embedding = nn.Parameter(torch.zeros(1, n, w))
        self.prd_emb = nn.Parameter(torch.zeros(1, 1, w))
        # Not in the checkpoint: set from the statistics file (identity until then).
        self.register_buffer("clip_mean", torch.zeros(d), persistent=False)
        self.register_buffer("clip_std", torch.ones(d), persistent=False)
        self.has_stats = False

    def set_clip_stats(self, mean: torch.Tensor, std: torch.Tensor) -> KarloPrior:
        d = self.cfg.clip_dim
        if mean.shape != (d,) or std.shape != (d,):
            raise ConditionError(f"CLIP statistics must be two [{d}] vectors, got {tuple(mean.shape)} and "
                                 f"{tuple(std.shape)}", "clip_stats")
        self.clip_mean.copy_(mean.float())
        self.clip_std.copy_(std.float())
        self.has_stats = True
        return self

    def denormalize(self, x0: torch.Tensor) -> torch.Tensor:
        """A sampled (normalised) embedding -> CLIP image-embedding units."""
        return x0 * self.clip_std.to(x0) + self.clip_mean.to(x0)

    def normalize(self, image_embed: torch.Tensor) -> torch.Tensor:
        return (image_embed - self.clip_mean.to(image_embed)) / self.clip_std.to(image_embed)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_enc: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, clip_dim] noised normalised image embedding at timesteps t [B]; text_emb [B, clip_dim]
        CLIP's projected text embedding; text_enc [B, text_ctx, clip_dim] its final token states;
        mask [B, text_ctx] True for real tokens. Returns the predicted x0 [B, clip_dim]."""
        b, out_dtype = x.shape[0], x.dtype
        # Inputs follow the network's dtype (float32, or half precision after load_real(dtype=...)).
        dtype = self.out_proj.weight.dtype
        x, text_emb, text_enc = x.to(dtype), text_emb.to(dtype), text_enc.to(dtype)
        t_emb = self.time_embed(timestep_embedding(t, self.cfg.xf_width).to(dtype))
        seq = torch.cat(
            [
                self.text_enc_proj(text_enc),
                self.text_emb_proj(text_emb)[:, None],
                t_emb[:, None],
                self.clip_img_proj(x)[:, None],
                self.prd_emb.to(x.dtype).expand(b, -1, -1),
            ],
            dim=1,
        )
        seq = seq + self.positional_embedding.to(seq.dtype)
        n = seq.shape[1]
        keys = F.pad(mask.bool(), (0, len(PRIOR_EXTRA_TOKENS)), value=True)
        blocked = ~keys[:, None, :] | torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        bias = torch.zeros(b, n, n, dtype=seq.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        out = self.transformer(seq, bias)
        if self.final_ln is not None:
            out = self.final_ln(out)
        return self.out_proj(out[:, -1]).to(out_dtype)


@dataclass
class KarloDecoderConfig(ADMConfig):
    clip_dim: int = 768
    clip_emb_mult: int = 4  # tokens made from the image embedding
    text_ctx: int = 77
    xf_width: int = 1536  # width the text tokens are projected to (the attention layers' encoder_kv input)
    null_image_embed: bool = True  # `cf_param` (trained with image-embedding dropout)

    def __post_init__(self) -> None:
        self.encoder_channels = self.xf_width
        super().__post_init__()

    @classmethod
    def from_dict(cls, d: dict) -> KarloDecoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class KarloDecoder(ADMUNet):
    """The decoder's `model` (PLMImUNet)."""

    def __init__(self, cfg: KarloDecoderConfig):
        super().__init__(cfg)
        self.cfg: KarloDecoderConfig = cfg
        emb_dim = cfg.time_embed_dim
        self.clip_emb = nn.Linear(cfg.clip_dim, emb_dim)
        self.text_seq_proj = nn.Sequential(nn.Linear(cfg.clip_dim, cfg.xf_width), LayerNorm(cfg.xf_width))
        self.text_feat_proj = nn.Linear(cfg.clip_dim, emb_dim)
        self.clip_tok_proj = nn.Linear(cfg.clip_dim, cfg.xf_width * cfg.clip_emb_mult)
        if cfg.null_image_embed:
            self.cf_param = nn.Parameter(torch.zeros(cfg.clip_dim))

    def null_image_embed(self, batch: int) -> torch.Tensor:
        """The learned image embedding of the unconditional half of classifier-free guidance."""
        if not hasattr(self, "cf_param"):
            raise ConditionError("this decoder has no learned null image embedding (cf_param)", "image_embed")
        return self.cf_param[None].expand(batch, -1)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        image_embed: torch.Tensor,
        text_embed: torch.Tensor,
        text_seq: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, 3, 64, 64]; image_embed [B, clip_dim] (Karlo's `y`); text_embed [B, clip_dim] CLIP's
        projected text embedding (`txt_feat`); text_seq [B, text_ctx, clip_dim] its token states
        (`txt_feat_seq`); mask [B, text_ctx] True for real tokens."""
        b, mult = x.shape[0], self.cfg.clip_emb_mult
        emb = self.embed(t) + self.clip_emb(image_embed) + self.text_feat_proj(text_embed)
        text = self.text_seq_proj(text_seq).permute(0, 2, 1)
        image_tokens = self.clip_tok_proj(image_embed).reshape(b, -1, mult)  # [B, width, mult], channel-major
        context = torch.cat([image_tokens, text], dim=2)
        keys = F.pad(mask.bool(), (mult, 0), value=True)
        bias = torch.zeros(keys.shape, dtype=emb.dtype, device=x.device).masked_fill(~keys, float("-inf"))
        return self.run_blocks(x, emb, context, bias)


def karlo_sr_config(channels: int = 320, depth: int = 3, channel_mult: tuple[int, ...] = (1, 2, 3, 4)) -> ADMConfig:
    """One of the two super-resolution UNets (the released config is `improved_sr_64_256_1.4B.yaml`)."""
    return ADMConfig(
        image_size=256, in_channels=3, model_channels=channels, out_channels=3, num_res_blocks=depth,
        attention_ds=(), channel_mult=channel_mult, resblock_updown=True, use_scale_shift_norm=False,
        middle_attention=False, low_res=True,
    )


class KarloSuperRes(nn.Module):
    """`model_first_steps` runs every step but the last, `model_last_step` (fine-tuned with adversarial
    and perceptual losses) the last one."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.cfg = cfg
        self.model_first_steps = ADMUNet(cfg)
        self.model_last_step = ADMUNet(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor, last_step: bool = False) -> torch.Tensor:
        """x [B, 3, 256, 256]; low_res [B, 3, 256, 256] the 64x64 image resized by `upsample_low_res`."""
        if low_res.shape != x.shape:
            raise ConditionError(f"Karlo's super-resolution takes the low-res image already resized to "
                                 f"{tuple(x.shape[-2:])}, got {tuple(low_res.shape[-2:])}", "low_res")
        net = self.model_last_step if last_step else self.model_first_steps
        return net(x, t, low_res=low_res)


def upsample_low_res(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """The decoder's 64x64 output (clamped to [-1, 1]) resized as Karlo's sampler does: bicubic, antialiased."""
    return F.interpolate(images.clamp(-1, 1), size=(size, size), mode="bicubic", antialias=True, align_corners=False)


__all__ = [
    "KarloDecoder",
    "KarloDecoderConfig",
    "KarloPrior",
    "KarloPriorConfig",
    "KarloSuperRes",
    "karlo_sr_config",
    "upsample_low_res",
]
