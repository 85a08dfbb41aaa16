"""ComfyUI's HTTP API (the queue, history, jobs, nodes and system routes), answered with ComfyUI's shapes.

    GET  /prompt                 {"exec_info": {"queue_remaining": N}}
    POST /prompt                 {prompt, client_id?, prompt_id?, extra_data?: {extra_pnginfo?}, front?, number?,
                                  partial_execution_targets?, params? (nodegraph's named params)}
                                 -> {"prompt_id", "number", "node_errors": {}} | 400 {"error", "node_errors"}
    GET  /queue                  {"queue_running": [ITEM], "queue_pending": [ITEM, ...]},
                                 ITEM = [number, prompt_id, prompt, extra_data, outputs_to_execute]
    POST /queue                  {"clear"?: true, "delete"?: [ID]}
    GET  /history                ?max_items=N&offset=K: {ID: entry}, oldest first (latest page by default)
    GET  /history/{id}           {ID: entry} or {}
    POST /history                {"clear"?: true, "delete"?: [ID]}
    POST /interrupt              {"prompt_id"?}: stops the running prompt (only that one, if named)
    POST /free                   {"unload_models"?, "free_memory"?}: forgets cached outputs and models
    GET  /jobs, /jobs/{id}, /jobs/{id}/assets, POST /jobs/{id}/cancel, /jobs/cancel   the frontend's job panel
    GET  /object_info, /object_info/{class}, /system_stats, /features, /embeddings, /extensions, /models,
         /models/{folder}
    GET  /nodegraph/catalogue    nodegraph's own catalogue (what `nodegraph nodes --json` prints)

Every route is also served under /api/. Bad input gets a 4xx with `{"error": {"type", "message"}}`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from aiohttp import web

from nodegraph.server import protocol
from nodegraph.server.httpio import HttpError, json_reply, query_int, query_value, raw_json_reply, read_json
from nodegraph.server.security import valid_id

if TYPE_CHECKING:
    from nodegraph.server.app import NodegraphServer

logger = logging.getLogger("nodegraph.server")

JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
_HISTORY_STATUS = {"success": "completed", "error": "failed", "interrupted": "cancelled"}
MAX_IDS = 10_000  # ids in one delete or cancel request


class ApiRoutes:
    def __init__(self, server: NodegraphServer) -> None:
        self.server = server

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/prompt", self.get_prompt),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_entry),
            ("POST", "/history", self.post_history),
            ("POST", "/interrupt", self.post_interrupt),
            ("POST", "/free", self.post_free),
            ("GET", "/jobs", self.get_jobs),
            ("GET", "/jobs/{job_id}", self.get_job),
            ("GET", "/jobs/{job_id}/assets", self.get_job_assets),
            ("POST", "/jobs/cancel", self.post_cancel_jobs),
            ("POST", "/jobs/{job_id}/cancel", self.post_cancel_job),
            ("GET", "/object_info", self.get_object_info),
            ("GET", "/object_info/{node_class}", self.get_object_info_node),
            ("GET", "/nodegraph/catalogue", self.get_catalogue),
            ("GET", "/system_stats", self.get_system_stats),
            ("GET", "/features", self.get_features),
            ("GET", "/embeddings", self.get_empty_list),
            ("GET", "/models", self.get_model_folders),
            ("GET", "/models/{folder}", self.get_models),
        ]

    # ---------------------------------------------------------------- prompts and the queue

    async def get_prompt(self, request: web.Request) -> web.Response:
        return json_reply({"exec_info": {"queue_remaining": self.server.queue.remaining}})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes)
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_request", "the request body must be a JSON object {\"prompt\": {...}}")
        if "prompt" not in body:
            reply = protocol.prompt_error_body("no_prompt", "No prompt provided")
            return json_reply(reply, 400)
        try:
            submission = protocol.validate_request(protocol.PromptRequest, body)
        except protocol.MessageError as exc:
            reply = protocol.prompt_error_body("invalid_prompt", exc.message)
            reply["error"]["extra_info"]["fields"] = exc.details
            return json_reply(reply, 400)
        outcome = await self.server.submit(submission, submission.client_id)
        return json_reply(outcome.body, outcome.status)

    async def get_queue(self, request: web.Request) -> web.Response:
        return json_reply(self.server.queue_snapshot())

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes)
        change = protocol.validate_request(protocol.QueueRequest, _ids_body(body))
        return json_reply(self.server.change_queue(change.clear, change.delete or []))

    async def get_history(self, request: web.Request) -> web.Response:
        config = self.server.config
        max_items = query_int(request, "max_items", minimum=1, maximum=1_000_000)
        # ComfyUI's offset -1 means "the latest page", as no offset does.
        offset = None if query_value(request, "offset") == "-1" else query_int(request, "offset", minimum=0,
                                                                               maximum=10**9)
        page = self.server.history.page(
            min(max_items or config.history_page, config.history_page), offset, config.max_history_reply_bytes
        )
        reply = json_reply(page.entries)
        reply.headers["X-History-Total"] = str(page.total)
        if page.left_off:
            reply.headers["X-History-Left-Off"] = str(page.left_off)
        return reply

    async def get_history_entry(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.server.history.get(prompt_id) if valid_id(prompt_id) else None
        return json_reply({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes)
        change = protocol.validate_request(protocol.QueueRequest, _ids_body(body))
        cleared = self.server.history.clear() if change.clear else 0
        deleted = self.server.history.delete(change.delete or [])
        return json_reply({"cleared": cleared, "deleted": deleted})

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes, allow_empty=True)
        change = protocol.validate_request(protocol.InterruptRequest, body)
        return json_reply(self.server.interrupt(change.prompt_id))

    async def post_free(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes, allow_empty=True)
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_request", "the request body must be a JSON object")
        if body.get("unload_models") or body.get("free_memory"):
            # The engine finishes its run first (clear_cache waits for it): do not hold the loop meanwhile.
            asyncio.get_running_loop().run_in_executor(None, self.server.engine.clear_cache)
        return json_reply({})

    # ---------------------------------------------------------------- the frontend's jobs API

    async def get_jobs(self, request: web.Request) -> web.Response:
        raw = query_value(request, "status")
        statuses = set(JOB_STATUSES) if not raw else set(raw.split(","))
        unknown = statuses - set(JOB_STATUSES)
        if unknown:
            raise HttpError(400, "invalid_query", f"unknown job status {sorted(unknown)[0][:40]!r}; use {JOB_STATUSES}")
        limit = query_int(request, "limit", minimum=1, maximum=1000) or 200
        offset = query_int(request, "offset", minimum=0, maximum=10**9) or 0
        jobs = self.server.jobs(statuses)
        page = jobs[offset : offset + limit]
        pagination = {"offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + limit < len(jobs)}
        return json_reply({"jobs": page, "pagination": pagination})

    async def get_job(self, request: web.Request) -> web.Response:
        job = self.server.job_detail(request.match_info["job_id"])
        if job is None:
            raise HttpError(404, "not_found", "no such job")
        return json_reply(job)

    async def get_job_assets(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        entry = self.server.history.get(job_id) if valid_id(job_id) else None
        if entry is None:
            raise HttpError(404, "not_found", "no such finished job")
        limit = query_int(request, "limit", minimum=1, maximum=1000) or 500
        offset = query_int(request, "offset", minimum=0, maximum=10**9) or 0
        assets = []
        for node_id, output in (entry.get("outputs") or {}).items():
            for index, image in enumerate((output or {}).get("images") or []):
                assets.append(
                    {
                        "id": f"{job_id}:{node_id}:{index}",
                        "name": image.get("filename"),
                        "node_id": node_id,
                        "output_key": "images",
                        "output_index": index,
                        "mime_type": "image/png",
                    }
                )
        page = assets[offset : offset + limit]
        pagination = {"offset": offset, "limit": limit, "total": len(assets), "has_more": offset + limit < len(assets)}
        return json_reply({"job_id": job_id, "assets": page, "pagination": pagination})

    async def post_cancel_job(self, request: web.Request) -> web.Response:
        return json_reply(self.server.cancel([request.match_info["job_id"]]))

    async def post_cancel_jobs(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or len(ids) > MAX_IDS or not all(isinstance(item, str) for item in ids):
            raise HttpError(400, "invalid_request", f'send {{"job_ids": [ID, ...]}} with at most {MAX_IDS} ids')
        return json_reply(self.server.cancel(ids))

    # ---------------------------------------------------------------- nodes and the system

    async def get_object_info(self, request: web.Request) -> web.Response:
        return raw_json_reply(self.server.object_info_bytes())

    async def get_object_info_node(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        spec = self.server.engine.registry.get(node_class)
        if spec is None:
            return json_reply({})  # ComfyUI's answer for an unknown class
        return json_reply({node_class: self.server.node_info(spec)})

    async def get_catalogue(self, request: web.Request) -> web.Response:
        return raw_json_reply(self.server.catalogue_bytes())

    async def get_system_stats(self, request: web.Request) -> web.Response:
        if self.server.pool is not None:
            pool = self.server.pool
            return json_reply(self._system(_memory(), _cluster_devices(pool), pool.stats()))
        device = self.server.engine.device
        memory = _memory()
        devices = [
            {
                "name": str(device),
                "type": device.type,
                "index": device.index,
                "vram_total": memory[0],
                "vram_free": memory[1],
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        ]
        if device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(device)
            devices[0].update(name=torch.cuda.get_device_name(device), vram_total=total, vram_free=free)
        return json_reply(self._system(memory, devices))

    def _system(
        self, memory: tuple[int, int], devices: list[dict[str, Any]], cluster: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """ComfyUI's /system_stats body; with the Ray backend, the pool's placements and workers under "cluster"."""
        body: dict[str, Any] = {
            "system": {
                "os": os.name,
                "ram_total": memory[0],
                "ram_free": memory[1],
                "comfyui_version": "nodegraph " + _version(),
                "required_frontend_version": self.server.frontend_version or "",
                "installed_templates_version": "",
                "required_templates_version": "",
                "python_version": sys.version,
                "pytorch_version": _torch_version(),
                "embedded_python": False,
                "argv": ["nodegraph", "serve"],
                "platform": platform.platform(),
            },
            "devices": devices,
        }
        if cluster is not None:
            body["cluster"] = cluster
        return body

    async def get_features(self, request: web.Request) -> web.Response:
        return json_reply(self.server.features())

    async def get_empty_list(self, request: web.Request) -> web.Response:
        return json_reply([])

    async def get_model_folders(self, request: web.Request) -> web.Response:
        return json_reply(["nodegraph"])

    async def get_models(self, request: web.Request) -> web.Response:
        if request.match_info["folder"] != "nodegraph":
            raise HttpError(404, "not_found", "no such model folder; the one folder is 'nodegraph'")
        from nodegraph import weights

        directory = weights.models_dir()
        return json_reply(sorted(path.name for path in directory.glob("*.safetensors")))


def _ids_body(body: Any) -> Any:
    # ComfyUI sends {"clear": true} and {"delete": [...]}; an empty POST means nothing to do.
    return body if body is not None else {}


def _cluster_devices(pool: Any) -> list[dict[str, Any]]:
    """One entry per Ray worker (ComfyUI's frontend lists devices); their memory is on other machines, so 0."""
    return [
        {"name": f"ray {worker['name']}", "type": "ray", "index": index, "vram_total": 0, "vram_free": 0,
         "torch_vram_total": 0, "torch_vram_free": 0}
        for index, worker in enumerate(pool.stats()["workers"])
    ]


def _memory() -> tuple[int, int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nodegraph")
    except PackageNotFoundError:
        return "0"


def _torch_version() -> str:
    torch = sys.modules.get("torch")
    return str(getattr(torch, "__version__", ""))
