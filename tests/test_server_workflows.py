"""A real image workflow through the server: DALL-E 2 text-to-image on the bundled models, few steps."""

from __future__ import annotations

import io
import json
import struct
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.engine.registry import Registry

from test_server_support import REPO, Client, ServerPool, types_of

DALLE2 = REPO / "workflows" / "dalle2_text2img.json"
FAST = {"prior_steps": 2, "steps": 3, "upsample_steps": 2, "seed": 3}


@pytest.mark.slow
@pytest.mark.skipif(not DALLE2.is_file(), reason="workflows/dalle2_text2img.json is not there yet")
def test_dalle2_text2img_runs_through_the_server_with_previews_and_a_saved_image(tmp_path: Path) -> None:
    workflow = json.loads(DALLE2.read_text())
    (tmp_path / "input").mkdir()
    engine = Engine(
        "cpu", input_dir=tmp_path / "input", output_dir=tmp_path / "output", registry=Registry.discover(plugins=False)
    )
    with ServerPool(tmp_path) as pool:
        server = pool.start(engine)
        with Client(server) as client:
            prompt_id = client.submit(workflow, FAST)
            frames = client.until_done(prompt_id, timeout=900)
        kinds = types_of(frames)
        assert kinds[:2] == ["execution_start", "execution_cached"]
        assert kinds[-2:] == ["execution_success", "executing"], [f for f in frames if isinstance(f, dict)][-3:]
        progress = [frame["data"] for frame in frames if isinstance(frame, dict) and frame["type"] == "progress"]
        steps = {item["node"]: item["max"] for item in progress}
        assert steps["decode"] == FAST["steps"] and steps["upsample"] == FAST["upsample_steps"]
        previews = [frame for frame in frames if isinstance(frame, bytes)]
        assert previews, "the decoder and upsampler send x0 previews"
        assert struct.unpack(">II", previews[0][:8]) == (1, 2)
        Image.open(io.BytesIO(previews[0][8:])).verify()
        [saved] = [frame["data"] for frame in frames if isinstance(frame, dict) and frame["type"] == "executed"]
        [image] = saved["output"]["images"]
        with urllib.request.urlopen(server.url("/view", **image), timeout=60) as reply:
            body = reply.read()
        with Image.open(io.BytesIO(body)) as picture:
            assert picture.format == "PNG" and picture.size[0] >= 64
