"""Server settings and the `nodegraph serve` command line that fills them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nodegraph.cluster import options as cluster_options
from nodegraph.cluster.options import BackendOptions
from nodegraph.server.security import is_loopback

MIB = 1024 * 1024
TOKEN_ENV = "NODEGRAPH_SERVER_TOKEN"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8188
    output_dir: Path = Path("out")
    input_dir: Path = Path("input")
    temp_dir: Path | None = None  # /view?type=temp; default STATE_DIR/temp
    state_dir: Path | None = None  # history/, queue/, user data; default OUTPUT_DIR/.nodegraph
    token: str | None = None
    device: str = "auto"
    max_queue: int = 1000
    max_message_bytes: int = 4 * MIB
    max_clients: int = 256
    max_client_buffer: int = 64 * MIB
    max_upload_bytes: int = 32 * MIB
    max_view_streams: int = 32
    history_page: int = 200
    max_history_reply_bytes: int = 32 * MIB
    frontend: bool = True
    preview_every: int = 1
    history_size: int = 10_000
    allowed_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0
    ping_interval: float | None = 20.0
    cluster: BackendOptions = BackendOptions()  # --backend ray: prompts run at once on a pool of Ray workers
    # size torch's threads before each prompt as `nodegraph run` does (nodegraph.threads); `nodegraph serve` sets
    # it, an embedding program that manages its own threads leaves it off
    size_threads: bool = False

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when the server can start with them)."""
        found = []
        if not is_loopback(self.host) and not self.token:
            found.append(
                f"--host {self.host} is reachable from other machines: give a --token (or set {TOKEN_ENV}) "
                "that clients must present, or bind to 127.0.0.1"
            )
        if self.token is not None and len(self.token) < 8:
            found.append("--token must be at least 8 characters long")
        if not 0 <= self.port <= 65535:
            found.append(f"--port {self.port} is not a TCP port (0 picks a free one)")
        for name, value, least in (
            ("--max-queue", self.max_queue, 1),
            ("--max-message-bytes", self.max_message_bytes, 1024),
            ("--max-clients", self.max_clients, 1),
            ("--history-size", self.history_size, 1),
            ("--max-upload-bytes", self.max_upload_bytes, 1024),
            ("--max-view-streams", self.max_view_streams, 1),
            ("--preview-every", self.preview_every, 0),
        ):
            if value < least:
                found.append(f"{name} must be at least {least}, got {value}")
        if self.shutdown_timeout < 0:
            found.append("--shutdown-timeout cannot be negative")
        return found + self.cluster.problems()

    @property
    def hard_message_bytes(self) -> int:
        """Past this the websocket is closed (1009); below it an oversized message is answered with an error."""
        return 2 * self.max_message_bytes + 64 * 1024

    @property
    def max_body_bytes(self) -> int:
        """The largest HTTP request body read at all (uploads, or a prompt of max_message_bytes)."""
        return max(self.max_upload_bytes, self.max_message_bytes) + 64 * 1024


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodegraph serve",
        description="Serve the engine with ComfyUI's HTTP and websocket API, and ComfyUI's frontend at /.",
    )
    defaults = ServerConfig()
    parser.add_argument("--host", default=defaults.host, help="address to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=defaults.port, help="TCP port (default: 8188; 0: any free port)")
    parser.add_argument(
        "--output-dir",
        "--out",
        dest="output_dir",
        type=Path,
        default=defaults.output_dir,
        metavar="DIR",
        help="where nodes write files, served by /view (default: out)",
    )
    parser.add_argument(
        "--input-dir",
        type=Path,
        default=defaults.input_dir,
        metavar="DIR",
        help="where nodes read input files (default: input)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="history (one JSON per prompt) and the saved queue (default: OUTPUT_DIR/.nodegraph)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"secret clients must send (?token= or Authorization: Bearer); required off loopback (env {TOKEN_ENV})",
    )
    parser.add_argument(
        "--temp-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="served by /view?type=temp (default: STATE_DIR/temp)",
    )
    parser.add_argument("--device", default=defaults.device, help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue, help="pending prompts accepted at most")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help="largest client message answered (larger ones get an error; twice that closes the connection)",
    )
    parser.add_argument(
        "--max-upload-bytes", type=int, default=defaults.max_upload_bytes, help="largest file /upload/image accepts"
    )
    parser.add_argument(
        "--max-view-streams", type=int, default=defaults.max_view_streams, help="/view downloads served at once"
    )
    parser.add_argument(
        "--no-frontend",
        dest="frontend",
        action="store_false",
        help="serve only the API (no ComfyUI frontend at /)",
    )
    parser.add_argument("--max-clients", type=int, default=defaults.max_clients, help="open websockets at most")
    parser.add_argument(
        "--preview-every",
        type=int,
        default=defaults.preview_every,
        metavar="N",
        help="send a progress preview at most every N steps per node (0: no previews; default: 1)",
    )
    parser.add_argument(
        "--history-size", type=int, default=defaults.history_size, help="finished prompts kept (oldest dropped)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (e.g. http://localhost:3000) allowed besides the server's own; repeatable",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout,
        metavar="SECONDS",
        help="how long shutdown waits for an interrupted prompt to stop (default: 30)",
    )
    cluster_options.add_arguments(parser, "runs in this process, one prompt at a time")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser



def parse_args(argv: Sequence[str] | None) -> tuple[ServerConfig, argparse.Namespace]:
    args = parser().parse_args(argv)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        output_dir=args.output_dir,
        input_dir=args.input_dir,
        temp_dir=args.temp_dir,
        state_dir=args.state_dir,
        token=args.token,
        device=args.device,
        max_queue=args.max_queue,
        max_message_bytes=args.max_message_bytes,
        max_clients=args.max_clients,
        max_upload_bytes=args.max_upload_bytes,
        max_view_streams=args.max_view_streams,
        frontend=args.frontend,
        preview_every=args.preview_every,
        history_size=args.history_size,
        allowed_origins=tuple(args.allow_origin),
        shutdown_timeout=args.shutdown_timeout,
        cluster=BackendOptions.from_args(args),
        size_threads=True,
    )
    return config, args
