"""Commands that only read declarations do not import torch (it alone takes seconds to import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

CHECK = """
import sys
from nodegraph import cli
code = cli.main({argv!r})
heavy = sorted(name for name in ("torch", "open_clip", "timm", "torchvision", "numpy", "PIL") if name in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [
    ["nodes"], ["nodes", "--json"], ["nodes", "--types"],
    ["validate", str(REPO / "workflows" / "dalle2_text2img.json")],
    ["validate", str(REPO / "workflows" / "glide_inpaint.json"), "--param", "seed=3"],
])
def test_declaration_only_commands_import_no_torch(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK.format(argv=argv)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr.splitlines()[-1]
