"""`nodegraph serve`: run the server until SIGINT/SIGTERM, then shut down gracefully (exit 0).

The first signal interrupts the running prompt, keeps the pending queue (already on disk) and closes
clients with 1001; a second one stops waiting for a run that does not respond to the interrupt.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from urllib.parse import quote

from nodegraph.engine.api import Engine
from nodegraph.errors import ConfigError
from nodegraph.server.app import NodegraphServer, StartError
from nodegraph.server.config import ServerConfig, parse_args

logger = logging.getLogger("nodegraph.server")

EXIT_OK = 0
EXIT_INVALID = 2


def main(argv: Sequence[str] | None = None, *, engine: Engine | None = None) -> int:
    """The `nodegraph serve` command; `engine` replaces the one the options describe (embedding, tests)."""
    config, args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, logging.getLogger().level))
    problems = config.problems()
    if problems:
        for problem in problems:
            print(f"nodegraph serve: {problem}", file=sys.stderr)
        return EXIT_INVALID
    try:
        server = NodegraphServer(config, engine)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"nodegraph serve: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        asyncio.run(serve_until_signalled(server))
    except StartError as exc:
        print(f"nodegraph serve: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


async def serve_until_signalled(server: NodegraphServer) -> None:
    await server.start()
    stop = asyncio.Event()
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        seen.append(signum)
        if len(seen) == 1:
            logger.info("%s received: shutting down", signal.Signals(signum).name)
            stop.set()
        else:
            logger.warning("second signal: not waiting for the running prompt any longer")
            server.force_shutdown()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (NotImplementedError, RuntimeError):  # not on this platform / not the main thread
            signal.signal(signum, lambda number, _frame: loop.call_soon_threadsafe(on_signal, number))
    print(f"nodegraph server listening on {_url(server.config, server.port)}", flush=True)
    await stop.wait()
    await server.shutdown()


def _url(config: ServerConfig, port: int) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{port}/"
    return url + f"?token={quote(config.token)}" if config.token else url
