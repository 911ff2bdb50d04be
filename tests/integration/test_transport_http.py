"""The provider HTTP client (urllib3, no requests) against a real server on 127.0.0.1.

The sync's :class:`~posync.transport.Transport` decides retries, waits and redirects; the
client under it must send exactly what it is given, answer every status as a reply, and
turn each network failure into one of two exceptions, never into a reply or a hang.
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import urllib3
from botocore.httpsession import get_cert_path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from posync.domain import Connection
from posync.errors import ProviderError
from posync.ratelimit import Deadline, RequestLimiter, TokenLimiter
from posync.transport import HttpReply, HttpTimeout, HttpUnreachable, PooledHttp, Transport
from posync_local.httpserver import TrackedHTTPServer

TOKEN = "secret-access-token-http-test"  # a test value, checked absent from errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        return None

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.seen.append(
            {"path": parts.path, "query": parse_qsl(parts.query), "headers": dict(self.headers.items())}
        )
        route = parts.path
        if route == "/slow":
            time.sleep(1.0)
            with contextlib.suppress(OSError):  # the client gave up: nobody reads this
                self._send(200, b"{}")
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/cut":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"elements": [')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif route == "/gzip":
            self._send(200, gzip.compress(b'{"elements": [1, 2]}'), {"Content-Encoding": "gzip"})
        elif route == "/limited":
            self._send(429, b"{}", {"Retry-After": "7", "X-RateLimit-Type": "token-rps"})
        else:
            self._send(200, json.dumps({"path": route}).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = TrackedHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.close_open_connections()
        srv.server_close()


@pytest.fixture
def http() -> PooledHttp:
    _Handler.seen.clear()
    return PooledHttp(pool_size=4)


def _get(http: PooledHttp, url: str, params: Any = None, timeout: float = 5.0) -> HttpReply:
    return http.get(
        url, params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=(timeout, timeout)
    )


def test_params_and_headers_are_sent_as_given(server: str, http: PooledHttp) -> None:
    # When a Clover-style list request is made (repeated keys, operators in values)
    params = [("filter", "modifiedTime>=1000"), ("filter", "modifiedTime<2000"), ("expand", "a,b c")]
    reply = _get(http, f"{server}/v3/merchants/M/orders", params)
    # Then the server got every pair, in order, decoded back to what was given
    assert reply.status == 200
    assert json.loads(reply.content) == {"path": "/v3/merchants/M/orders"}
    seen = _Handler.seen[-1]
    assert seen["query"] == params
    assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert seen["headers"]["Accept-Encoding"] == "gzip"
    # and a link that carries its own query (Poynt's links) keeps it, with any params appended
    _get(http, f"{server}/businesses/B/orders?startOffset=100", {"limit": "100"})
    assert _Handler.seen[-1]["query"] == [("startOffset", "100"), ("limit", "100")]


def test_a_gzip_body_is_decoded_and_headers_are_case_insensitive(server: str, http: PooledHttp) -> None:
    reply = _get(http, f"{server}/gzip")
    assert json.loads(reply.content) == {"elements": [1, 2]}
    assert reply.headers["content-type"] == reply.headers["Content-Type"] == "application/json"


def test_redirects_are_answered_not_followed(server: str, http: PooledHttp) -> None:
    # A redirect is the transport's to judge: the token is never sent to its Location
    reply = _get(http, f"{server}/redirect")
    assert reply.status == 302
    assert len(_Handler.seen) == 1


def test_a_slow_answer_is_a_timeout(server: str, http: PooledHttp) -> None:
    with pytest.raises(HttpTimeout) as info:
        _get(http, f"{server}/slow", timeout=0.2)
    assert TOKEN not in str(info.value)


def test_a_refused_connection_and_a_cut_body_are_unreachable(server: str, http: PooledHttp) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(HttpUnreachable):
        _get(http, f"http://127.0.0.1:{closed}/x", timeout=2)
    with pytest.raises(HttpUnreachable) as info:
        _get(http, f"{server}/cut")
    assert TOKEN not in str(info.value)
    # and the pool recovers: the next request on the same client succeeds
    assert _get(http, f"{server}/ok").status == 200


def test_the_transport_over_the_real_client(server: str, http: PooledHttp) -> None:
    # Given the sync's transport on this client (a real token limiter)
    class Tokens:
        def access_token(self, conn: Connection) -> str:
            return TOKEN

        def after_unauthorized(self, conn: Connection, rejected: str) -> str:
            return TOKEN

    conn = Connection(provider="clover", merchant_id="ABCDEFGHJK123")
    t = Transport(conn, server, Tokens(), RequestLimiter(TokenLimiter(50, 5)), http=http)
    # Then a JSON reply is parsed, and its bytes are kept when asked
    assert t.get("/v3/ok", deadline=Deadline.after(10)).body == {"path": "/v3/ok"}
    assert t.get("/gzip", deadline=Deadline.after(10), parse=False).body == b'{"elements": [1, 2]}'
    # and a redirect is an error naming the status, not a request elsewhere
    with pytest.raises(ProviderError) as info:
        t.get("/redirect", deadline=Deadline.after(10))
    assert info.value.status == 302
    # and a 429 whose Retry-After does not fit the budget stops the call without waiting it out
    started = time.monotonic()
    with pytest.raises(Exception, match="Retry-After"):
        t.get("/limited", deadline=Deadline.after(2))
    assert time.monotonic() - started < 2


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_is_verified_against_botocores_ca_bundle(tmp_path: Path, http: PooledHttp) -> None:
    # Given an HTTPS server whose certificate no public CA signed
    cert_path, key_path = _self_signed(tmp_path)
    srv = TrackedHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{srv.server_address[1]}/ok"
    assert http.pool.connection_pool_kw["ca_certs"] == get_cert_path(True)  # the bundle AWS calls trust
    try:
        # When the provider client calls it, Then the handshake is refused: no request, no token sent
        with pytest.raises(HttpUnreachable, match="SSLError"):
            _get(http, url)
        assert _Handler.seen == []
        # and the same server is reached by a client that trusts its certificate (the refusal was TLS's)
        trusting = PooledHttp()
        trusting.pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(cert_path), retries=False)
        assert _get(trusting, url).status == 200
    finally:
        srv.shutdown()
        srv.close_open_connections()
        srv.server_close()


def test_the_environments_proxy_is_used_and_no_proxy_bypasses_it(server: str) -> None:
    # Given a proxy server (a plain HTTP server: a proxied request's target is an absolute URL)
    proxy = TrackedHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    target = "http://provider.test/v3/merchants/M/orders"
    try:
        _Handler.seen.clear()
        # When the environment names it for http, the request goes to it, for the provider's host
        via = PooledHttp(proxies={"http": proxy_url})
        assert _get(via, target, {"limit": "1"}).status == 200
        assert _Handler.seen[-1]["path"] == "/v3/merchants/M/orders"  # the proxy was asked for it
        assert _Handler.seen[-1]["headers"]["Host"] == "provider.test"
        # and a host NO_PROXY lists is reached directly (here: the test server itself)
        direct = PooledHttp(proxies={"http": "http://127.0.0.1:9", "no": "127.0.0.1"})
        assert _get(direct, f"{server}/ok").status == 200
        # while without NO_PROXY the same call goes to the (closed) proxy and fails
        with pytest.raises(HttpUnreachable):
            _get(PooledHttp(proxies={"http": "http://127.0.0.1:9"}), f"{server}/ok", timeout=2)
    finally:
        proxy.shutdown()
        proxy.close_open_connections()
        proxy.server_close()
