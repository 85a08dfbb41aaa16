"""Example input images shipped with nodegraph: canonical Shapes World renders that the editing workflows
read by default (`LoadImage` with `example:NAME`), so they run with no file given. Regenerate them with
`python -m nodegraph.world.examples`.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "example_images"
PREFIX = "example:"  # a LoadImage name starting with this is read from EXAMPLES_DIR, not the input directory
EXAMPLES: dict[str, str] = {  # file name -> the caption it renders
    "red_circle_on_blue.png": "a large red circle on the left on a blue background",
    "yellow_square_on_purple.png": "a large yellow square in the center on a purple background",
    "green_circle_on_black.png": "a large green circle on the left on a black background",
    "circle_and_square_on_yellow.png": "a large red circle on the left and a large blue square on the right, "
                                       "on a yellow background",
}


def write_examples(directory: Path = EXAMPLES_DIR, size: int = 64) -> list[Path]:
    """Render every example (canonical: no jitter) as a PNG."""
    from PIL import Image

    from nodegraph.world.captions import parse_prompt
    from nodegraph.world.render import render_uint8
    from nodegraph.world.scene import Scene, Shape

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, caption in EXAMPLES.items():
        spec = parse_prompt(caption)
        scene = Scene(spec.background, tuple(Shape(s.kind, s.color, s.size, s.position) for s in spec.shapes))
        pixels = render_uint8([scene], size)[0].permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(directory / name)
        paths.append(directory / name)
    return paths


if __name__ == "__main__":
    for path in write_examples():
        print(path)
