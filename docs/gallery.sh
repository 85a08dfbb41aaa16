#!/usr/bin/env bash
# Regenerates docs/gallery/ (the README's gallery) with the project's own CLI on the bundled models.
# Usage: bash docs/gallery.sh   (from the repository root, after the README's install command)
set -euo pipefail
ng=".venv/bin/nodegraph"
out="docs/gallery"
rm -rf "$out" && mkdir -p "$out"
run() { local name="$1"; shift; "$ng" run "$@" --out "$out/$name" > /dev/null; }

run dalle2_red_circle workflows/dalle2_text2img.json --param prompt="a large red circle on the left on a blue background" --param seed=0 --param batch_size=4
run dalle2_two_shapes workflows/dalle2_text2img.json --param prompt="a large yellow square on the left and a large white triangle on the right, on a purple background" --param seed=0 --param batch_size=4
run glide_green_cross workflows/glide_text2img.json --param prompt="a small green cross at the top on a black background" --param seed=0 --param batch_size=4
run variations workflows/dalle2_variations.json --param seed=0 --param count=4
run text_diff workflows/dalle2_text_diff.json --param count=4
run inpaint workflows/glide_inpaint.json --param seed=0
run invert_edit workflows/ddim_invert_edit.json

# One strip per system (nearest-neighbour x2 so the 32/64 px outputs stay crisp), for the README.
.venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path
from PIL import Image

root = Path(sys.argv[1])
for run in sorted(p for p in root.iterdir() if p.is_dir()):
    tiles = [Image.open(f).convert("RGB") for f in sorted(run.rglob("*.png"))]
    size = 128
    strip = Image.new("RGB", (size * len(tiles) + 4 * (len(tiles) - 1), size), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile.resize((size, size), Image.NEAREST), (i * (size + 4), 0))
    strip.save(root / f"{run.name}.png")
    print(f"{run.name}.png: {len(tiles)} images")
PY
