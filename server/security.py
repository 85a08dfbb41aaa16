"""Who may talk to the server: the token, the Host/Origin checks, and well-formed client ids.

- A server bound to a non-loopback address must have a token (main() refuses to start without
  one); with a token, every request (websocket or HTTP) must carry it as `?token=` or
  `Authorization: Bearer ...`: missing -> 401, wrong -> 403.
- Bound to loopback, the Host header must name a loopback host. A browser page on another site
  whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name as Host; refusing it
  keeps such pages away from the server.
- A browser sends Origin with cross-site requests; when it is present it must match Host (or be
  listed with --allow-origin), so another site's page cannot drive the server from a visitor's
  browser (CSRF). Non-browser clients send no Origin and are not affected. This is ComfyUI's rule
  for loopback, applied on every address.
- A browser that opened the page with `?token=` keeps the token in an HttpOnly, SameSite=Strict cookie,
  so the frontend's own requests (which carry no token) are let in.
- Host, Origin and Authorization may each appear once: a request carrying two is ambiguous (which one
  did a proxy check?) and is refused with 400, as is a query with two tokens.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

from nodegraph.server.protocol import ID_PATTERN

_ID = re.compile(ID_PATTERN)
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class MultiHeaders(Protocol):
    """What the checks need of a request's headers (aiohttp's CIMultiDictProxy has it)."""

    def getall(self, key: str, default: Sequence[str] = ...) -> list[str]: ...


_SINGLE_HEADERS = ("Host", "Origin", "Authorization")
# The browser's copy of the token: the frontend's own requests carry no ?token=, so opening the page with
# one sets this cookie (HttpOnly, SameSite=Strict: another site's page cannot send it, and Origin is checked).
COOKIE = "nodegraph_token"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: an HTTP status and a message for the client."""

    status: int
    message: str


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1), with or without brackets."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


class AccessPolicy:
    """Applies the rules of the module docstring to one request's headers and query."""

    def __init__(self, *, bound_to_loopback: bool, token: str | None, allowed_origins: tuple[str, ...] = ()) -> None:
        self.bound_to_loopback = bound_to_loopback
        self._token = token.encode() if token else None
        self._allowed_origins = {_normalise_origin(origin) for origin in allowed_origins}

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def check(self, headers: MultiHeaders, query: Mapping[str, list[str]]) -> Refusal | None:
        for name in _SINGLE_HEADERS:
            if len(headers.getall(name, [])) > 1:
                return Refusal(400, f"the request has more than one {name} header; send it once")
        if len(query.get("token", [])) > 1:
            return Refusal(400, "the query has more than one token; send it once")
        refusal = self._check_host_and_origin(headers)
        if refusal is None and self._token is not None:
            refusal = self._check_token(headers, query)
        return refusal

    def _check_host_and_origin(self, headers: MultiHeaders) -> Refusal | None:
        host_header = _single(headers, "Host")
        if host_header is None:
            return Refusal(400, "the request has no Host header")
        host = _split_netloc(host_header)
        if host is None or host.hostname is None:
            return Refusal(400, f"the Host header {host_header!r} is not a valid host[:port]")
        if self.bound_to_loopback and not is_loopback(host.hostname):
            return Refusal(
                403,
                f"Host {host_header!r} is not a loopback name; this server only answers requests addressed to "
                "localhost or 127.0.0.1 (protection against DNS rebinding)",
            )
        origin = _single(headers, "Origin")
        if origin is None:
            return None
        if _normalise_origin(origin) in self._allowed_origins:
            return None
        parsed = _split_origin(origin)
        if parsed is None:
            return Refusal(403, f"Origin {origin!r} is not allowed (not a http(s) origin)")
        origin_host, origin_port = parsed
        host_port = host.port if host.port not in (80, 443) else None
        if origin_host != host.hostname.lower() or origin_port != host_port:
            return Refusal(
                403,
                f"Origin {origin!r} does not match Host {host_header!r}: cross-site requests are refused "
                "(start the server with --allow-origin ORIGIN to permit a page served elsewhere)",
            )
        return None

    def _check_token(self, headers: MultiHeaders, query: Mapping[str, list[str]]) -> Refusal | None:
        assert self._token is not None
        offered: str | None = None
        authorization = _single(headers, "Authorization")
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                offered = value.strip()
        if offered is None and query.get("token"):
            offered = query["token"][-1]
        if offered is None and query.get(COOKIE):  # set when the page was opened with ?token= (see app.py)
            offered = query[COOKIE][-1]
        if not offered:
            return Refusal(
                401,
                "this server requires a token: add ?token=TOKEN to the URL or send 'Authorization: Bearer TOKEN'",
            )
        if not hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), self._token):
            return Refusal(403, "the token is not valid for this server")
        return None


def _single(headers: MultiHeaders, name: str) -> str | None:
    values = headers.getall(name, [])
    return values[0] if values else None


def _split_netloc(netloc: str) -> SplitResult | None:
    try:
        parsed = urlsplit("//" + netloc.strip())
        _ = parsed.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    if parsed.path or parsed.query or parsed.fragment or parsed.username is not None:
        return None
    return parsed


def _split_origin(origin: str) -> tuple[str, int | None] | None:
    """(lower-case host, explicit non-default port or None) of an http(s) origin; None if malformed."""
    try:
        parsed = urlsplit(origin.strip())
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    if port == _DEFAULT_PORTS[parsed.scheme]:
        port = None
    return parsed.hostname.lower(), port


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
