"""Fuzzing the public routes (docs/openapi.json) against the local stack's HTTP front.

Hypothesis draws requests from the description (path parameters, query parameters, headers,
bodies shaped like the providers' webhooks) mixed with hostile strings (traversal,
encoded separators, key and secret-name injection, control characters, unicode, markup,
huge values), sent raw over HTTP to the front, which turns them into API Gateway events for
the real handlers. Every answer must:

- not be a 5xx, and have a status (and content type) the description lists for the route;
- carry no stack trace (``Traceback``, ``File "``) and no secret (the sandboxes' tokens,
  codes, client secret, webhook secrets, private keys; the stage's state key);
- not reflect markup unescaped, set no cookie, and redirect only to the provider's own
  consent page.

And the run must store nothing: no connection, no token secret, no queued sync.
The number of cases is bounded (seconds, not minutes) and derandomized (same cases every run).
"""

from __future__ import annotations

import http.client
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from posync.resources import ROUTES
from posync_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
EXAMPLES = 160  # per operation; plus the unknown-route run: ~700 requests, a few seconds

HOSTILE = [
    "../",
    "..",
    ".",
    "..%2F",
    "%2e%2e%2f",
    "..\\",
    "%2F",
    "/",
    "#",
    "?",
    "%23",
    "%3F",
    "&",
    "=",
    ";",
    "\x00",
    "%00",
    "\r\n",
    "%0d%0a",
    "\u202e",
    "\ufeff",
    "\U0001f600",
    "\uff43\uff4c\uff4f\uff56\uff45\uff52",  # fullwidth "clover"
    "CLOVER",
    "clover ",
    " clover",
    "clover\n",
    "'",
    '"',
    "`",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "${jndi:ldap://127.0.0.1/x}",
    "{{7*7}}",
    "%s%s%s%n",
    "' OR '1'='1",
    "posync/it/app/clover",
    "../../app/clover",
    "clover/../../app/clover",
    "#app#clover",
    "clover#ABCDEFGHIJKLM",
    "state#AAAAAAAAAAAAAAAAAAAAAA",
    "lease#refresh#clover#ABCDEFGHIJKLM",
    "exportrun#x",
    "__proto__",
    "null",
    "[]",
    "{}",
    "-1",
    "1e309",
    "NaN",
    "A" * 5000,
    "ABCDEFGHIJKLM\n",
    "abcdefghijklm",
    "0b9f1c2e-1111-4222-8333-44445555666G",
]
ALLOWED_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=:@-]*$")
TEXT = st.text(max_size=80)
HOSTILE_TEXT = st.one_of(st.sampled_from(HOSTILE), TEXT)
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
MERCHANT_IDS = st.one_of(
    st.from_regex(r"\A[A-Z0-9]{13}\Z"),
    st.uuids().map(str),
    HOSTILE_TEXT,
)


# --------------------------------------------------------------------------- the description


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, ops in SPEC["paths"].items() for m, op in ops.items()]


