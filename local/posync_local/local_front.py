"""The local HTTP front: API Gateway (HTTP API, payload format 2.0) in front of the real handlers.

Each request becomes the event API Gateway would send (see :func:`build_http_event`)
and goes to ``functions/<name>/handler.py`` through ``posync.resources.ROUTES``;
the handler's answer goes back to the client as API Gateway would send it. Only
the routes in ROUTES exist (anything else: 404 ``{"message": "Not Found"}``);
bodies over 1 MiB get 413; a handler that raises gets 500 with a request id (the
traceback goes to the server log, never to the client).

Query strings are never logged: OAuth callbacks carry authorization codes there.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from posync.resources import ROUTES, RouteSpec
from posync_local.httpserver import TrackedHTTPServer
from posync_local.local_functions import FunctionHost

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_DISCARD_LIMIT = 16 * MAX_BODY_BYTES
_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|xml|javascript|x-www-form-urlencoded|[\w.+-]+\+(json|xml))"
    r")(\s*;.*)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CompiledRoute:
    spec: RouteSpec
    pattern: re.Pattern[str]

    @property
    def route_key(self) -> str:
        return f"{self.spec.method} {self.spec.path}"


def compile_route(spec: RouteSpec) -> CompiledRoute:
    """``/oauth/{provider}/callback`` -> a regex with one named group per path parameter."""
    parts = []
    for segment in spec.path.strip("/").split("/"):
        m = re.fullmatch(r"\{(\w+)(\+?)\}", segment)
        if m:
            parts.append(f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})")
        else:
            parts.append(re.escape(segment))
    return CompiledRoute(spec, re.compile("^/" + "/".join(parts) + "$"))


COMPILED_ROUTES: tuple[CompiledRoute, ...] = tuple(compile_route(r) for r in ROUTES)


def match_route(method: str, path: str) -> tuple[CompiledRoute, dict[str, str]] | None:
    for route in COMPILED_ROUTES:
        if route.spec.method != method:
            continue
        m = route.pattern.match(path)
        if m:
            return route, {k: unquote(v) for k, v in m.groupdict().items()}
    return None


def is_text_body(content_type: str | None) -> bool:
    """API Gateway passes these content types as text; other bodies arrive base64-encoded."""
    return bool(content_type) and bool(_TEXT_TYPES.match(content_type or ""))


def build_http_event(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    route_key: str,
    path_parameters: dict[str, str] | None,
    source_ip: str,
    request_id: str,
    account_id: str = "000000000000",
    api_id: str = "local",
    protocol: str = "HTTP/1.1",
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload v2.0 event for one request.

    Header names are lower-cased and repeats joined with commas; ``Cookie`` headers
    move to ``cookies``; repeated query parameters are joined with commas in
    ``queryStringParameters``; a text body is passed as is, any other as base64.
    """
    hdrs: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        hdrs[key] = f"{hdrs[key]},{value}" if key in hdrs else value
    query: dict[str, str] = {}
    for k, v in parse_qsl(raw_query, keep_blank_values=True):
        query[k] = f"{query[k]},{v}" if k in query else v
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    domain = hdrs.get("host", "127.0.0.1")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": hdrs,
        "requestContext": {
            "accountId": account_id,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": domain.split(".", 1)[0],
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": protocol,
                "sourceIp": source_ip,
                "userAgent": hdrs.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": formatdate(now_ms / 1000, usegmt=True),
            "timeEpoch": now_ms,
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body:
        if is_text_body(hdrs.get("content-type")):
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(body).decode("ascii")
                event["isBase64Encoded"] = True
        else:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json_answer(status: int, payload: dict[str, Any]) -> HttpAnswer:
    return HttpAnswer(
        status,
        [("Content-Type", "application/json")],
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def shape_response(result: Any) -> HttpAnswer:
    """A handler's return value as API Gateway (payload 2.0) turns it into an HTTP response.

    A dict with ``statusCode`` is used as is (``headers``, ``multiValueHeaders``,
    ``cookies`` -> Set-Cookie, ``body``, ``isBase64Encoded``); anything else is
    taken as a 200 JSON body, as API Gateway does.
    """
    if not isinstance(result, dict) or "statusCode" not in result:
        text = result if isinstance(result, str) else json.dumps(result)
        return HttpAnswer(200, [("Content-Type", "application/json")], text.encode("utf-8"))
    status = int(result["statusCode"])
    headers: list[tuple[str, str]] = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for k, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(k), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
    raw = result.get("body")
    if raw is None:
        body = b""
    elif result.get("isBase64Encoded"):
        body = base64.b64decode(str(raw), validate=True)
    else:
        body = str(raw).encode("utf-8")
    if body and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/json"))
    return HttpAnswer(status, headers, body)


class _BodyTooLarge(Exception):
    pass


class _BadRequest(Exception):
    pass


class _FrontServer(TrackedHTTPServer):
    request_queue_size = 64
    close_sockets = True


class LocalFront:
    """The HTTP front on 127.0.0.1:``port`` (0: a free port). Binds at construction, serves on start()."""

    def __init__(self, host: FunctionHost, port: int = 0, *, account_id: str = "000000000000") -> None:
        self.functions = host
        self.account_id = account_id
        front = self

        class Handler(_RequestHandler):
            owner = front

        self._server = _FrontServer(("127.0.0.1", port), Handler)
        self._thread: threading.Thread | None = None
        self.requests_served = 0

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalFront:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name=f"posync-front-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close the kept-alive connections too (no request is served after this)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._server.close_open_connections()

    def handle(
        self,
        *,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        source_ip: str,
        protocol: str,
    ) -> HttpAnswer:
        request_id = base64.urlsafe_b64encode(uuid.uuid4().bytes[:12]).decode("ascii")
        parts = urlsplit(target)
        raw_path = parts.path or "/"
        found = match_route(method, raw_path)
        if found is None:
            return _json_answer(404, {"message": "Not Found"})
        route, params = found
        event = build_http_event(
            method=method,
            raw_path=raw_path,
            raw_query=parts.query,
            headers=headers,
            body=body,
            route_key=route.route_key,
            path_parameters=params,
            source_ip=source_ip,
            request_id=request_id,
            account_id=self.account_id,
            protocol=protocol,
        )
        try:
            result = self.functions.invoke(route.spec.function, event, request_id=request_id)
            return shape_response(result)
        except Exception:
            log.exception("function %s failed (request %s)", route.spec.function, request_id)
            return _json_answer(500, {"message": "Internal Server Error", "requestId": request_id})


class _RequestHandler(BaseHTTPRequestHandler):
    owner: LocalFront
    protocol_version = "HTTP/1.1"
    server_version = "posync-local"
    timeout = 120  # idle kept-alive connections are closed after this many seconds

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes the request line (with its query string) to stderr: never.
        return

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError as exc:
            raise _BadRequest from exc
        if length < 0:
            raise _BadRequest
        if length > MAX_BODY_BYTES:
            if length <= _DISCARD_LIMIT:
                # Read it away first, so the client finishes sending and sees the 413.
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise _BodyTooLarge
        return self.rfile.read(length) if length else None

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest from exc
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY_BYTES:
                raise _BodyTooLarge
            out += self.rfile.read(size)
            self.rfile.readline(1024)

    def _send(self, answer: HttpAnswer, *, close: bool = False) -> None:
        self.send_response(answer.status)
        for k, v in answer.headers:
            if k.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _dispatch(self) -> None:
        started = time.monotonic()
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self._send(_json_answer(413, {"message": "Request Entity Too Large"}), close=True)
            log.info("%s %s -> 413", self.command, urlsplit(self.path).path)
            return
        except _BadRequest:
            self._send(_json_answer(400, {"message": "Bad Request"}), close=True)
            return
        answer = self.owner.handle(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        self._send(answer)
        self.owner.requests_served += 1
        log.info(
            "%s %s -> %d in %.0f ms",
            self.command,
            urlsplit(self.path).path,
            answer.status,
            (time.monotonic() - started) * 1000,
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch  # noqa: N815
