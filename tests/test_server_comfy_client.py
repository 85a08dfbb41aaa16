"""A ComfyUI client library from PyPI (comfy-api-simplified), used unchanged, drives nodegraph over HTTP:
it queues a workflow with POST /prompt, waits on the websocket and fetches the images through /history and
/view; with SaveImageWebsocket the images come back as binary websocket frames instead (ComfyUI's own
websocket example flow)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from test_server_support import Client, ServeFactory, ServerPool, http

comfy = pytest.importorskip("comfy_api_simplified", reason="the test extra installs comfy-api-simplified")

WORKFLOW = {
    "1": {"class_type": "Gradient", "inputs": {"size": 16}, "_meta": {"title": "Gradient"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "library"},
          "_meta": {"title": "Save Image"}},
}
OVER_WEBSOCKET = {
    "1": {"class_type": "Gradient", "inputs": {"size": 12}, "_meta": {"title": "Gradient"}},
    "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}, "_meta": {"title": "Send"}},
}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    with ServerPool(tmp_path) as pool:
        yield pool.start


def test_a_comfyui_client_library_queues_a_workflow_and_gets_its_images(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    api = comfy.ComfyApiWrapper(server.url("/").rstrip("/"))
    workflow = comfy.ComfyWorkflowWrapper(WORKFLOW)
    workflow.set_node_param("Gradient", "size", 20)
    images = api.queue_and_wait_images(workflow, "Save Image")
    [(name, data)] = images.items()
    assert name.startswith("library_") and data == (tmp_path / "output" / name).read_bytes()
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (20, 20)
    assert api.get_object_info("SaveImage")["SaveImage"]["output_node"] is True
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}


def test_save_image_websocket_sends_the_images_over_the_socket(serve: ServeFactory, tmp_path: Path) -> None:
    # ComfyUI's websockets_api_example_ws_images flow: connect first, POST with the client id, collect the
    # binary frames that arrive while the SaveImageWebsocket node runs.
    server = serve()
    with Client(server, "collector") as client:
        reply = http("POST", server.url("/prompt"), {"prompt": OVER_WEBSOCKET, "client_id": "collector"})[2]
        frames = client.until_done(reply["prompt_id"])
    [frame] = [frame for frame in frames if isinstance(frame, bytes)]
    assert struct.unpack(">II", frame[:8]) == (1, 2)
    with Image.open(io.BytesIO(frame[8:])) as picture:
        assert picture.format == "PNG" and picture.size == (12, 12)
    executed = [frame for frame in frames if isinstance(frame, dict) and frame["type"] == "executed"]
    assert executed[-1]["data"]["output"] == {"sent": 1}
    assert not list((tmp_path / "output").glob("*.png"))  # nothing written on the server
