"""The nodegraph server (installed as `nodegraph.server`): `nodegraph serve`, ComfyUI's API and frontend.

Modules: app (NodegraphServer: the aiohttp application, submission, lifecycle), api_routes (ComfyUI's
HTTP API), file_routes (uploads, /view), frontend (the ComfyUI frontend, settings, user data),
websocket (/ws), protocol (message schemas, error shapes, binary frames), object_info (the catalogue in
ComfyUI's shape), ui_workflow (API-format -> UI-format workflows), queue (the queue and its journal),
history (finished prompts on disk), worker (the worker thread and engine-event relay), clients
(connections by clientId), security (token, Host/Origin checks), jsonio and httpio (strict JSON, HTTP
helpers), config (settings and the command line), main (signals), background (a server on a thread).
"""

from __future__ import annotations

from nodegraph.server.app import NodegraphServer
from nodegraph.server.config import ServerConfig
from nodegraph.server.main import main

__all__ = ["NodegraphServer", "ServerConfig", "main"]
