"""Helpers of the authorization integration tests: drive a merchant's consent over real HTTP.

connect (our API) -> 302 to the sandbox's consent page -> GET it -> POST Approve/Deny ->
302 back to our callback -> GET it. Every value seen on the way that must never be logged
(codes, tokens) is collected in ``Secrets`` for the log scan.

The merchant's browser is ``BROWSER``, a cookie-keeping session: ``/connect`` sets the
binding cookie the callback requires. ``ref``s travel only in operator-signed links
(``signed_link``), as ``posync connect-link`` prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urljoin, urlsplit

import boto3
import requests

from posync.config import Settings
from posync.connections import ConnectionRepository
from posync.domain import Connection
from posync.errors import ConnectionNotFound
from posync.tokens import SecretsManagerTokenStore, TokenSet

if TYPE_CHECKING:  # the runtime (and moto) stay out of the spawned token callers' imports
    from posync_local.runtime import LocalRuntime
    from posync_local.sandbox import CloverSandbox, PoyntSandbox

TIMEOUT = 10
BROWSER = requests.Session()  # the merchant's browser: keeps the binding cookie


def signed_link(rt: LocalRuntime, provider: str, ref: str, ttl_s: int = 86400) -> str:
    """The operator's signed connect link for ``ref`` (what ``posync connect-link`` prints)."""
    import time

    from posync.authorization import signed_connect_link
    from posync.oauth_state import LinkSigner, SecretsManagerStateKey

    links = LinkSigner(SecretsManagerStateKey(rt.settings))
    return signed_connect_link(rt.settings, links, provider, ref, int(time.time()) + ttl_s)


def clover_of(rt: LocalRuntime) -> CloverSandbox:
    assert rt.clover is not None, "the Clover sandbox is not running"
    return rt.clover


def poynt_of(rt: LocalRuntime) -> PoyntSandbox:
    assert rt.poynt is not None, "the Poynt sandbox is not running"
    return rt.poynt


def sandbox_of(rt: LocalRuntime, provider: str) -> CloverSandbox | PoyntSandbox:
    return clover_of(rt) if provider == "clover" else poynt_of(rt)


class ConsentForm(HTMLParser):
    """The sandbox consent page's form: action, hidden fields, the merchant select."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.select_name = ""
        self.options: list[str] = []
        self.selected: str | None = None
        self.buttons: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self.select_name = a.get("name", "")
        elif tag == "option":
            self.options.append(a.get("value", ""))
            if "selected" in a:
                self.selected = a.get("value", "")
        elif tag == "button" and a.get("id"):
            self.buttons[a["id"]] = a.get("value", "")


@dataclass
class Secrets:
    """Everything secret a test saw, to scan the logs for."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str | None) -> None:
        self.values.update(v for v in values if v and len(v) >= 8)

    def add_tokens(self, tokens: TokenSet) -> None:
        self.add(tokens.access_token, tokens.refresh_token)


@dataclass
class ConsentResult:
    callback: requests.Response  # our callback's answer
    callback_url: str
    merchant_id: str | None
    code: str | None


