"""ComfyUI's official frontend (the pinned `comfyui-frontend-package`) at /, and what it needs to start and run.

- Its static build is served from the installed package; index.html carries a Content-Security-Policy that
  lets the page talk to this server only (`connect-src 'self'`, no outside scripts, images or fonts), so it
  can make no outside requests even where it would try; what it would otherwise fetch from elsewhere is
  answered here or switched off by the default settings below.
- User data (settings, saved workflows, the frontend's own files) lives in STATE/user/default, confined:
  GET/POST /settings, /settings/{id}; GET /users; GET /userdata?dir=..., /v2/userdata; GET/POST/DELETE
  /userdata/{file}; POST /userdata/{file}/move/{dest}.
- nodegraph's workflows appear in the workflow browser under `nodegraph/`, made into UI format on the fly
  (server/ui_workflow.py) from the API-format files, so they open as laid-out graphs. They are read-only:
  saving one writes the user's own copy, which then takes its place.
- Endpoints the frontend polls for cloud or manager features it cannot use here get empty answers.
- One extension of the frontend (server/web/nodegraph.js, listed by /extensions): a first visit opens
  dalle2_text2img instead of ComfyUI's stock default graph, whose nodes nodegraph does not have.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from nodegraph.server import jsonio
from nodegraph.server.httpio import HttpError, json_reply, query_value, read_body, read_json

if TYPE_CHECKING:
    from nodegraph.server.app import NodegraphServer

logger = logging.getLogger("nodegraph.server")

BUNDLED = "nodegraph"  # the workflow browser folder holding the project's workflows
EXTENSION_FILES = frozenset({"nodegraph.js"})  # server/web/: nodegraph's extension of the frontend
MAX_USER_FILE = 64 * 1024 * 1024
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; connect-src 'self'; "
    "worker-src 'self' blob:; frame-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)

# Settings a fresh user starts with: nothing that would reach outside, no first-run tours.
DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Validation.Workflows": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Notification.ShowReleaseNotes": False,
    "Comfy.Templates.ShowOnStartup": False,
    "Comfy.Manager.UI.Enabled": False,
    "Comfy.Server.LaunchCount": 10,
    "Comfy.UseNewMenu": "Top",
}


def frontend_root() -> Path | None:
    """The installed frontend's static folder, or None when the package is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).parent / "static"
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("comfyui-frontend-package")
    except PackageNotFoundError:
        return None


