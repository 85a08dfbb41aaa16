"""ComfyUI's HTTP API, endpoint by endpoint: each answer's shape, and bad input of every kind (bad JSON, missing
fields, huge bodies, odd query values, path escapes, unknown ids) answered with a clear 4xx, never a 500 or a
dropped connection; the same routes under /api/."""

from __future__ import annotations

import io
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nodegraph.server.background import BackgroundServer
from nodegraph.server.config import ServerConfig

from test_server_support import (
    ADD_WORKFLOW,
    TIMEOUT,
    Client,
    ServeFactory,
    ServerPool,
    fresh_gate,
    http,
    make_engine,
    steps_workflow,
)

GRADIENT_SAVE = {
    "1": {"class_type": "Gradient", "inputs": {"size": 8}, "_meta": {"title": "Gradient"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "http"},
          "_meta": {"title": "Save Image"}},
}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    with ServerPool(tmp_path) as pool:
        yield pool.start


@pytest.fixture
def gate() -> threading.Semaphore:
    return fresh_gate()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """One server for the tests that only read or refuse (faster than a server per test)."""
    root = tmp_path_factory.mktemp("http")
    config = ServerConfig(port=0, state_dir=root / "state", ping_interval=None, max_message_bytes=64 * 1024,
                          max_upload_bytes=256 * 1024)
    with BackgroundServer(config, make_engine(root)) as server:
        yield server


def png_bytes(color: tuple[int, int, int] = (255, 0, 0), size: int = 4, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), color if mode == "RGB" else (*color, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file[0]}"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + file[1] + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(server: BackgroundServer, name: str, data: bytes, path: str = "/upload/image", **fields: str) -> Any:
    body, headers = multipart(fields, (name, data))
    return http("POST", server.url(path), raw=body, headers=headers)