def resolve(obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        node: Any = SPEC
        for part in str(obj["$ref"]).removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def parameters(op: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [p for p in (resolve(x) for x in op.get("parameters", [])) if p["in"] == where]


def documented(op: dict[str, Any]) -> dict[int, set[str]]:
    """status -> the content types the description gives for it (empty: no body described)."""
    out: dict[int, set[str]] = {}
    for status, response in op["responses"].items():
        out[int(status)] = set(resolve(response).get("content", {}))
    return out


def test_the_description_is_valid_openapi_and_names_exactly_the_public_routes() -> None:
    # Given the repository's OpenAPI document
    # Then it is valid OpenAPI 3.1, and its operations are exactly the routes the stack serves
    validate(SPEC)
    assert {(m, p) for m, p, _ in operations()} == {(r.method, r.path) for r in ROUTES}
    for _, _, op in operations():
        assert op["responses"], op["operationId"]
        assert all(int(s) < 500 or int(s) in (502, 503) for s in op["responses"])


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Case:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def send(base_url: str, case: Case) -> Answer:
    """One request with its target exactly as given (no client-side normalization)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        conn.putrequest(case.method, case.target, skip_host=False, skip_accept_encoding=True)
        for k, v in case.headers:
            conn.putheader(k, v)
        if case.body is not None:
            conn.putheader("Content-Length", str(len(case.body)))
        conn.endheaders(case.body)
        resp = conn.getresponse()
        return Answer(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def segment(value: str, raw: bool) -> str:
    """A path segment: percent-encoded, or as is when it only holds characters a URL allows."""
    if raw and ALLOWED_PATH_CHARS.fullmatch(value) and value:
        return value
    return quote(value, safe="")


@st.composite
def path_for(draw: st.DrawFn, template: str) -> str:
    # Four times in five a real provider (the handler's own checks), else a hostile one (routing, 404)
    hostile = draw(st.integers(0, 4)) == 0
    provider = draw(HOSTILE_TEXT) if hostile else draw(st.sampled_from(["clover", "poynt"]))
    return template.replace("{provider}", segment(provider, draw(st.booleans())))


@st.composite
def query_for(draw: st.DrawFn, op: dict[str, Any]) -> str:
    names = [p["name"] for p in parameters(op, "query")]
    pairs: list[tuple[str, str]] = []
    for name in names:
        if draw(st.booleans()):
            value = draw(
                st.one_of(
                    HOSTILE_TEXT,
                    MERCHANT_IDS,
                    st.from_regex(r"\A[A-Za-z0-9_-]{10,60}\.[A-Za-z0-9_-]{20,60}\Z"),  # state-shaped
                    st.sampled_from(["success", "access_denied", "clover", "poynt"]),
                )
            )
            pairs.append((name, value))
    for _ in range(draw(st.integers(0, 2))):
        pairs.append((draw(HOSTILE_TEXT), draw(HOSTILE_TEXT)))
    if draw(st.integers(0, 9)) == 0 and pairs:
        pairs.append(pairs[0])  # a repeated parameter (API Gateway joins it with a comma)
    if not pairs:
        return ""
    if draw(st.integers(0, 7)) == 0:
        return "?" + "&".join(f"{quote(k, safe='')}={v}" for k, v in pairs if ALLOWED_PATH_CHARS.fullmatch(v))
    return "?" + urlencode(pairs)


@st.composite
def headers_for(draw: st.DrawFn, op: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    for p in parameters(op, "header"):
        if draw(st.booleans()):
            out.append((p["name"], draw(st.one_of(HEADER_VALUE, st.sampled_from(["", "=", "A" * 28 + "="])))))
    extra = st.sampled_from(
        ["Content-Type", "X-Forwarded-For", "Cookie", "Authorization", "X-Clover-Auth", "Accept", "Referer"]
    )
    for _ in range(draw(st.integers(0, 2))):
        out.append((draw(extra), draw(HEADER_VALUE)))
    return tuple(out)


@st.composite
def webhook_body(draw: st.DrawFn) -> bytes:
    merchant = draw(MERCHANT_IDS)
    event = st.fixed_dictionaries(
        {
            "objectId": st.one_of(st.just("O:ABCDEFGHIJKLM"), st.just("A:app"), HOSTILE_TEXT),
            "type": st.sampled_from(["CREATE", "UPDATE", "DELETE", "weird"]),
            "ts": st.integers(-(2**63), 2**63),
        }
    )
    shaped = st.one_of(
        st.fixed_dictionaries(
            {
                "appId": HOSTILE_TEXT,
                "merchants": st.dictionaries(st.just(merchant), st.lists(event, max_size=3)),
            }
        ),
        st.fixed_dictionaries({"verificationCode": HOSTILE_TEXT}),
        st.fixed_dictionaries(
            {
                "eventType": st.sampled_from(["ORDER_UPDATED", "APPLICATION_SUBSCRIPTION_END", "X"]),
                "businessId": st.just(merchant),
                "resource": st.sampled_from(["/orders", "/x"]),
                "resourceId": HOSTILE_TEXT,
            }
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
            max_leaves=20,
        ),
    )
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return b"[" * 5000 + b"]" * 5000  # deep nesting
    if kind == 2:
        return b'{"merchants": {"' + b"A" * (300 * 1024) + b'": []}}'  # over the 256 KiB limit
    return json.dumps(draw(shaped)).encode()


@st.composite
def cases_for(draw: st.DrawFn, method: str, template: str, op: dict[str, Any]) -> Case:
    body = draw(webhook_body()) if method == "POST" else None
    if method == "GET" and draw(st.integers(0, 15)) == 0:
        body = draw(st.binary(max_size=64))  # a GET with a body
    return Case(method, draw(path_for(template)) + draw(query_for(op)), draw(headers_for(op)), body)


@st.composite
def unknown_routes(draw: st.DrawFn) -> Case:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    known = draw(st.sampled_from([r.path for r in ROUTES]))
    shapes = st.sampled_from(
        [
            "/",
            "/admin",
            "/connect",
            "/connect/clover/extra",
            "/oauth/clover",
            "/oauth/clover/callback/x",
            "/webhooks",
            "/health/x",
            "/%2e%2e/health",
            "/.env",
            "/exports/orders/v1/",
            "/" + "x" * 3000,
        ]
    )
    path = draw(shapes) if draw(st.booleans()) else known.replace("{provider}", "clover")
    if path == known.replace("{provider}", "clover"):
        declared = {r.method for r in ROUTES if r.path == known}
        method = draw(st.sampled_from(sorted({"PUT", "DELETE", "PATCH", "OPTIONS"} - declared)))
    return Case(method, path, (("Host", "127.0.0.1"),), None)


# --------------------------------------------------------------------------- checks


@dataclass
class Secrets:
    values: list[str]

    def found_in(self, text: str) -> list[str]:
        return [v for v in self.values if v in text]


@pytest.fixture(scope="module")
def secrets(module_runtime: LocalRuntime) -> Secrets:
    """Everything that must never appear in an answer: the sandboxes' and the stage's secrets."""
    rt = module_runtime
    rt.apply_env()
    values: set[str] = set()
    for sb in (rt.clover, rt.poynt):
        if sb is not None:
            values.update(sb.secrets())
    sm = boto3.client("secretsmanager")
    state_key = sm.get_secret_value(SecretId=rt.settings.state_key_secret_name)["SecretString"]
    values.add(state_key)
    for provider in ("clover", "poynt"):
        creds = json.loads(
            sm.get_secret_value(SecretId=rt.settings.app_secret_name(provider))["SecretString"]
        )
        values.update(str(v) for k, v in creds.items() if k not in ("client_id", "app_id") and v)
    needles: set[str] = set()
    for v in values:
        needles.add(v)
        needles.update(line for line in v.splitlines() if len(line) >= 40 and "-----" not in line)
    return Secrets(sorted(n for n in needles if len(n) >= 12))


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.statuses: Counter[tuple[str, int]] = Counter()


TALLY = Tally()


def check(answer: Answer, case: Case, op: dict[str, Any] | None, secrets: Secrets, rt: LocalRuntime) -> None:
    where = f"{case.method} {case.target[:200]!r} -> {answer.status}"
    assert answer.status < 500, where
    if op is not None:
        allowed = documented(op)
        assert answer.status in allowed, f"{where}: not a documented status"
        ctype = (answer.header("Content-Type") or "").split(";")[0].strip()
        if allowed[answer.status] and answer.body:
            assert ctype in allowed[answer.status], f"{where}: {ctype} not documented"
        if answer.status == 302:
            location = answer.header("Location") or ""
            providers = [str(sb.url) for sb in (rt.clover, rt.poynt) if sb is not None]
            assert any(location.startswith(p + "/") for p in providers), (
                f"{where}: redirect to {location[:80]}"
            )
    else:
        assert answer.status == 404, where
    text = answer.text + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.headers)
    assert "Traceback" not in text and 'File "' not in text, f"{where}: a stack trace"
    assert secrets.found_in(text) == [], f"{where}: a secret in the answer"
    cookie = answer.header("Set-Cookie")
    if answer.status == 302 and case.target.startswith("/connect/"):
        # the browser binding the callback requires, and nothing else (docs/openapi.json)
        provider = case.target.split("/")[2].split("?")[0]
        assert cookie is not None and re.fullmatch(
            rf"posync_connect=[A-Za-z0-9_-]{{43}}; Path=/oauth/{provider}/callback; Max-Age=600; "
            r"HttpOnly; SameSite=Lax",
            cookie,
        ), where
    else:
        assert cookie is None, where
    if "html" in (answer.header("Content-Type") or ""):
        assert "<script" not in answer.text.lower() and "onerror=" not in answer.text.lower(), where


def stored_nothing(rt: LocalRuntime) -> None:
    """No connection, no connection secret, no queued sync in the module's stage."""
    rt.apply_env()
    ddb = boto3.client("dynamodb")
    assert ddb.scan(TableName=rt.settings.connections_table, Select="COUNT")["Count"] == 0
    sm = boto3.client("secretsmanager")
    names = [
        s["Name"]
        for page in sm.get_paginator("list_secrets").paginate()
        for s in page["SecretList"]
        if s["Name"].startswith(f"posync/{rt.stage}/")
    ]
    assert sorted(names) == sorted(
        [
            rt.settings.app_secret_name("clover"),
            rt.settings.app_secret_name("poynt"),
            rt.settings.state_key_secret_name,
        ]
    )
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=str(rt.settings.sync_queue_url), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"


@pytest.fixture(scope="module")
def stack(module_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    yield module_runtime
    print(f"fuzz: cases={TALLY.cases} statuses={dict(sorted(TALLY.statuses.items()))}")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize(("method", "template"), [(m, p) for m, p, _ in operations()], ids=lambda x: str(x))
def test_fuzzed_requests_get_documented_answers_without_traces_or_secrets(
    stack: LocalRuntime, secrets: Secrets, method: str, template: str
) -> None:
    # Given the operation as described, and requests drawn from it and from hostile strings
    op = SPEC["paths"][template][method.lower()]
    before = TALLY.cases

    @FUZZ
    @given(case=cases_for(method, template, op))
    def run(case: Case) -> None:
        # When the front answers it
        answer = send(stack.api_url, case)
        TALLY.cases += 1
        TALLY.statuses[(op["operationId"], answer.status)] += 1
        # Then the answer is documented, and carries no trace and no secret
        on_route = not case.target.split("?")[0].startswith("//") and _matches(template, case.target)
        check(answer, case, op if on_route else None, secrets, stack)

    run()
    assert TALLY.cases - before >= EXAMPLES // 2
    # and nothing was stored (the Clover verification handshake aside, which stores no connection)
    stored_nothing(stack)


def test_unknown_routes_and_methods_are_plain_404s(stack: LocalRuntime, secrets: Secrets) -> None:
    @FUZZ
    @given(case=unknown_routes())
    def run(case: Case) -> None:
        answer = send(stack.api_url, case)
        TALLY.cases += 1
        TALLY.statuses[("unknown", answer.status)] += 1
        check(answer, case, None, secrets, stack)
        if case.method != "HEAD":
            assert json.loads(answer.body) == {"message": "Not Found"}

    run()
    stored_nothing(stack)


def _matches(template: str, target: str) -> bool:
    """Does the raw target's path match the route (one segment per parameter), as the front matches?"""
    path = target.split("?", 1)[0]
    pattern = "^" + re.escape(template).replace(re.escape("{provider}"), "[^/]+") + "$"
    return re.match(pattern, path) is not None
