"""GLIDE's noised CLIP: a ViT image encoder that also reads the diffusion timestep, and a causal text
transformer, trained contrastively on noised images so CLIP guidance can take gradients on x_t itself.

Parameter names follow the released `clip_image_enc.pt` / `clip_text_enc.pt`: `blocks.input.*`,
`blocks.block_N.f_attn.{ln,f_q,f_k,f_v,f_c}`, `blocks.block_N.f_mlp.{ln,f_1,f_2}`, `blocks.output.{ln,f}`;
linear layers hold `w` [out, in] and `b`, layer norms `g` and `b`. How the numbers come out:

- image input: pixels in [0, 255] normalised by CLIP's channel statistics (on that scale), 4x4 patches
  projected without bias; the first token is a learned per-timestep embedding (`w_t[t]`) in place of a
  class token; position table added, then a layer norm.
- blocks: pre-norm attention (the key projection has no bias; q and k each scaled by d^(-1/4); the text
  encoder is causal) and a pre-norm GELU MLP (4x). Layer norms use eps 1e-5 and compute in float32.
  The reference pads the sequence to a multiple of 32 and masks the padding out; masked keys get
  exactly zero weight, so attending over the real tokens only is the same computation.
- outputs: the image's first token, the text's token at position length-1, each through a layer norm
  and a bias-free projection; GLIDE compares them after L2 normalisation with logit scale 100.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.errors import ConditionError

# CLIP's channel statistics on the [0, 255] scale, as the noised CLIP was trained with.
CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)
LOGIT_SCALE = 100.0


@dataclass
class NoisedClipImageConfig:
    image_size: int = 64
    patch_size: int = 4
    width: int = 768
    heads: int = 12
    layers: int = 12
    embed_dim: int = 512
    n_timesteps: int = 1000  # 0: a learned start token instead of the timestep's

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NoisedClipTextConfig:
    n_vocab: int = 65536
    context: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12
    embed_dim: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class _LayerNorm(nn.Module):
    """Layer norm with parameters `g`, `b`; returns float32 whatever the input dtype."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(n))
        self.b = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.g.shape, self.g, self.b, self.eps)


