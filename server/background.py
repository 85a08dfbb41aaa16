"""BackgroundServer: a NodegraphServer on its own event-loop thread, for tests, notebooks and embedding.

    with BackgroundServer(ServerConfig(port=0), engine) as server:
        url = server.ws_url(clientId="me")      # ws://127.0.0.1:PORT/ws?clientId=me
        ...
    # leaving the block shuts the server down as SIGTERM would (queue saved, clients closed)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

from nodegraph.engine.api import Engine
from nodegraph.server.app import NodegraphServer
from nodegraph.server.config import ServerConfig


class BackgroundServer:
    def __init__(self, config: ServerConfig, engine: Engine | None = None) -> None:
        self.server = NodegraphServer(config, engine)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 30.0) -> Self:
        self._thread = threading.Thread(target=self._main, name="nodegraph-server-loop", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._failure is not None:
            raise RuntimeError(f"the server failed to start: {self._failure}") from self._failure
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down gracefully (as on SIGTERM) and wait for the loop thread to end."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        self.call(self.server.shutdown(), timeout)
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule a coroutine on the server's loop (e.g. `server.server.shutdown()`) without waiting."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return self.submit(coroutine).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        host = self.server.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def url(self, path: str = "/", **query: str) -> str:
        return f"http://{self.address}{path}" + (f"?{urlencode(query)}" if query else "")

    def ws_url(self, **query: str) -> str:
        return f"ws://{self.address}/ws" + (f"?{urlencode(query)}" if query else "")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        if not self.server.closing:
            await self.server.shutdown()
