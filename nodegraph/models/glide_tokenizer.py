"""GLIDE's caption tokenizer: GPT-2's byte-level BPE over lower-cased text, 50 257 tokens, the last one
(`<|endoftext|>`) doubling as padding.

The vocabulary is not bundled: the user points at the folder holding GLIDE's `encoder.json` and
`vocab.bpe` (gzipped, as glide-text2im ships them, or plain). How a caption becomes tokens:

1. lower-case it, split it with GPT-2's pattern (contractions, runs of letters / digits / other
   symbols each with an optional leading space, whitespace);
2. map each piece's UTF-8 bytes to printable characters (GPT-2's reversible byte table);
3. merge adjacent symbols, always the pair with the lowest merge rank, until none is in the table;
4. look every symbol up in the encoder.

A caption is cut to `text_ctx` tokens and padded with the end token; the mask is True on caption tokens.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import regex
import torch

from nodegraph.errors import CheckpointError

_PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes map to themselves, the other 68 bytes to
    the characters from U+0100 on, in byte order (so no symbol is whitespace or a control character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_text(folder: Path, name: str) -> str:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            try:
                if candidate.suffix == ".gz":
                    with gzip.open(candidate, "rt", encoding="utf-8") as f:
                        return f.read()
                return candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError, EOFError) as e:
                raise CheckpointError(f"GLIDE vocabulary file {candidate} cannot be read: {e}", input="vocab") from e
    raise CheckpointError(
        f"GLIDE's tokenizer needs {name} (or {name}.gz) in {folder}, which is not there; copy encoder.json.gz and "
        "vocab.bpe.gz from glide-text2im's glide_text2im/tokenizer/ folder into it", input="vocab"
    )


class GlideTokenizer:
    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = encoder
        self.decoder = {i: s for s, i in encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._bytes = byte_symbols()
        self._unbytes = {c: b for b, c in self._bytes.items()}
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path) -> GlideTokenizer:
        """Read `encoder.json[.gz]` and `vocab.bpe[.gz]` from `folder`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"GLIDE vocabulary folder not found: {folder} (it should hold encoder.json.gz and "
                                  "vocab.bpe.gz from glide-text2im)", input="vocab")
        try:
            encoder = json.loads(_read_text(folder, "encoder.json"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'encoder.json'} is not valid JSON: {e}", input="vocab") from e
        lines = _read_text(folder, "vocab.bpe").split("\n")
        # The first line is a version header; a trailing newline leaves an empty last line.
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        if not isinstance(encoder, dict) or any(len(m) != 2 for m in merges):
            raise CheckpointError(f"{folder} does not hold a GPT-2 style BPE vocabulary", input="vocab")
        return cls(encoder, merges)  # type: ignore[arg-type]

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    @property
    def end_token(self) -> int:
        return self.n_vocab - 1

    def _merge(self, piece: str) -> list[str]:
        if piece in self._cache:
            return self._cache[piece]
        symbols = list(piece)
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[piece] = symbols
        return symbols

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _PIECES.findall(text.lower()):
            chars = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._merge(chars))
        return ids

    def decode(self, ids: list[int]) -> str:
        data = bytes(self._unbytes[c] for i in ids for c in self.decoder[i])
        return data.decode("utf-8", errors="replace")

    def padded(self, ids: list[int], text_ctx: int) -> tuple[list[int], list[bool]]:
        ids = ids[:text_ctx]
        pad = text_ctx - len(ids)
        return ids + [self.end_token] * pad, [True] * len(ids) + [False] * pad

    def tokens_and_mask(self, texts: list[str], text_ctx: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, text_ctx] token ids and their mask for GLIDE's UNet ("" gives the unconditional row)."""
        rows = [self.padded(self.encode(t), text_ctx) for t in texts]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


__all__ = ["GlideTokenizer", "byte_symbols"]