class FrontendRoutes:
    def __init__(self, server: NodegraphServer) -> None:
        self.server = server
        self.root = frontend_root() if server.config.frontend else None
        self.user_dir = server.state_dir / "user" / "default"
        self._index: bytes | None = None

    def api_routes(self) -> list[tuple[str, str, Any]]:
        """Routes served bare and under /api/."""
        return [
            ("GET", "/users", self.get_users),
            ("POST", "/users", self.post_users),
            ("GET", "/settings", self.get_settings),
            ("POST", "/settings", self.post_settings),
            ("GET", "/settings/{id}", self.get_setting),
            ("POST", "/settings/{id}", self.post_setting),
            ("GET", "/userdata", self.list_userdata),
            ("GET", "/v2/userdata", self.list_userdata_v2),
            ("GET", "/userdata/{file}", self.get_userdata),
            ("POST", "/userdata/{file}", self.post_userdata),
            ("DELETE", "/userdata/{file}", self.delete_userdata),
            ("POST", "/userdata/{file}/move/{dest}", self.move_userdata),
            ("GET", "/extensions", self.extensions),
            ("GET", "/i18n", self.empty_object),
            ("GET", "/workflow_templates", self.empty_object),
            ("GET", "/global_subgraphs", self.empty_object),
            ("GET", "/node_replacements", self.empty_object),
            ("GET", "/experiment/models", self.empty_list),
            ("GET", "/experiment/models/{folder}", self.empty_list),
        ]

    def static_routes(self, app: web.Application) -> None:
        """The page and its assets (after every other route, as a catch-all)."""
        app.router.add_get("/", self.index)
        app.router.add_get("/index.html", self.index)
        app.router.add_get("/extensions/nodegraph/{name}", self.extension_file)
        app.router.add_get("/user.css", self.empty_css)
        app.router.add_get("/api/userdata/user.css", self.empty_css)
        if self.root is not None:
            app.router.add_get("/{path:.+}", self.asset)

    # ---------------------------------------------------------------- the page

    async def index(self, request: web.Request) -> web.Response:
        if self.root is None:
            message = (
                "nodegraph server: the API is at /prompt, /queue, /history, /object_info and /ws. "
                "The ComfyUI frontend is not served (install comfyui-frontend-package, or drop --no-frontend).\n"
            )
            return web.Response(text=message, content_type="text/plain")
        if self._index is None:
            self._index = (self.root / "index.html").read_bytes()
        return web.Response(
            body=self._index,
            content_type="text/html",
            headers={"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache"},
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        """A file of the frontend's build; anything else is a 404 (answered before any file is opened)."""
        assert self.root is not None
        relative = request.match_info["path"]
        pure = PurePosixPath(relative)
        if any(part in ("..", "") or part.startswith(".") for part in pure.parts) or "\x00" in relative:
            raise HttpError(404, "not_found", f"no such page: /{relative[:200]}")
        path = self.root / pure
        if not path.is_file():
            raise HttpError(404, "not_found", f"no such page: /{relative[:200]}")
        # Built assets carry a content hash in their names: they may be cached; the rest is revalidated.
        cache = "public, max-age=31536000, immutable" if relative.startswith("assets/") else "no-cache"
        return web.FileResponse(path, headers={"Cache-Control": cache})

    async def extensions(self, request: web.Request) -> web.Response:
        """The frontend imports these scripts at start (nodegraph's own: server/web/)."""
        return json_reply(["/extensions/nodegraph/nodegraph.js"] if self.root is not None else [])

    async def extension_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in EXTENSION_FILES:
            raise HttpError(404, "not_found", f"no such extension file: {name[:80]!r}")
        body = (Path(__file__).parent / "web" / name).read_bytes()
        return web.Response(body=body, content_type="text/javascript", headers={"Cache-Control": "no-cache"})

    async def empty_css(self, request: web.Request) -> web.Response:
        return web.Response(text="", content_type="text/css")

    async def empty_object(self, request: web.Request) -> web.Response:
        return json_reply({})

    async def empty_list(self, request: web.Request) -> web.Response:
        return json_reply([])

    # ---------------------------------------------------------------- users and settings

    async def get_users(self, request: web.Request) -> web.Response:
        return json_reply({"storage": "server", "migrated": True})

    async def post_users(self, request: web.Request) -> web.Response:
        raise HttpError(400, "single_user", "this server has one user; there is nothing to create")

    def _settings_file(self) -> Path:
        return self.user_dir / "comfy.settings.json"

    def _settings(self) -> dict[str, Any]:
        try:
            saved = json.loads(self._settings_file().read_bytes())
        except (OSError, ValueError):
            saved = {}
        # The frontend compares this with its own version (semver) to pick defaults and release notes.
        defaults = {**DEFAULT_SETTINGS, "Comfy.InstalledVersion": self.server.frontend_version or "1.0.0"}
        return {**defaults, **(saved if isinstance(saved, dict) else {})}

    def _save_settings(self, settings: dict[str, Any]) -> None:
        saved = {key: value for key, value in settings.items() if DEFAULT_SETTINGS.get(key, object()) != value}
        jsonio.write_atomic(self._settings_file(), saved)

    async def get_settings(self, request: web.Request) -> web.Response:
        return json_reply(self._settings())

    async def get_setting(self, request: web.Request) -> web.Response:
        return json_reply(self._settings().get(request.match_info["id"]))

    async def post_settings(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.server.config.max_message_bytes)
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_request", "send a JSON object of settings")
        self._save_settings({**self._settings(), **body})
        return json_reply({})

    async def post_setting(self, request: web.Request) -> web.Response:
        value = await read_json(request, self.server.config.max_message_bytes)
        settings = self._settings()
        settings[request.match_info["id"][:200]] = value
        self._save_settings(settings)
        return json_reply({})

    # ---------------------------------------------------------------- user data

    def _user_path(self, relative: str) -> Path:
        """A path under the user's directory; 403 for anything that would leave it or is hidden."""
        relative = unquote(relative)
        pure = PurePosixPath(relative.replace("\\", "/"))
        if (
            not relative
            or "\x00" in relative
            or pure.is_absolute()
            or any(part in ("..", "") or part.startswith(".") for part in pure.parts)
        ):
            raise HttpError(403, "path_not_allowed", f"{relative[:80]!r} is not a path inside the user directory")
        root = self.user_dir.resolve()
        path = (root / pure).resolve()
        if not path.is_relative_to(root):
            raise HttpError(403, "path_not_allowed", f"{relative[:80]!r} leads outside the user directory")
        return path

    def _bundled(self) -> dict[str, Path]:
        """workflows/nodegraph/NAME.json -> the API-format file it is made from."""
        directory = self.server.workflows_dir
        if directory is None or not directory.is_dir():
            return {}
        return {f"workflows/{BUNDLED}/{path.name}": path for path in sorted(directory.glob("*.json"))}

    async def list_userdata(self, request: web.Request) -> web.Response:
        directory = query_value(request, "dir")
        if not directory:
            raise HttpError(400, "invalid_query", "dir is required")
        base = self._user_path(directory)
        recurse = (query_value(request, "recurse") or "").lower() == "true"
        full_info = (query_value(request, "full_info") or "").lower() == "true"
        split = (query_value(request, "split") or "").lower() == "true"
        files: dict[str, dict[str, Any]] = {}
        prefix = directory.strip("/") + "/"
        for virtual, source in self._bundled().items():
            if virtual.startswith(prefix):
                relative = virtual[len(prefix) :]
                if recurse or "/" not in relative:
                    info = source.stat()
                    files[relative] = {"path": relative, "size": info.st_size, "modified": info.st_mtime * 1000}
        if base.is_dir():
            walker = base.rglob("*") if recurse else base.glob("*")
            for path in walker:
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(base).parts):
                    relative = path.relative_to(base).as_posix()
                    info = path.stat()
                    files[relative] = {"path": relative, "size": info.st_size, "modified": info.st_mtime * 1000}
        elif not files:
            raise HttpError(404, "not_found", "directory not found")
        if full_info:
            return json_reply(sorted(files.values(), key=lambda item: item["path"]))
        if split:
            return json_reply([[name, *name.split("/")] for name in sorted(files)])
        return json_reply(sorted(files))

    async def list_userdata_v2(self, request: web.Request) -> web.Response:
        raw = query_value(request, "path") or ""
        base = self._user_path(raw) if raw else self.user_dir.resolve()
        results: list[dict[str, Any]] = []
        if base.is_dir():
            for root, directories, names in os.walk(base):
                directories[:] = [name for name in directories if not name.startswith(".")]
                for name in directories:
                    path = Path(root) / name
                    results.append({"name": name, "path": path.relative_to(self.user_dir.resolve()).as_posix(),
                                    "type": "directory"})
                for name in names:
                    if name.startswith("."):
                        continue
                    path = Path(root) / name
                    info = path.stat()
                    results.append({"name": name, "path": path.relative_to(self.user_dir.resolve()).as_posix(),
                                    "type": "file", "size": info.st_size, "modified": info.st_mtime})
        results.sort(key=lambda item: (item["type"] != "directory", item["name"].lower()))
        return json_reply(results)

    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        relative = unquote(request.match_info["file"])
        path = self._user_path(relative)
        if path.is_file():
            return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
        source = self._bundled().get(relative)
        if source is not None:
            return json_reply(self.server.ui_workflow(source))
        raise HttpError(404, "not_found", f"{relative[:80]!r} not found")

    async def post_userdata(self, request: web.Request) -> web.Response:
        relative = unquote(request.match_info["file"])
        path = self._user_path(relative)
        overwrite = (query_value(request, "overwrite") or "true") != "false"
        full_info = (query_value(request, "full_info") or "").lower() == "true"
        if not overwrite and (path.exists() or relative in self._bundled()):
            raise HttpError(409, "exists", "file already exists")
        body = await read_body(request, MAX_USER_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(body)
        os.replace(temporary, path)
        name = path.relative_to(self.user_dir.resolve()).as_posix()
        if full_info:
            return json_reply({"path": name, "size": len(body), "modified": int(time.time() * 1000)})
        return json_reply(name)

    async def delete_userdata(self, request: web.Request) -> web.Response:
        relative = unquote(request.match_info["file"])
        path = self._user_path(relative)
        if not path.is_file():
            if relative in self._bundled():
                raise HttpError(403, "read_only", "nodegraph's own workflows cannot be deleted")
            raise HttpError(404, "not_found", f"{relative[:80]!r} not found")
        path.unlink()
        return web.Response(status=204)

    async def move_userdata(self, request: web.Request) -> web.Response:
        source = self._user_path(unquote(request.match_info["file"]))
        target = self._user_path(unquote(request.match_info["dest"]))
        overwrite = (query_value(request, "overwrite") or "true") != "false"
        full_info = (query_value(request, "full_info") or "").lower() == "true"
        if not source.is_file():
            raise HttpError(404, "not_found", "source not found")
        if target.exists() and not overwrite:
            raise HttpError(409, "exists", "destination exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        name = target.relative_to(self.user_dir.resolve()).as_posix()
        if full_info:
            info = target.stat()
            return json_reply({"path": name, "size": info.st_size, "modified": info.st_mtime * 1000})
        return json_reply(name)
