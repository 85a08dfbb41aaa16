"""The nodegraph websocket server (installed as `nodegraph.server`): `nodegraph serve`.

Modules: app (NodegraphServer: connections, worker, lifecycle), protocol (message schemas and
encoders), queue (the FIFO and its persistence), history (finished prompts on disk), worker (the
worker thread and engine-event relay), clients (connections by clientId), http (GET routes and /view),
security (token, Host/Origin checks), config (settings and the command line), main (signals).
"""

from __future__ import annotations

from nodegraph.server.app import NodegraphServer
from nodegraph.server.config import ServerConfig
from nodegraph.server.main import main

__all__ = ["NodegraphServer", "ServerConfig", "main"]
