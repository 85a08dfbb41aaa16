"""CLIP through open_clip: the small bundled Shapes World config and real OpenAI-style checkpoints.

The bundled model is an ordinary open_clip `CLIP` built from `configs/shapes-clip.json`, registered
with open_clip so `open_clip.create_model("shapes-clip")` builds it. `ClipModel` adds what the
pipeline needs beyond pooled embeddings: the per-token text sequence (ln_final output) that the
decoder attends to, and image preprocessing from socket images in [-1, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from nodegraph.errors import CheckpointError, InputValueError
from nodegraph.models.checkpoint import load_into, read_metadata
from nodegraph.models.resize import center_crop

CONFIG_DIR = Path(__file__).parent / "configs"
BUNDLED_CLIP = "shapes-clip"
# The bundled model sees images normalised to [-1, 1]; real checkpoints use OpenAI's statistics.
_PREPROCESS = {BUNDLED_CLIP: {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}


def register_configs() -> None:
    """Make the project's configs known to open_clip (idempotent)."""
    if BUNDLED_CLIP not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class TextEncoding:
    """Pooled, projected embedding [B, D], token sequence [B, L, W], and padding mask [B, L]."""

    embed: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    prompts: tuple[str, ...] = ()


class ClipModel:
    """An open_clip CLIP with its tokenizer and the preprocessing its image tower expects."""

    def __init__(self, model: open_clip.CLIP, model_name: str):
        self.model = model.eval()
        self.model_name = model_name
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = getattr(model.visual, "preprocess_cfg", {})
        self.image_size = int(model.visual.image_size[0])
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def text_width(self) -> int:
        return int(self.model.ln_final.weight.shape[0])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def to(self, device: torch.device | str) -> ClipModel:
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def encode_tokens(self, tokens: torch.Tensor) -> TextEncoding:
        """Text tower forward that keeps the per-token sequence (open_clip only returns the pool)."""
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        seq = m.ln_final(x)
        # open_clip pools at the end-of-text token, the largest id in each row.
        pooled = seq[torch.arange(seq.shape[0], device=seq.device), tokens.argmax(dim=-1)]
        embed = pooled @ m.text_projection
        # Tokens after end-of-text are padding (id 0); the decoder must not attend to them.
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= tokens.argmax(dim=-1)[:, None]
        return TextEncoding(embed=embed, tokens=seq, mask=mask)

    def encode_text(self, texts: list[str]) -> TextEncoding:
        enc = self.encode_tokens(self.tokenize(texts))
        enc.prompts = tuple(texts)
        return enc

    @torch.no_grad()
    def encode_caption(self, text: str, max_chars: int = 2000) -> TextEncoding:
        """One user caption, checked first: InputValueError("text") when it is longer than this CLIP reads
        (open_clip's tokenizer would silently cut it)."""
        if len(text) > max_chars:
            raise InputValueError("text", f"the caption has {len(text)} characters; at most {max_chars}")
        n_tokens = len(self.tokenizer.encode(text)) + 2  # + start and end of text
        if n_tokens > self.context_length:
            raise InputValueError("text", f"the caption is {n_tokens} tokens long but this CLIP reads at most "
                                  f"{self.context_length}; shorten it")
        return self.encode_text([text])

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] of socket images (any size, any device)."""
        return F.normalize(self.encode_image(images.to(self.device)), dim=-1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Socket images [B, 3, H, W] in [-1, 1], any size and shape -> the image tower's normalised input
        (centre-cropped to a square as every model input is, see nodegraph.models.resize)."""
        x = (center_crop(images) + 1) / 2
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return (x - self.mean.to(x)) / self.std.to(x)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self.preprocess(images))


def create_model(name: str, quick_gelu: bool = False) -> torch.nn.Module:
    """A randomly initialised open_clip model of a registered config, to load weights into (`quick_gelu` for
    OpenAI's weights, which were trained with it)."""
    # open_clip warns "No pretrained weights loaded ... initialized randomly" on the root logger, which
    # reads as an error to a user whose weights are loaded right after; silence just that call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, force_quick_gelu=quick_gelu, force_preprocess_cfg=_PREPROCESS.get(name))
    finally:
        root.setLevel(level)


def build_clip(model_name: str = BUNDLED_CLIP) -> ClipModel:
    """A randomly initialised CLIP of a registered open_clip config."""
    register_configs()
    return ClipModel(create_model(model_name), model_name)


def load_clip(path: str | Path, model_name: str | None = None, quick_gelu: bool = False) -> ClipModel:
    """A CLIP checkpoint from a local file (never downloads), checked key by key against the config.

    Bundled checkpoints name their config in their metadata; for a real open_clip / OpenAI-layout
    checkpoint pass the config name (e.g. "ViT-B-32") and `quick_gelu=True` for OpenAI's weights,
    which were trained with QuickGELU.
    """
    register_configs()
    path = Path(path)
    name = model_name or str(read_metadata(path).get("model_name", BUNDLED_CLIP))
    if name not in open_clip.list_models():
        raise CheckpointError(f"unknown CLIP config {name!r}; known: {', '.join(open_clip.list_models()[:8])}, ...")
    model = create_model(name, quick_gelu)
    load_into(model, path, what=f"CLIP checkpoint {path}")
    return ClipModel(model, name)
