"""Noisy classifier for classifier guidance (Dhariwal & Nichol 2021): p(attribute | x_t, t).

The encoder half of the ADM UNet (timestep-conditioned ResBlocks) pooled to one vector, with one
linear head per attribute of a one-shape Shapes World scene. Guidance for a prompt like
"a red circle" sums the log-probabilities of the named attributes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.unet import ResBlock, timestep_embedding
from nodegraph.world.scene import COLORS, KINDS, POSITIONS, SIZES

HEADS: dict[str, tuple[str, ...]] = {
    "kind": KINDS,
    "color": COLORS,
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": COLORS,
}


@dataclass
class ClassifierConfig:
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    image_size: int = 32
    norm_groups: int = field(default=16, metadata={"min": 1})

    def to_dict(self) -> dict:
        return asdict(self)


class NoisyClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        emb = 4 * mc
        self.time_mlp = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(3, mc, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        ch = mc
        for mult in cfg.channel_mult:
            self.blocks.append(ResBlock(ch, mult * mc, emb, g, 0.0))
            ch = mult * mc
            self.downs.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.norm = nn.GroupNorm(g, ch)
        self.heads = nn.ModuleDict({name: nn.Linear(ch, len(labels)) for name, labels in HEADS.items()})

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute head for noised images x_t [B, 3, H, W] at timesteps t [B]."""
        emb = self.time_mlp(timestep_embedding(t, self.cfg.model_channels))
        h = self.inp(x)
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = down(block(h, emb))
        h = F.silu(self.norm(h)).mean(dim=(2, 3))
        return {name: head(h) for name, head in self.heads.items()}

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over the named attributes of log p(label | x_t): the guidance objective, shape [B]."""
        logits = self(x, t)
        total = x.new_zeros(x.shape[0])
        for name, target in labels.items():
            total = total + F.log_softmax(logits[name], dim=-1).gather(1, target.view(-1, 1)).squeeze(1)
        return total


def labels_for(names: dict[str, str], batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """{"kind": "circle", "color": "red"} -> label index tensors for `log_prob`."""
    out = {}
    for head, value in names.items():
        if head not in HEADS:
            raise ValueError(f"the classifier has no {head!r} head; it has {', '.join(HEADS)}")
        if value not in HEADS[head]:
            raise ValueError(f"{value!r} is not a {head}; expected one of {', '.join(HEADS[head])}")
        out[head] = torch.full((batch,), HEADS[head].index(value), dtype=torch.long, device=device)
    return out


def attributes_from_prompt(prompt: str) -> dict[str, str]:
    """The classifier labels a one-shape prompt names, e.g. "a large red circle on the left" ->
    {"size": "large", "color": "red", "kind": "circle", "position": "left"} (background too when named)."""
    from nodegraph.world.captions import WHERE, parse_prompt

    try:
        spec = parse_prompt(prompt)
        if len(spec.shapes) != 1:
            raise ValueError("classifier guidance describes one shape; the prompt names two")
        shape = spec.shapes[0]
        named = {"kind": shape.kind, "color": shape.color, "size": shape.size, "position": shape.position,
                 "background": spec.background}
        return {k: v for k, v in named.items() if v is not None}
    except ValueError:
        pass
    # Not a full caption: read "[size] color kind [where]" and "on a/an X background" wherever they appear.
    words = prompt.lower().replace(",", " ").split()
    out: dict[str, str] = {}
    text = " ".join(words)
    for pos, phrase in WHERE.items():
        if phrase in text:
            out["position"] = pos
    for i, w in enumerate(words):
        if w == "background" and i > 0 and words[i - 1] in COLORS:
            out["background"] = words[i - 1]
        elif w in KINDS:
            out["kind"] = w
            if i > 0 and words[i - 1] in COLORS:
                out["color"] = words[i - 1]
                if i > 1 and words[i - 2] in SIZES:
                    out["size"] = words[i - 2]
    if not out:
        raise ValueError(f"no Shapes World attribute found in {prompt!r}; name a colour and a shape, "
                         "e.g. 'a red circle'")
    return out
