"""Safety: tokens, Host/Origin checks, /view confinement, limits, and malformed input of every kind
(bad messages over a real websocket, broken handshakes and frames over a raw TCP socket)."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from nodegraph.server import main as server_main
from nodegraph.server.app import NodegraphServer
from nodegraph.server.background import BackgroundServer
from nodegraph.server.config import ServerConfig

from test_server_support import (
    ADD_WORKFLOW,
    TIMEOUT,
    Client,
    ServeFactory,
    ServerPool,
    make_engine,
    types_of,
)

TOKEN = "correct-horse-battery"



@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    with ServerPool(tmp_path) as pool:
        yield pool.start


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes over a plain TCP connection; what the server answers (one response, or all until it closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            head, separator, body = received.partition(b"\r\n\r\n")
            if separator:
                lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                    return received


def handshake(port: int, path: str = "/ws?clientId=raw", host: str | None = None, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def refused_status(server: Any, **options: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        Client(server, **options)
    return refused.value.response.status_code


# ---------------------------------------------------------------- token


def test_a_token_is_required_and_checked(serve: ServeFactory) -> None:
    server = serve(token=TOKEN)
    assert refused_status(server) == 401
    assert refused_status(server, query={"token": "wrong-token-here"}) == 403
    with Client(server, query={"token": TOKEN}) as client:
        assert client.hello["type"] == "status"
    with Client(server, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.run(ADD_WORKFLOW)[-2]["type"] == "execution_success"

    status, headers, body = http_get(server.url("/object_info"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and b"token" in body
    assert http_get(server.url("/object_info", token="nope-nope-nope"))[0] == 403
    assert http_get(server.url("/object_info", token=TOKEN))[0] == 200
    assert http_get(server.url("/"), {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    # The GUI opened with ?token= gets it as a cookie, so the frontend's own requests (no token) get in.
    status, headers, _ = http_get(server.url("/", token=TOKEN))
    assert status == 200 and "nodegraph_token=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert "SameSite=Strict" in headers["Set-Cookie"]
    assert http_get(server.url("/object_info"), {"Cookie": f"nodegraph_token={TOKEN}"})[0] == 200
    assert http_get(server.url("/object_info"), {"Cookie": "nodegraph_token=wrong-token-here"})[0] == 403


def test_binding_beyond_loopback_needs_a_token(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = ServerConfig(host="0.0.0.0", port=0, output_dir=tmp_path)
    assert any("--token" in problem for problem in config.problems())
    with pytest.raises(ValueError, match="token"):
        NodegraphServer(config)
    assert server_main(["--host", "0.0.0.0", "--port", "0", "--output-dir", str(tmp_path)]) == 2
    assert "give a --token" in capsys.readouterr().err
    assert ServerConfig(host="0.0.0.0", token=TOKEN).problems() == []
    assert ServerConfig(host="::1").problems() == [] and ServerConfig(host="localhost").problems() == []


# ---------------------------------------------------------------- Host and Origin


def test_cross_site_origins_are_refused(serve: ServeFactory) -> None:
    server = serve()
    assert refused_status(server, origin="http://evil.example") == 403
    assert refused_status(server, origin=f"http://127.0.0.1:{server.port + 1}") == 403
    with Client(server, origin=f"http://127.0.0.1:{server.port}") as client:  # the GUI's own origin
        assert client.hello["type"] == "status"
    status, _, body = http_get(server.url("/history"), {"Origin": "https://evil.example"})
    assert status == 403 and b"does not match Host" in body
    assert http_get(server.url("/history"), {"Origin": f"http://127.0.0.1:{server.port}"})[0] == 200


def test_allowed_origins_can_be_listed(serve: ServeFactory) -> None:
    server = serve(allowed_origins=("http://localhost:3000",))
    with Client(server, origin="http://localhost:3000") as client:
        assert client.hello["type"] == "status"
    assert refused_status(server, origin="http://localhost:3001") == 403


def test_a_foreign_host_name_is_refused_on_loopback(serve: ServeFactory) -> None:
    # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example.
    server = serve()
    reply = raw_exchange(server.port, handshake(server.port, host=f"evil.example:{server.port}"))
    assert reply.startswith(b"HTTP/1.1 403") and b"DNS rebinding" in reply
    reply = raw_exchange(server.port, f"GET / HTTP/1.1\r\nHost: evil.example:{server.port}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403")
    reply = raw_exchange(server.port, f"GET /prompt HTTP/1.1\r\nHost: localhost:{server.port}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------- /view


def test_view_serves_only_files_inside_the_output_directory(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    output = tmp_path / "output"
    (output / "sub").mkdir(parents=True)
    (output / "sub" / "ok.png").write_bytes(b"\x89PNG fake")
    (output / "page.html").write_text("<script>alert(1)</script>")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    os.symlink(secret, output / "link.txt")
    os.symlink(tmp_path, output / "escape")

    status, headers, body = http_get(server.url("/view", filename="ok.png", subfolder="sub", type="output"))
    assert (status, body, headers["Content-Type"]) == (200, b"\x89PNG fake", "image/png")
    status, headers, _ = http_get(server.url("/view", filename="page.html"))
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"].startswith("attachment")

    refused = [
        {"filename": "../secret.txt"},
        {"filename": "secret.txt", "subfolder": ".."},
        {"filename": "secret.txt", "subfolder": "sub/../.."},
        {"filename": str(secret)},
        {"filename": "link.txt"},
        {"filename": "secret.txt", "subfolder": "escape"},
        {"filename": "queue.json", "subfolder": ".nodegraph"},
    ]
    for query in refused:
        status, _, body = http_get(server.url("/view", **query))
        assert status == 403, (query, status, body)
        assert b"secret" != body
    (output / ".nodegraph").mkdir(exist_ok=True)
    (output / ".nodegraph" / "queue.json").write_text("{}")
    assert http_get(server.url("/view", filename="queue.json", subfolder=".nodegraph"))[0] == 403
    assert http_get(server.url("/view", filename="missing.png"))[0] == 404
    assert http_get(server.url("/view", filename="sub"))[0] == 404
    assert http_get(server.url("/view"))[0] == 400
    assert http_get(server.url("/view", filename="ok.png", subfolder="sub", type="bogus"))[0] == 400
    assert http_get(server.url("/view", filename="ok.png", subfolder="sub", type="input"))[0] == 404


def test_http_odds_and_ends(serve: ServeFactory) -> None:
    server = serve()
    status, headers, body = http_get(server.url("/"))
    assert status == 200 and b"<title>ComfyUI</title>" in body
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert http_get(server.url("/nothing-here"))[0] == 404
    assert http_get(server.url("/ws"))[0] == 426  # a plain GET on the websocket endpoint
    assert http_get(server.url("/history", max_items="-1"))[0] == 400
    reply = raw_exchange(server.port, f"PUT /queue HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 405")
    reply = raw_exchange(server.port, handshake(server.port, path="/other"))
    assert reply.startswith(b"HTTP/1.1 404")
    reply = raw_exchange(server.port, handshake(server.port, path="/ws?clientId=../../etc"))
    assert reply.startswith(b"HTTP/1.1 400") and b"clientId" in reply


def test_the_number_of_clients_is_capped(serve: ServeFactory) -> None:
    server = serve(max_clients=1)
    with Client(server, "first"):
        assert refused_status(server, client_id="second") == 503
    with Client(server, "third") as client:  # the slot is free again
        assert client.hello["type"] == "status"


# ---------------------------------------------------------------- malformed messages

MALFORMED: list[tuple[str | bytes, str]] = [
    ("not json", "invalid_json"),
    ("{\"type\": \"prompt\"", "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ("\"just a string\"", "invalid_message"),
    ("{}", "invalid_message"),
    ('{"type": 5}', "invalid_message"),
    ('{"type": "prompt", "data": []}', "invalid_message"),
    ('{"type": "prompt", "data": {}, "extra": 1}', "invalid_message"),
    ('{"type": "launch_missiles"}', "unknown_type"),
    ('{"type": "prompt", "data": {"prompt": 5}}', "invalid_fields"),
    ('{"type": "prompt", "data": {"prompt": {}, "params": "a=1"}}', "invalid_fields"),
    ('{"type": "prompt", "data": {"prompt": {}, "prompt_id": 7}}', "invalid_fields"),
    ('{"type": "prompt", "data": {"prompt": {}, "prompt_id": "../../etc/passwd"}}', "invalid_fields"),
    ('{"type": "prompt", "data": {"prompt": {}, "promt_id": "typo"}}', "invalid_fields"),
    ('{"type": "interrupt", "data": {"prompt_id": ["a"]}}', "invalid_fields"),
    ('{"type": "queue", "data": {"delete": "abc"}}', "invalid_fields"),
    ('{"type": "queue", "data": {"clear": "yes"}}', "invalid_fields"),
    ('{"type": "history", "data": {"max_items": 0}}', "invalid_fields"),
    ('{"type": "history", "data": {"max_items": true}}', "invalid_fields"),
    ('{"type": "object_info", "data": {"x": 1}}', "invalid_fields"),
    ('{"type": "prompt", "data": {"prompt": {"1": {"inputs": {"value": NaN}}}}}', "invalid_json"),
    ('{"type": "prompt", "data": {"prompt": {"1": {"inputs": {"value": 1e999}}}}}', "invalid_json"),
    ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ('{"type": "history", "data": {"max_items": 1' + "0" * 5000 + "}}", "invalid_json"),
    (b"\x00\x01binary", "binary_not_accepted"),
]


def test_every_malformed_message_gets_an_error_and_the_connection_survives(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        for frame, code in MALFORMED:
            client.ws.send(frame)
            reply = client.next_message()
            assert reply["type"] == "error", (frame[:80], reply)
            assert reply["data"]["code"] == code, (frame[:80], reply)
            assert reply["data"]["message"]
        frames = client.run(ADD_WORKFLOW)  # the same connection still works
    assert frames[-2]["type"] == "execution_success"


def test_oversized_messages_are_refused_then_cut_off(serve: ServeFactory) -> None:
    server = serve(max_message_bytes=4096)
    with Client(server) as client:
        client.ws.send(json.dumps({"type": "prompt", "data": {"prompt": {"x": "a" * 5000}}}))
        reply = client.next_message()
        assert reply["data"]["code"] == "message_too_large"
        client.ws.send(json.dumps({"type": "queue", "data": {"pad": "é" * 3000}}))  # 6000 bytes, 3000 characters
        assert client.next_message()["data"]["code"] == "message_too_large"
        assert client.request("queue")["type"] == "queue"
        client.ws.send("x" * (server.server.config.hard_message_bytes + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            client.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with Client(server) as client:
        assert client.run(ADD_WORKFLOW)[-2]["type"] == "execution_success"


@settings(max_examples=60, deadline=None)
@given(
    message=st.one_of(
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=20,
        ).map(json.dumps),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["prompt", "interrupt", "queue", "history", "object_info", "x"])},
            optional={"data": st.dictionaries(st.sampled_from(["prompt", "prompt_id", "delete"]), st.integers())},
        ).map(json.dumps),
    )
)
def test_random_messages_never_break_a_connection(fuzz_client: Client, message: str) -> None:
    fuzz_client.ws.send(message)
    reply = fuzz_client.next_message()
    assert reply["type"] in {"error", "prompt_error", "interrupt", "queue", "history", "object_info", "feature_flags"}


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    config = ServerConfig(port=0, state_dir=root / "state", ping_interval=None)
    with BackgroundServer(config, make_engine(root)) as server, Client(server) as client:
        yield client


# ---------------------------------------------------------------- broken TCP


def test_a_broken_handshake_is_refused_and_the_server_carries_on(serve: ServeFactory) -> None:
    server = serve()
    assert raw_exchange(server.port, b"this is not HTTP\r\n\r\n")[8:13] == b" 400 "
    many_headers = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 300 + b"\r\n"
    assert raw_exchange(server.port, many_headers)[8:13] in (b" 400 ", b" 431 ")
    long_line = b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n"
    assert raw_exchange(server.port, long_line)[8:13] in (b" 400 ", b" 414 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127")  # then hang up mid-request
    with Client(server) as client:
        assert client.run(ADD_WORKFLOW)[-2]["type"] == "execution_success"


def test_a_broken_frame_closes_only_that_connection(serve: ServeFactory) -> None:
    server = serve()
    with Client(server, "bystander") as bystander:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(handshake(server.port))
            response = b""
            while b"\r\n\r\n" not in response:
                response += sock.recv(4096)
            assert response.startswith(b"HTTP/1.1 101")
            # A frame with a reserved opcode (3): the server fails the connection (1002).
            sock.sendall(b"\x83\x80\x00\x00\x00\x00")
            data = response.split(b"\r\n\r\n", 1)[1]
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        close = data[data.index(b"\x88") :]  # skip the status message; find the close frame
        assert int.from_bytes(close[2:4], "big") == 1002
        frames = bystander.run(ADD_WORKFLOW)
    assert types_of(frames)[-2] == "execution_success"
