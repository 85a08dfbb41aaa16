"""The DALL·E 2 diffusion prior: text -> CLIP image embedding.

A causal transformer reads [text tokens..., text embedding, timestep, noised image embedding, query]
and the output at the final (query) position is the prediction of the clean image embedding x0
(Ramesh et al. 2022, sec. 2.2). Embeddings live in a normalised space: the unit-norm CLIP image
embedding minus a per-dimension mean, divided by a per-dimension std, both measured on the
training data and stored with the weights as buffers. Classifier-free guidance works through
learned null vectors that replace the text tokens and the text embedding when text is off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.inference_cache import InputMemo
from nodegraph.models.unet import timestep_embedding


@dataclass
class PriorConfig:
    clip_dim: int = 128
    text_width: int = 128
    context_length: int = 32
    width: int = 256
    layers: int = field(default=4, metadata={"max": 256})
    heads: int = field(default=4, metadata={"min": 1, "max": 256})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        return self._rest(x, q, k, v, mask)

    def extend(self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        """The block on rows that follow the rows whose keys and values are `past` ([B, H, n, d] each).

        Returns the new rows' outputs and the keys and values of all rows (past first)."""
        q, k, v = self._qkv(x)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        return self._rest(x, q, k, v, mask), (k, v)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, w = x.shape
        return self.qkv(self.ln1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def _rest(self, x, q, k, v, mask) -> torch.Tensor:
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(x.shape)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.mlp(self.ln2(x)))


class PriorTransformer(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.text_tokens_in = nn.Linear(cfg.text_width, w)
        self.text_embed_in = nn.Linear(cfg.clip_dim, w)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.x_in = nn.Linear(cfg.clip_dim, w)
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        n = cfg.context_length + 4
        self.pos = nn.Parameter(torch.randn(n, w) * 0.02)
        self.null_text_tokens = nn.Parameter(torch.zeros(cfg.text_width))
        self.null_text_embed = nn.Parameter(torch.zeros(cfg.clip_dim))
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.clip_dim)
        self.register_buffer("causal", torch.ones(n, n, dtype=torch.bool).tril(), persistent=False)
        # Statistics of the unit-norm image embeddings of the training data.
        self.register_buffer("embed_mean", torch.zeros(cfg.clip_dim))
        self.register_buffer("embed_std", torch.ones(cfg.clip_dim))
        self._prefix_memo: InputMemo[list[tuple[torch.Tensor, torch.Tensor]]] = InputMemo()

    def _apply(self, fn, recurse=True):
        self._prefix_memo.clear()  # a move or cast must not keep the old device's tensors alive
        return super()._apply(fn, recurse)

    def normalize(self, image_embed: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embedding -> the prior's diffusion space."""
        return (F.normalize(image_embed, dim=-1) - self.embed_mean) / self.embed_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's diffusion space -> unit-norm CLIP image embedding."""
        return F.normalize(z * self.embed_std + self.embed_mean, dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_embed: torch.Tensor,
        text_on: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: noised normalised image embedding [B, D]; returns the predicted clean one [B, D].

        `text_on` [B] (default all on) swaps in the learned null text for classifier-free guidance.
        """
        b = x.shape[0]
        on = text_on.bool() if text_on is not None else torch.ones(b, dtype=torch.bool, device=x.device)
        mask = self._mask(text_mask, on)
        suffix = self._suffix_rows(x, t)
        if torch.is_grad_enabled() or self.training or x.device.type == "meta":
            seq = torch.cat([self._prefix_rows(text_tokens, text_embed, on), suffix], dim=1)
            for block in self.blocks:
                seq = block(seq, mask)
            return self.out(self.ln_out(seq[:, -1]))
        # The sequence is [text tokens, text embedding | timestep, x_t, query] and attention is causal, so the
        # first part (the "text prefix") never sees x_t or t: its keys and values in every layer are the same
        # at every sampling step. Sampling computes them once per text and runs only the last three rows per
        # step: the same arithmetic on the same rows (equal within rounding), about a tenth of the FLOPs.
        past = self._text_prefix(text_tokens, text_mask, text_embed, on, mask)
        rows = mask[:, :, -suffix.shape[1]:]
        for block, kv in zip(self.blocks, past, strict=True):
            suffix, _ = block.extend(suffix, rows, kv)
        return self.out(self.ln_out(suffix[:, -1]))

    def _prefix_rows(self, tokens: torch.Tensor, embed: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        tokens = torch.where(on[:, None, None], tokens, self.null_text_tokens)
        embed = torch.where(on[:, None], embed, self.null_text_embed)
        rows = torch.cat([self.text_tokens_in(tokens),
                          self.text_embed_in(F.normalize(embed, dim=-1) * math.sqrt(cfg.clip_dim))[:, None]], dim=1)
        return rows + self.pos[: rows.shape[1]]

    def _suffix_rows(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.time_in(timestep_embedding(t, self.cfg.width).to(x.dtype))
        rows = torch.cat([time[:, None], self.x_in(x)[:, None], self.query.expand(x.shape[0], 1, -1)], dim=1)
        return rows + self.pos[-rows.shape[1]:]

    def _mask(self, text_mask: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, N]: causal, and only visible keys. Without text only the null token at position 0 is
        visible, so every row attends somewhere."""
        b = on.shape[0]
        keep = torch.where(on[:, None], text_mask.bool(), torch.arange(text_mask.shape[1], device=on.device) == 0)
        visible = torch.cat([keep, keep.new_ones(b, 4)], dim=1)  # [B, N] keys that may be attended to
        return (self.causal[None] & visible[:, None, :])[:, None]

    def _text_prefix(self, tokens, text_mask, embed, on, mask) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of the text prefix: remembered for the last text seen (with the
        weights' versions, so a prior still being trained never gets stale ones)."""
        def compute() -> list[tuple[torch.Tensor, torch.Tensor]]:
            seq = self._prefix_rows(tokens, embed, on)
            n = seq.shape[1]
            past = []
            for block in self.blocks:
                seq, kv = block.extend(seq, mask[:, :, :n, :n], None)
                past.append(kv)
            return past

        return self._prefix_memo.get((tokens, text_mask, embed, on), self.parameters(), compute)