class _Affine(nn.Module):
    """y = x wᵀ + b with parameters `w` [out, in] and (optionally) `b`."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_out, n_in))
        if bias:
            self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b.to(x.dtype) if hasattr(self, "b") else None
        return F.linear(x, self.w.to(x.dtype), b)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln = _LayerNorm(width)
        self.f_q = _Affine(width, width)
        self.f_k = _Affine(width, width, bias=False)
        self.f_v = _Affine(width, width)
        self.f_c = _Affine(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        d = w // self.heads
        r = self.ln(x)

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, n, self.heads, d).permute(0, 2, 1, 3)

        q, k, v = split(self.f_q(r)), split(self.f_k(r)), split(self.f_v(r))
        scale = d**-0.25
        logits = torch.einsum("bhqd,bhkd->bhqk", q * scale, k * scale)
        if causal:
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            logits = logits.masked_fill(future, float("-inf"))
        out = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(logits, dim=-1), v)
        return x + self.f_c(out.permute(0, 2, 1, 3).reshape(b, n, w))


class _MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ln = _LayerNorm(width)
        self.f_1 = _Affine(width, 4 * width)
        self.f_2 = _Affine(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f_2(F.gelu(self.f_1(self.ln(x))))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.f_attn = _Attention(width, heads)
        self.f_mlp = _MLP(width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        return self.f_mlp(self.f_attn(x, causal))


class _ImageInput(nn.Module):
    def __init__(self, cfg: NoisedClipImageConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
        grid = cfg.image_size // cfg.patch_size
        self.patch_proj = nn.Parameter(torch.zeros(cfg.width, 3, cfg.patch_size, cfg.patch_size))
        self.w_pos = nn.Parameter(torch.zeros(1 + grid * grid, cfg.width))
        if cfg.n_timesteps:
            self.w_t = nn.Parameter(torch.zeros(cfg.n_timesteps, cfg.width))
        else:
            self.pred_state = nn.Parameter(torch.zeros(cfg.width))
        self.ln = _LayerNorm(cfg.width)
        self.register_buffer("means", torch.tensor(CHANNEL_MEANS).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("stds", torch.tensor(CHANNEL_STDS).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        # Computed in float32 whatever the stored precision: the layer norms return float32 anyway.
        x = (pixels.float() - self.means) / self.stds
        proj = self.patch_proj.float()
        x = F.conv2d(x, proj, stride=proj.shape[-1]).flatten(2).transpose(1, 2)
        if hasattr(self, "w_t"):
            if t is None:
                raise ConditionError("the noised CLIP image encoder needs the timestep of its input", "t")
            first = self.w_t[t.long()][:, None].float()
        else:
            first = self.pred_state[None, None].float().expand(x.shape[0], -1, -1)
        return self.ln(torch.cat([first, x], dim=1) + self.w_pos[None].float())


class _TextInput(nn.Module):
    def __init__(self, cfg: NoisedClipTextConfig):
        super().__init__()
        self.w_voc = nn.Parameter(torch.zeros(cfg.n_vocab, cfg.width))
        self.w_pos = nn.Parameter(torch.zeros(cfg.context, cfg.width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.w_voc).float() + self.w_pos[None].float()


class _Output(nn.Module):
    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.ln = _LayerNorm(width)
        self.f = _Affine(width, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(self.ln(x))


class NoisedClipImageEncoder(nn.Module):
    """`clip_image_enc.pt`: x_t and t -> CLIP image embedding."""

    def __init__(self, cfg: NoisedClipImageConfig):
        super().__init__()
        self.cfg = cfg
        blocks: dict[str, nn.Module] = {"input": _ImageInput(cfg)}
        blocks.update({f"block_{i}": _Block(cfg.width, cfg.heads) for i in range(cfg.layers)})
        blocks["output"] = _Output(cfg.width, cfg.embed_dim)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, pixels: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """pixels [B, 3, S, S] on the [0, 255] scale, t [B] original timesteps -> unnormalised [B, D]."""
        size = self.cfg.image_size
        if pixels.shape[1:] != (3, size, size):
            raise ConditionError(f"the noised CLIP image encoder takes 3x{size}x{size} images, got "
                                 f"{tuple(pixels.shape[1:])}", "image")
        h = self.blocks["input"](pixels, t)
        for i in range(self.cfg.layers):
            h = self.blocks[f"block_{i}"](h, causal=False)
        return self.blocks["output"](h[:, 0])

    def embed(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of images in [-1, 1] (GLIDE's `image_embeddings`)."""
        z = self((x_t + 1) * 127.5, t)
        return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisedClipTextEncoder(nn.Module):
    """`clip_text_enc.pt`: CLIP-tokenised captions -> CLIP text embedding."""

    def __init__(self, cfg: NoisedClipTextConfig):
        super().__init__()
        self.cfg = cfg
        blocks: dict[str, nn.Module] = {"input": _TextInput(cfg)}
        blocks.update({f"block_{i}": _Block(cfg.width, cfg.heads) for i in range(cfg.layers)})
        blocks["output"] = _Output(cfg.width, cfg.embed_dim)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, context] (start, caption, end, zeros), lengths [B] counting start and end -> [B, D]."""
        h = self.blocks["input"](tokens)
        for i in range(self.cfg.layers):
            h = self.blocks[f"block_{i}"](h, causal=True)
        last = h[torch.arange(h.shape[0], device=h.device), lengths.long() - 1]
        return self.blocks["output"](last)

    def embed(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        z = self(tokens, lengths)
        return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


def clip_tokens(texts: list[str], context: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP BPE tokens as the noised text encoder reads them: [start] + caption (cut to context - 2) +
    [end], zero-padded, with the lengths. The vocabulary is CLIP's, which open_clip ships."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    rows, lengths = [], []
    for text in texts:
        ids = [sot] + tok.encode(text)[: context - 2] + [eot]
        lengths.append(len(ids))
        rows.append(ids + [0] * (context - len(ids)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)


def clip_guidance_logit(image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """GLIDE's CLIP-guidance objective: logit_scale · Σ z_text·z_image (its gradient wrt x_t steers)."""
    return LOGIT_SCALE * (image_embed * text_embed).sum()


__all__ = [
    "LOGIT_SCALE",
    "NoisedClipImageConfig",
    "NoisedClipImageEncoder",
    "NoisedClipTextConfig",
    "NoisedClipTextEncoder",
    "clip_guidance_logit",
    "clip_tokens",
]