def start_connect(rt: LocalRuntime, provider: str, ref: str | None = None, **query: str) -> str:
    """GET /connect/{provider} in ``BROWSER`` (through a signed link when there is a ``ref``):
    the consent URL it redirects to."""
    url = signed_link(rt, provider, ref) if ref else f"{rt.api_url}/connect/{provider}"
    resp = BROWSER.get(url, params=query, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 302, resp.text
    return str(resp.headers["Location"])


def read_consent_page(url: str) -> tuple[ConsentForm, str]:
    page = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    form = ConsentForm()
    form.feed(page.text)
    assert form.action and "approve" in form.buttons and "deny" in form.buttons
    return form, urljoin(url, form.action)


def decide(authorize_url: str, decision: str = "approve", merchant_id: str | None = None) -> str:
    """Answer the consent page; return where the provider redirects the browser (our callback)."""
    form, action = read_consent_page(authorize_url)
    data = dict(form.fields)
    data[form.select_name] = merchant_id or form.selected or form.options[0]
    data["decision"] = form.buttons[decision]
    resp = requests.post(action, data=data, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code == 302, resp.text
    return str(resp.headers["Location"])


def follow_callback(callback_url: str, secrets: Secrets | None = None) -> ConsentResult:
    query = {k: v[0] for k, v in parse_qs(urlsplit(callback_url).query).items()}
    if secrets is not None:
        secrets.add(query.get("code"))
    resp = BROWSER.get(callback_url, allow_redirects=False, timeout=TIMEOUT)
    return ConsentResult(resp, callback_url, query.get("merchant_id"), query.get("code"))


def connect(
    rt: LocalRuntime,
    provider: str,
    *,
    merchant_id: str | None = None,
    ref: str | None = None,
    decision: str = "approve",
    secrets: Secrets | None = None,
) -> ConsentResult:
    """The whole browser round trip for one merchant."""
    callback_url = decide(start_connect(rt, provider, ref), decision, merchant_id)
    assert callback_url.startswith(f"{rt.api_url}/oauth/{provider}/callback"), callback_url
    return follow_callback(callback_url, secrets)


# --- what is stored -------------------------------------------------------------------------


def stored_tokens(settings: Settings, provider: str, merchant_id: str) -> TokenSet:
    return SecretsManagerTokenStore(settings).read(provider, merchant_id)


def secret_exists(settings: Settings, provider: str, merchant_id: str) -> bool:
    sm = boto3.client("secretsmanager")
    try:
        sm.describe_secret(SecretId=settings.connection_secret_name(provider, merchant_id))
    except sm.exceptions.ResourceNotFoundException:
        return False
    return True


def connection(settings: Settings, provider: str, merchant_id: str) -> Connection | None:
    try:
        return ConnectionRepository(settings).get(provider, merchant_id)
    except ConnectionNotFound:
        return None


def queued_syncs(settings: Settings) -> list[dict[str, Any]]:
    """Receive (and delete) every message on the stage's sync queue."""
    assert settings.sync_queue_url
    sqs = boto3.client("sqs")
    out: list[dict[str, Any]] = []
    while True:
        msgs = sqs.receive_message(
            QueueUrl=settings.sync_queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not msgs:
            return out
        for m in msgs:
            out.append({**json.loads(m["Body"]), "_group": m["Attributes"].get("MessageGroupId")})
            sqs.delete_message(QueueUrl=settings.sync_queue_url, ReceiptHandle=m["ReceiptHandle"])


def api_accepts(rt: LocalRuntime, provider: str, merchant_id: str, token: str) -> bool:
    """The sandbox's orders API answers 200 to this token."""
    if provider == "clover":
        url = f"{clover_of(rt).url}/v3/merchants/{merchant_id}/orders"
        params: dict[str, str] = {"limit": "1"}
    else:
        url = f"{poynt_of(rt).url}/businesses/{merchant_id}/orders"
        params = {"limit": "1"}
    resp = requests.get(
        url,
        params=params,
        headers={"Authorization": f"Bearer {token}", "api-version": "1.2"},
        timeout=TIMEOUT,
    )
    return resp.status_code == 200


def bus_listener(settings: Settings, detail_type: str, name: str) -> str:
    """An SQS queue receiving ``detail_type`` events from the stage's bus; returns its URL."""
    sqs = boto3.client("sqs")
    events = boto3.client("events")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=name,
        EventBusName=settings.event_bus,
        EventPattern=json.dumps({"source": ["posync"], "detail-type": [detail_type]}),
    )
    events.put_targets(Rule=name, EventBusName=settings.event_bus, Targets=[{"Id": "q", "Arn": arn}])
    return url


def bus_events(queue_url: str, wait_s: int = 2) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s).get(
        "Messages", []
    )
    return [json.loads(m["Body"]) for m in msgs]


# --- concurrent token callers in separate processes (multiprocessing, spawn) -----------------


def token_in_child(provider: str, merchant_id: str, threads: int, barrier: Any, out: Any) -> None:
    """``threads`` callers in this process, each with its own TokenService, against the embedded AWS.

    The environment (``AWS_ENDPOINT_URL``, ``POSYNC_*``) is inherited from the parent. Every
    caller waits on the cross-process ``barrier`` and puts ``("ok", token)`` or
    ``("error", name)`` on ``out``; the process's log output follows as ``("logs", text)``
    so the parent can scan it.
    """
    import io
    import logging
    import threading

    from posync.aws import client
    from posync.config import Settings
    from posync.domain import Connection
    from posync.tokens import build_token_service

    buffer = io.StringIO()
    for name in ("posync", ""):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(buffer)
    settings = Settings.from_env()
    services = [build_token_service(settings) for _ in range(threads)]
    client("secretsmanager")
    client("dynamodb")  # clients built before the start line: the callers race for real
    conn = Connection(provider, merchant_id)

    def call(service: Any) -> None:
        barrier.wait(timeout=60)
        try:
            out.put(("ok", service.access_token(conn)))
        except Exception as exc:  # reported to the parent
            out.put(("error", type(exc).__name__))

    workers = [threading.Thread(target=call, args=(svc,)) for svc in services]
    for w in workers:
        w.start()
    for w in workers:
        w.join(90)
    out.put(("logs", buffer.getvalue()))