def raw_request(port: int, text: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(text.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def error_type(reply: Any) -> str:
    return reply["error"]["type"]


# ---------------------------------------------------------------- POST /prompt and the documented client flow


def test_comfyui_documented_flow_works_with_a_plain_http_client(serve: ServeFactory, tmp_path: Path) -> None:
    # POST /prompt -> websocket until `executing` with node null -> GET /history/{id} -> GET /view
    server = serve()
    with Client(server, "plain") as client:
        status, _, reply = http("POST", server.url("/prompt"), {"prompt": GRADIENT_SAVE, "client_id": "plain"})
        assert status == 200 and set(reply) == {"prompt_id", "number", "node_errors"} and reply["node_errors"] == {}
        while True:
            message = client.next_message("executing")
            if message["data"]["node"] is None and message["data"]["prompt_id"] == reply["prompt_id"]:
                break
    status, _, history = http("GET", server.url(f"/history/{reply['prompt_id']}"))
    [image] = history[reply["prompt_id"]]["outputs"]["2"]["images"]
    status, headers, body = http("GET", server.url("/view", **image))
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == (tmp_path / "output" / image["filename"]).read_bytes()


def test_post_prompt_takes_comfyuis_fields(serve: ServeFactory, gate: threading.Semaphore, tmp_path: Path) -> None:
    server = serve()
    with Client(server, "owner") as client:
        hold = http("POST", server.url("/prompt"), {"prompt": steps_workflow(1, gated=True, tag="f"),
                                                     "client_id": "owner"})[2]["prompt_id"]
        client.next_message("execution_start")
        later = http("POST", server.url("/api/prompt"), {"prompt": ADD_WORKFLOW, "prompt_id": "later"})[2]
        first = http("POST", server.url("/prompt"), {"prompt": ADD_WORKFLOW, "params": {"a": 9}, "front": True})[2]
        chosen = http("POST", server.url("/prompt"), {"prompt": ADD_WORKFLOW, "params": {"a": 8}, "number": 0.5})[2]
        assert later["prompt_id"] == "later" and first["number"] < 0 < chosen["number"] < later["number"]
        pending = [item[1] for item in http("GET", server.url("/queue"))[2]["queue_pending"]]
        assert pending == [first["prompt_id"], chosen["prompt_id"], "later"]  # ordered by number, as ComfyUI does
        gate.release()
        client.until_done(hold)
    pnginfo = {"workflow": {"nodes": [], "links": [], "version": 0.4}}
    body = {"prompt": GRADIENT_SAVE, "extra_data": {"extra_pnginfo": pnginfo}, "partial_execution_targets": ["2"]}
    status, _, reply = http("POST", server.url("/prompt"), body)
    assert status == 200
    entry = wait_history(server, reply["prompt_id"])
    assert entry["prompt"][3] == {"extra_pnginfo": pnginfo} and entry["prompt"][4] == ["2"]
    [image] = entry["outputs"]["2"]["images"]
    with Image.open(tmp_path / "output" / image["filename"]) as saved:
        assert json.loads(saved.text["workflow"]) == pnginfo["workflow"]  # SaveImage embeds the client's graph
        assert json.loads(saved.text["prompt"])["1"]["class_type"] == "Gradient"


def wait_history(server: BackgroundServer, prompt_id: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        reply = http("GET", server.url(f"/history/{prompt_id}"))[2]
        if reply:
            return reply[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def test_post_prompt_refuses_bad_input_clearly(shared: BackgroundServer) -> None:
    url = shared.url("/prompt")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"raw": b"{not json"}, 400, "invalid_json"),
        ({"raw": b""}, 400, "invalid_json"),
        ({"raw": b"[1, 2]"}, 400, "invalid_request"),
        ({"body": {"client_id": "x"}}, 400, "no_prompt"),
        ({"body": {"prompt": "text"}}, 400, "invalid_prompt"),
        ({"body": {"prompt": {}, "prompt_id": "../../etc"}}, 400, "invalid_prompt"),
        ({"body": {"prompt": {}, "client_id": 5}}, 400, "invalid_prompt"),
        ({"body": {"prompt": {}, "number": "first"}}, 400, "invalid_prompt"),
        ({"body": {"prompt": ADD_WORKFLOW, "extra_data": {"extra_pnginfo": "x"}}}, 400, "invalid_prompt"),
        ({"body": {"prompt": ADD_WORKFLOW, "extra_data": {"extra_pnginfo": {"bad key\n": 1}}}}, 400,
         "invalid_extra_data"),
        ({"body": {"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}}, 400, "invalid_prompt"),
        ({"raw": b'{"prompt": {"1": {"inputs": {"value": NaN}}}}'}, 400, "invalid_json"),
        ({"raw": b"[" * 100_000 + b"]" * 100_000}, 413, "body_too_large"),
        ({"raw": b'{"prompt": {"x": "' + b"a" * 70_000 + b'"}}'}, 413, "body_too_large"),
    ]
    for case, status, code in cases:
        got, _, reply = http("POST", url, case.get("body"), raw=case.get("raw"))
        assert (got, error_type(reply)) == (status, code), (case, reply)
        assert reply["error"]["message"]


def test_error_reports_are_bounded_in_size_and_count(serve: ServeFactory) -> None:
    server = serve()
    params = {f"p{index:05d}": index for index in range(8000)}  # ~130 kB of unknown params, as in issue 21
    nodes = {str(index): {"class_type": f"Missing{index}", "inputs": {"x": index}} for index in range(3000)}
    for prompt in ({"prompt": ADD_WORKFLOW, "params": params}, {"prompt": nodes}):
        status, headers, reply = http("POST", server.url("/prompt"), prompt)
        assert status == 400
        assert len(json.dumps(reply)) < 200_000
        assert len(reply["error"]["extra_info"]["errors"]) <= 100 and reply["error"]["extra_info"]["omitted"] >= 1
    with Client(server) as client:
        client.send("prompt", {"prompt": nodes})
        raw = client.ws.recv(timeout=TIMEOUT)
        while json.loads(raw)["type"] != "prompt_error":
            raw = client.ws.recv(timeout=TIMEOUT)
        assert len(raw) < 200_000


def test_lone_surrogates_are_refused_not_fatal(serve: ServeFactory) -> None:
    server = serve()
    text = '{"prompt": {"1": {"class_type": "String", "inputs": {"value": "\\ud800"}}}}'
    status, _, reply = http("POST", server.url("/prompt"), raw=text.encode())
    assert status == 400 and "surrogate" in reply["error"]["message"]
    with Client(server) as client:
        client.ws.send('{"type": "prompt", "data": {"prompt": {"1": {"inputs": {"v": "\\udfff"}}}}}')
        reply = client.next_message()
        assert reply["type"] == "error" and reply["data"]["code"] == "invalid_json"
        assert "surrogate" in reply["data"]["message"]
        client.ws.send('{"type": "history", "data": {"prompt_id": "\\ud83d\\ude00"}}')  # a valid pair: just a bad id
        assert client.next_message()["data"]["code"] == "invalid_fields"
        assert client.run(ADD_WORKFLOW)[-2]["type"] == "execution_success"  # the connection survived


# ---------------------------------------------------------------- queue, history, interrupt, free


def test_queue_and_history_routes(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve(history_page=2)
    with Client(server) as client:
        running = client.submit(steps_workflow(1, gated=True, tag="q"))
        client.next_message("execution_start")
        waiting = [client.submit(ADD_WORKFLOW, {"a": value}) for value in (1, 2, 3)]
        status, _, queue = http("GET", server.url("/api/queue"))
        assert status == 200 and [item[1] for item in queue["queue_running"]] == [running]
        number, prompt_id, prompt, extra, outputs = queue["queue_pending"][0]
        assert (prompt_id, prompt, extra, outputs) == (waiting[0], ADD_WORKFLOW, {}, [])
        assert http("GET", server.url("/prompt"))[2] == {"exec_info": {"queue_remaining": 4}}
        status, _, reply = http("POST", server.url("/queue"), {"delete": [waiting[0], "nobody"]})
        assert status == 200 and reply["deleted"] == [waiting[0]] and "nobody" in reply["not_deleted"]
        assert http("POST", server.url("/interrupt"), {"prompt_id": waiting[1]})[2]["interrupted"] is False
        assert http("POST", server.url("/queue"), {"clear": True})[2]["deleted"] == waiting[1:]
        reply = http("POST", server.url("/interrupt"), raw=b"")[2]  # ComfyUI's frontend sends no body
        assert reply == {"prompt_id": running, "interrupted": True}
        client.until_done(running)
        done = [client.run(ADD_WORKFLOW, {"b": value})[-1]["data"]["prompt_id"] for value in (1, 2, 3)]
    status, headers, page = http("GET", server.url("/history"))
    assert list(page) == done[-2:] and headers["X-History-Total"] == "4"  # pages of --history-page entries
    assert list(http("GET", server.url("/history", max_items="1"))[2]) == done[-1:]
    assert list(http("GET", server.url("/history", max_items="2", offset="0"))[2]) == [running, done[0]]
    assert http("GET", server.url("/history/unknown"))[2] == {}
    assert http("GET", server.url("/history/..%2F..%2Fetc"))[2] == {}
    assert http("POST", server.url("/history"), {"delete": [done[0]]})[2]["deleted"] == [done[0]]
    assert done[0] not in http("GET", server.url("/history", max_items="10", offset="0"))[2]
    assert http("POST", server.url("/history"), {"clear": True})[2]["cleared"] == 3
    assert http("GET", server.url("/history"))[2] == {}
    assert http("POST", server.url("/free"), {"unload_models": True, "free_memory": True})[0] == 200


def test_history_replies_are_bounded_in_bytes(serve: ServeFactory) -> None:
    server = serve(max_history_reply_bytes=1)
    with Client(server) as client:
        for value in (1, 2, 3):
            client.run(ADD_WORKFLOW, {"a": value})
    status, headers, page = http("GET", server.url("/history"))
    assert status == 200 and len(page) == 1 and headers["X-History-Left-Off"] == "2"


def test_queue_history_and_interrupt_refuse_bad_input(shared: BackgroundServer) -> None:
    for path in ("/queue", "/history"):
        assert error_type(http("POST", shared.url(path), raw=b"nope")[2]) == "invalid_json"
        assert http("POST", shared.url(path), {"delete": "abc"})[0] == 400
        assert http("POST", shared.url(path), {"delete": ["../x"]})[0] == 400
        assert http("POST", shared.url(path), {"clear": "yes"})[0] == 400
    assert http("POST", shared.url("/interrupt"), {"prompt_id": 5})[0] == 400
    assert http("POST", shared.url("/interrupt"), raw=b"{")[0] == 400
    assert http("POST", shared.url("/free"), raw=b"[1]")[0] == 400
    for query in ("max_items=0", "max_items=-1", "max_items=%D9%A3", "max_items=%C2%B2", "max_items=1e3",
                  "max_items=99999999999999999999", "offset=x", "max_items=1&max_items=2", "max_items="):
        status, _, reply = http("GET", shared.url("/history") + "?" + query)
        assert status == 400 and error_type(reply) == "invalid_query", (query, reply)


@settings(max_examples=60, deadline=None)
@given(
    path=st.sampled_from(["/history", "/view", "/jobs", "/queue", "/object_info/Add", "/userdata", "/api/prompt"]),
    query=st.lists(st.tuples(st.sampled_from(["max_items", "offset", "filename", "type", "subfolder", "status",
                                              "limit", "dir", "channel", "token"]),
                             st.text(max_size=12)), max_size=4),
)
def test_odd_query_values_never_cause_a_server_error(shared: BackgroundServer, path: str, query: list[Any]) -> None:
    from urllib.parse import quote

    text = "&".join(f"{key}={quote(value, safe='', errors='surrogatepass')}" for key, value in query)
    status, _, _ = http("GET", shared.url(path) + ("?" + text if text else ""))
    assert status < 500


def test_duplicated_security_headers_are_a_clear_400(shared: BackgroundServer) -> None:
    port = shared.port
    for extra in (f"Host: 127.0.0.1:{port}\r\n", f"Origin: http://127.0.0.1:{port}\r\n" * 2,
                  "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"):
        reply = raw_request(port, f"GET /queue HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n")
        assert reply[9:12] == b"400", reply[:200]
        assert b"more than one" in reply or b"Host" in reply


# ---------------------------------------------------------------- jobs (the frontend's queue panel)


def test_jobs_routes(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server) as client:
        done = client.run(GRADIENT_SAVE)[-1]["data"]["prompt_id"]
        failed = client.run({"1": {"class_type": "Fail", "inputs": {}},
                             "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}}})[-1]["data"]["prompt_id"]
        running = client.submit(steps_workflow(1, gated=True, tag="jobs"))
        client.next_message("execution_start")
        pending = client.submit(ADD_WORKFLOW, {"a": 77})
        jobs = http("GET", server.url("/api/jobs", status="in_progress,pending,completed,failed", limit="10"))[2]
        assert [(job["id"], job["status"]) for job in jobs["jobs"]] == [
            (running, "in_progress"), (pending, "pending"), (failed, "failed"), (done, "completed")]
        assert jobs["pagination"] == {"offset": 0, "limit": 10, "total": 4, "has_more": False}
        finished = jobs["jobs"][3]
        assert finished["preview_output"]["nodeId"] == "2" and finished["outputs_count"] == 1
        assert jobs["jobs"][2]["execution_error"]["exception_message"] == "boom"
        detail = http("GET", server.url(f"/jobs/{done}"))[2]
        assert detail["outputs"]["2"]["images"] and detail["workflow"]["prompt"] == GRADIENT_SAVE
        assets = http("GET", server.url(f"/jobs/{done}/assets"))[2]
        assert assets["assets"][0]["node_id"] == "2" and assets["pagination"]["total"] == 1
        assert http("POST", server.url(f"/jobs/{pending}/cancel"))[2]["cancelled"] == [pending]
        assert http("POST", server.url("/jobs/cancel"), {"job_ids": [running]})[2]["cancelled"] == [running]
        client.until_done(running)
    assert http("GET", server.url("/jobs", status="bogus"))[0] == 400
    assert http("GET", server.url("/jobs", limit="0"))[0] == 400
    assert http("GET", server.url("/jobs/unknown"))[0] == 404
    assert http("GET", server.url("/jobs/unknown/assets"))[0] == 404
    assert http("POST", server.url("/jobs/cancel"), {"job_ids": "x"})[0] == 400


# ---------------------------------------------------------------- nodes and the system


def test_object_info_shapes(shared: BackgroundServer) -> None:
    info = http("GET", shared.url("/object_info"))[2]
    steps = info["Steps"]
    assert steps["input"]["required"]["steps"] == ["INT", {"default": 4, "min": 1}]
    assert steps["input"]["required"]["tag"][1]["tooltip"] == "varies the cache key"
    assert steps["input_order"] == {"required": ["steps", "gated", "tag"]}
    assert steps["output"] == ["FLOAT"] and steps["output_name"] == ["steps"] and steps["output_is_list"] == [False]
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["python_module"] == "nodegraph.nodes.image"
    assert info["LoadImage"]["input"]["required"]["image"][1]["image_upload"] is True
    for key in ("name", "display_name", "description", "category", "output_tooltips", "deprecated", "experimental"):
        assert key in steps
    assert http("GET", shared.url("/object_info/Steps"))[2] == {"Steps": steps}
    assert http("GET", shared.url("/api/object_info/Nope"))[2] == {}


def test_system_routes(shared: BackgroundServer) -> None:
    stats = http("GET", shared.url("/system_stats"))[2]
    assert {"os", "ram_total", "ram_free", "python_version", "comfyui_version"} <= set(stats["system"])
    assert stats["devices"][0]["type"] == "cpu"
    assert http("GET", shared.url("/features"))[2]["supports_preview_metadata"] is True
    assert http("GET", shared.url("/embeddings"))[2] == []
    [extension] = http("GET", shared.url("/api/extensions"))[2]
    status, headers, body = http("GET", shared.url(extension))
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"registerExtension" in body
    assert http("GET", shared.url("/extensions/nodegraph/other.js"))[0] == 404
    assert http("GET", shared.url("/models"))[2] == ["nodegraph"]
    assert "clip.safetensors" in http("GET", shared.url("/models/nodegraph"))[2]
    assert http("GET", shared.url("/models/checkpoints"))[0] == 404
    assert http("DELETE", shared.url("/prompt"))[0] == 405


# ---------------------------------------------------------------- uploads and /view


def test_uploads_are_confined_and_never_overwrite(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve(max_upload_bytes=64 * 1024)
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    assert upload(server, "photo.png", red)[2] == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert upload(server, "photo.png", red)[2]["name"] == "photo.png"  # the same file: reused
    assert upload(server, "photo.png", blue)[2]["name"] == "photo (1).png"  # another: a new name
    assert (tmp_path / "input" / "photo.png").read_bytes() == red
    assert upload(server, "photo.png", blue, overwrite="true")[2]["name"] == "photo.png"
    assert (tmp_path / "input" / "photo.png").read_bytes() == blue
    reply = upload(server, "in.png", red, subfolder="pets", type="temp")[2]
    assert reply == {"name": "in.png", "subfolder": "pets", "type": "temp"}
    assert http("GET", server.url("/view", filename="in.png", subfolder="pets", type="temp"))[2] == red
    assert "photo (1).png" in http("GET", server.url("/object_info/LoadImage"))[2]["LoadImage"]["input"]["required"][
        "image"][0]
    refused = [
        (("../escape.png", red), {}, 400),
        (("..\\escape.png", red), {}, 400),
        ((".hidden.png", red), {}, 400),
        (("ok.png", red), {"subfolder": "../.."}, 403),
        (("ok.png", red), {"subfolder": "/etc"}, 403),
        (("ok.png", red), {"type": "system"}, 400),
        (("ok.png", b"not an image"), {}, 400),
        (("big.png", b"\x89PNG" + b"0" * 70_000), {}, 413),
    ]
    for (name, data), fields, status in refused:
        got, _, reply = upload(server, name, data, **fields)
        assert got == status, (name, fields, reply)
        assert reply["error"]["message"]
    assert not (tmp_path / "escape.png").exists()
    assert http("POST", server.url("/upload/image"), {"image": "x"})[0] == 400  # not multipart
    body, headers = multipart({"type": "input"}, None)
    assert http("POST", server.url("/upload/image"), raw=body, headers=headers)[0] == 400  # no file
    body, headers = multipart({"wrong": "x"}, ("a.png", red))
    assert http("POST", server.url("/upload/image"), raw=body, headers=headers)[0] == 400
    status, _, reply = http("POST", server.url("/upload/image"), raw=b"--x\r\nbroken",
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400


def test_upload_mask_puts_the_mask_in_the_alpha_channel(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    upload(server, "base.png", png_bytes((10, 200, 30), size=8))
    mask = png_bytes((0, 0, 0), size=8, mode="RGBA")
    reference = json.dumps({"filename": "base.png", "subfolder": "", "type": "input"})
    reply = upload(server, "masked.png", mask, path="/upload/mask", original_ref=reference)[2]
    with Image.open(tmp_path / "input" / reply["name"]) as stored:
        assert stored.mode == "RGBA" and stored.getpixel((0, 0)) == (10, 200, 30, 128)
    alpha = http("GET", server.url("/view", filename=reply["name"], type="input", channel="a"))[2]
    with Image.open(io.BytesIO(alpha)) as picture:
        assert picture.getpixel((0, 0))[3] == 128
    missing = json.dumps({"filename": "nope.png"})
    assert upload(server, "m.png", mask, path="/upload/mask", original_ref=missing)[0] == 404
    assert upload(server, "m.png", mask, path="/upload/mask", original_ref="{")[0] == 400
    escape = json.dumps({"filename": "../../secret.png"})
    assert upload(server, "m.png", mask, path="/upload/mask", original_ref=escape)[0] == 403


def test_view_streams_and_bounds_what_readers_can_hold(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve(max_view_streams=1)
    big = tmp_path / "output" / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: 256 MB the server must stream, never hold
    assert http("GET", server.url("/view", filename="x", channel="cmyk"))[0] == 400
    assert http("GET", server.url("/view", filename="a", type="output") + "&filename=b")[0] == 400
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as slow:
        slow.sendall(f"GET /view?filename=big.bin HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        head = slow.recv(4096)  # then stop reading: the stream stalls with the buffers full
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 268435456" in head
        import time

        deadline = time.monotonic() + TIMEOUT
        status = 0
        while time.monotonic() < deadline:
            status = http("GET", server.url("/view", filename="big.bin"))[0]
            if status == 503:
                break
            time.sleep(0.1)
        assert status == 503  # the stalled reader holds the only slot, and one chunk of memory
    with Client(server) as client:  # the server is unaffected
        assert client.run(ADD_WORKFLOW)[-2]["type"] == "execution_success"


# ---------------------------------------------------------------- settings and user data


def test_settings_and_user_data(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    settings_ = http("GET", server.url("/settings"))[2]
    assert settings_["Comfy.TutorialCompleted"] is True
    assert http("POST", server.url("/settings/Comfy.Test"), 42)[0] == 200
    assert http("GET", server.url("/settings/Comfy.Test"))[2] == 42
    assert http("POST", server.url("/settings"), {"Comfy.Other": "x"})[0] == 200
    assert http("GET", server.url("/api/settings"))[2]["Comfy.Other"] == "x"
    assert http("POST", server.url("/settings"), [1])[0] == 400
    assert http("GET", server.url("/users"))[2] == {"storage": "server", "migrated": True}
    listing = http("GET", server.url("/userdata", dir="workflows", recurse="true", full_info="true"))[2]
    names = [item["path"] for item in listing]
    assert "nodegraph/dalle2_text2img.json" in names
    ui = http("GET", server.url("/userdata/workflows%2Fnodegraph%2Fdalle2_text2img.json"))[2]
    assert {node["type"] for node in ui["nodes"]} >= {"Prior", "Decoder", "SaveImage"} and ui["links"]
    status, _, _ = http("POST", server.url("/userdata/workflows%2Fmine.json"), raw=b'{"nodes": []}')
    assert status == 200
    assert http("GET", server.url("/userdata/workflows%2Fmine.json"))[2] == {"nodes": []}
    assert http("POST", server.url("/userdata/workflows%2Fmine.json") + "?overwrite=false", raw=b"{}")[0] == 409
    moved = http("POST", server.url("/userdata/workflows%2Fmine.json/move/workflows%2Fyours.json"))
    assert moved[2] == "workflows/yours.json"
    assert http("DELETE", server.url("/userdata/workflows%2Fyours.json"))[0] == 204
    assert http("DELETE", server.url("/userdata/workflows%2Fnodegraph%2Fdalle2_text2img.json"))[0] == 403
    for bad in ("..%2F..%2Fsecret", "%2Fetc%2Fpasswd", "workflows%2F..%2F..%2Fx", ".hidden", "a%00b"):
        assert http("GET", server.url(f"/userdata/{bad}"))[0] in (403, 404), bad
        assert http("POST", server.url(f"/userdata/{bad}"), raw=b"x")[0] == 403, bad
    assert http("GET", server.url("/userdata"))[0] == 400
    assert http("GET", server.url("/userdata", dir="../.."))[0] == 403
    assert not list(tmp_path.glob("secret*"))


# ---------------------------------------------------------------- who sees what: client ids are not capabilities


def test_a_client_id_is_not_a_capability(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server, "alice-secret-id") as alice:
        assert alice.hello["data"]["sid"] == "alice-secret-id"
        # Mallory learns the id (from a log, say) and connects with it while Alice is connected.
        with Client(server, "alice-secret-id") as mallory:
            assert mallory.hello["data"]["sid"] != "alice-secret-id"  # given a fresh id instead
            status, _, reply = http("POST", server.url("/prompt"), {"prompt": steps_workflow(2, tag="private"),
                                                                     "client_id": "alice-secret-id"})
            frames = alice.until_done(reply["prompt_id"])
            assert sum(isinstance(frame, bytes) for frame in frames) == 2  # Alice got her previews
            # Mallory got nothing of Alice's run, and the queue and history do not reveal ids.
            mallory.ws.send(json.dumps({"type": "queue", "data": {}}))
            while True:
                message = mallory.recv()
                assert isinstance(message, dict), "a preview reached another client"
                assert message["type"] in ("status", "queue"), message
                if message["type"] == "queue":
                    break
    entry = http("GET", server.url(f"/history/{reply['prompt_id']}"))[2]
    assert "alice-secret-id" not in json.dumps(entry)
    with Client(server, "alice-secret-id") as again:  # once Alice has gone, the id is free again
        assert again.hello["data"]["sid"] == "alice-secret-id"
