"""Hostile input at the public routes: forged, expired and replayed states; forged webhook
signatures; oversized bodies; provider and merchant ids built to traverse paths or to inject
into table keys and secret names. Each must get a clear 4xx and store nothing.

The flows are real: our connect and callback handlers behind the local front, the sandbox's
consent page and token endpoint, the embedded AWS. "Stored nothing" is checked where it would
land: the connection table, the stage's secrets, the sync queue, and the provider (a refused
callback must not even spend the authorization code).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import boto3
import pytest
import requests

from posync.domain import ConnectionStatus
from posync.oauth_state import StateSigner, key_from_secret
from posync.webhooks import MAX_BODY_BYTES, poynt_signature
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    BROWSER,
    clover_of,
    connect,
    connection,
    decide,
    follow_callback,
    poynt_of,
    queued_syncs,
    sandbox_of,
    secret_exists,
    start_connect,
    stored_tokens,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("empty_sync_queue")]

PROVIDERS = ("clover", "poynt")
TIMEOUT = 10
HOSTILE_IDS = [
    "../../app/clover",
    "..%2F..%2Fapp%2Fclover",
    "ABCDEFGHIJKL/",
    "ABCDEFGHIJKLM/../x",
    "ABCDEFGHIJKLM#x",
    "ABCDEFGHIJKLM\n",
    "ABCDEFGHIJKLM%0A",
    "ABCDEFGHIJKLM%00",
    "\uff21BCDEFGHIJKLM",  # fullwidth A
    "abcdefghijklm",
    "ABCDEFGHIJKLM ",
    "*",
    "",
    "0b9f1c2e-1111-4222-8333-444455556666/../x",
    "0B9F1C2E-1111-4222-8333-444455556666",
]


# --------------------------------------------------------------------------- helpers


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with some query parameters replaced (None: removed)."""
    parts = urlsplit(url)
    q = query_of(url)
    for k, v in changes.items():
        if v is None:
            q.pop(k, None)
        else:
            q[k] = v
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(q), ""))


def approved_callback(rt: LocalRuntime, provider: str, merchant_id: str | None = None) -> tuple[str, str]:
    """A merchant approves at the provider; returns (merchant id, our callback URL), not yet followed."""
    sb = sandbox_of(rt, provider)
    merchant = merchant_id or sb.add_merchant(orders=3)
    return merchant, decide(start_connect(rt, provider), "approve", merchant)


def state_param(provider: str) -> str:
    return "state" if provider == "clover" else "context"


def stage_secret_names(rt: LocalRuntime) -> set[str]:
    sm = boto3.client("secretsmanager")
    return {
        s["Name"]
        for page in sm.get_paginator("list_secrets").paginate()
        for s in page["SecretList"]
        if s["Name"].startswith(f"posync/{rt.stage}/")
    }


def assert_clean_secret_names(rt: LocalRuntime) -> None:
    """Every secret of the stage is an app secret or a connection secret with a well-formed id."""
    for name in stage_secret_names(rt):
        rest = name.removeprefix(f"posync/{rt.stage}/")
        provider, _, merchant = rest.partition("/")
        assert provider in ("clover", "poynt", "app"), name
        if provider == "app":
            assert merchant in ("clover", "poynt", "state-key"), name
        else:
            from posync.domain import check_merchant_id

            check_merchant_id(provider, merchant)


def exchanges(rt: LocalRuntime, provider: str) -> int:
    return int(sandbox_of(rt, provider).stats.snapshot()["token_exchanges"])


def assert_refused_and_nothing_stored(
    rt: LocalRuntime, resp: requests.Response, provider: str, merchant_id: str, *, status: int = 400
) -> None:
    assert resp.status_code == status, resp.text[:300]
    assert "text/html" in resp.headers["Content-Type"]
    assert "Traceback" not in resp.text
    assert connection(rt.settings, provider, merchant_id) is None
    assert not secret_exists(rt.settings, provider, merchant_id)
    assert queued_syncs(rt.settings) == []
    assert_clean_secret_names(rt)


def stage_state_key(rt: LocalRuntime) -> bytes:
    sm = boto3.client("secretsmanager")
    return key_from_secret(sm.get_secret_value(SecretId=rt.settings.state_key_secret_name)["SecretString"])


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_state_signed_with_another_key_is_refused_before_the_code_is_spent(
    rt: LocalRuntime, provider: str
) -> None:
    # Given a genuine approval, whose state is replaced by one signed with an attacker's key
    merchant, callback = approved_callback(rt, provider)
    forged = StateSigner(lambda: b"attacker-key-of-32-bytes-length!").issue(provider)
    before = exchanges(rt, provider)
    # When the callback is followed
    resp = requests.get(with_query(callback, **{state_param(provider): forged}), timeout=TIMEOUT)
    # Then it is refused, nothing is stored, and the code was never sent to the provider
    assert_refused_and_nothing_stored(rt, resp, provider, merchant)
    assert "not valid" in resp.text
    assert exchanges(rt, provider) == before


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_tampered_state_payload_is_refused(rt: LocalRuntime, provider: str) -> None:
    # Given a genuine state whose payload is rewritten (another ref) under its original MAC
    merchant, callback = approved_callback(rt, provider)
    payload, mac = query_of(callback)[state_param(provider)].split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["ref"] = "attacker"
    tampered = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode() + "." + mac
    before = exchanges(rt, provider)
    resp = requests.get(with_query(callback, **{state_param(provider): tampered}), timeout=TIMEOUT)
    assert_refused_and_nothing_stored(rt, resp, provider, merchant)
    assert exchanges(rt, provider) == before


def test_a_state_issued_for_one_provider_is_refused_by_the_other(rt: LocalRuntime) -> None:
    # Given a genuine Clover state presented to the Poynt callback with a genuine Poynt code
    _, clover_callback = approved_callback(rt, "clover")
    merchant, poynt_callback = approved_callback(rt, "poynt")
    resp = requests.get(
        with_query(poynt_callback, context=query_of(clover_callback)["state"]), timeout=TIMEOUT
    )
    assert_refused_and_nothing_stored(rt, resp, "poynt", merchant)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expired_state_is_refused(rt: LocalRuntime, provider: str) -> None:
    # Given a state signed with the stage's own key eleven minutes ago (the lifetime is ten)
    merchant, callback = approved_callback(rt, provider)
    old = StateSigner(lambda: stage_state_key(rt), clock=lambda: time.time() - 660).issue(
        provider, ref="late"
    )
    resp = requests.get(with_query(callback, **{state_param(provider): old}), timeout=TIMEOUT)
    assert_refused_and_nothing_stored(rt, resp, provider, merchant)
    assert "expired" in resp.text
    # and the page offers a fresh connect link, never with a ref its state did not carry signed
    assert f'/connect/{provider}"' in resp.text and "ref=late" not in resp.text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_replayed_callback_stores_nothing_more(rt: LocalRuntime, provider: str) -> None:
    # Given a merchant who connected
    merchant, callback = approved_callback(rt, provider)
    assert follow_callback(callback).callback.status_code == 200
    first = stored_tokens(rt.settings, provider, merchant)
    assert len(queued_syncs(rt.settings)) == 1
    before = exchanges(rt, provider)
    # When the same callback URL is replayed in the same browser (its history)
    resp = BROWSER.get(callback, timeout=TIMEOUT)
    # Then it is refused as already used: the stored tokens are untouched, no second sync, no exchange
    assert resp.status_code == 400
    assert "already used" in resp.text
    assert stored_tokens(rt.settings, provider, merchant) == first
    assert queued_syncs(rt.settings) == []
    assert exchanges(rt, provider) == before


@pytest.mark.parametrize(
    "state", ["", ".", "a.b.c", "x" * 2000, "\u00e9t\u00e9.\u00e9t\u00e9", "a.b\nc", "null"]
)
def test_malformed_states_are_refused(rt: LocalRuntime, state: str) -> None:
    merchant, callback = approved_callback(rt, "clover")
    resp = requests.get(with_query(callback, state=state), timeout=TIMEOUT)
    assert_refused_and_nothing_stored(rt, resp, "clover", merchant)


# --------------------------------------------------------------------------- ids built to traverse or inject


@pytest.mark.parametrize(
    "segment", ["..%2F..%2Fhealth", "%2e%2e", "clover%2F..%2Fpoynt", "clover%23x", "CLOVER", "%00"]
)
def test_hostile_provider_segments_get_a_404_and_no_redirect(rt: LocalRuntime, segment: str) -> None:
    for path in (f"/connect/{segment}", f"/oauth/{segment}/callback"):
        resp = requests.get(f"{rt.api_url}{path}", allow_redirects=False, timeout=TIMEOUT)
        assert resp.status_code == 404, path
        assert "Location" not in resp.headers
    resp = requests.post(f"{rt.api_url}/webhooks/{segment}", data=b"{}", timeout=TIMEOUT)
    assert resp.status_code == 404


HOSTILE_REFS = ["../x", "a/b", "a#b", "a\nb", "a b", "x" * 65, "<script>", "%2F", "\u202eab", "a\x00b"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hostile_merchant_ids_and_refs_on_connect_are_refused(rt: LocalRuntime, provider: str) -> None:
    cases = [{"merchant_id": m} for m in HOSTILE_IDS if m] + [{"ref": r} for r in HOSTILE_REFS]
    for params in cases:
        resp = requests.get(
            f"{rt.api_url}/connect/{provider}", params=params, allow_redirects=False, timeout=TIMEOUT
        )
        assert resp.status_code == 400, (params, resp.status_code)
        assert "Location" not in resp.headers


@pytest.mark.parametrize("merchant_id", HOSTILE_IDS)
def test_a_genuine_clover_callback_with_a_hostile_merchant_id_stores_nothing(
    rt: LocalRuntime, merchant_id: str
) -> None:
    # Given a genuine approval whose merchant_id parameter is rewritten to traverse or inject
    merchant, callback = approved_callback(rt, "clover")
    before = exchanges(rt, "clover")
    names = stage_secret_names(rt)
    # When the callback is followed
    resp = requests.get(with_query(callback, merchant_id=merchant_id), timeout=TIMEOUT)
    # Then it is refused, no secret was named after it, and the code was not even spent
    assert_refused_and_nothing_stored(rt, resp, "clover", merchant)
    assert stage_secret_names(rt) == names
    assert exchanges(rt, "clover") == before


def test_a_clover_callback_whose_merchant_id_was_swapped_cannot_take_over_another_merchant(
    rt: LocalRuntime,
) -> None:
    # Given a victim merchant who is connected, and an attacker who approves posync for their own
    # merchant and rewrites the callback's merchant_id to the victim's (Clover's token reply does
    # not say whose token it is)
    clover = clover_of(rt)
    victim = clover.add_merchant(orders=3)
    assert connect(rt, "clover", merchant_id=victim).callback.status_code == 200
    queued_syncs(rt.settings)
    victim_tokens = stored_tokens(rt.settings, "clover", victim)
    attacker, callback = approved_callback(rt, "clover")
    # When the tampered callback is followed
    resp = requests.get(with_query(callback, merchant_id=victim), timeout=TIMEOUT)
    # Then it is refused: the victim's tokens and connection are untouched, nothing is queued
    assert resp.status_code == 400, resp.text[:300]
    assert stored_tokens(rt.settings, "clover", victim) == victim_tokens
    conn = connection(rt.settings, "clover", victim)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE
    assert queued_syncs(rt.settings) == []
    assert connection(rt.settings, "clover", attacker) is None


# --------------------------------------------------------------------------- webhooks


def clover_event(merchant_id: str) -> bytes:
    return json.dumps(
        {"appId": "app", "merchants": {merchant_id: [{"objectId": "O:ABC", "type": "UPDATE", "ts": 1}]}}
    ).encode()


def poynt_event(business_id: str, event_type: str = "ORDER_UPDATED") -> bytes:
    return json.dumps(
        {"eventType": event_type, "businessId": business_id, "resource": "/orders", "resourceId": "o"}
    ).encode()


@pytest.fixture(scope="module")
def connected(rt: LocalRuntime) -> dict[str, str]:
    """One connected merchant per provider (webhook targets)."""
    out = {}
    for provider in PROVIDERS:
        merchant = sandbox_of(rt, provider).add_merchant(orders=3)
        assert connect(rt, provider, merchant_id=merchant).callback.status_code == 200
        out[provider] = merchant
    queued_syncs(rt.settings)
    return out


def post_webhook(rt: LocalRuntime, provider: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{rt.api_url}/webhooks/{provider}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=TIMEOUT,
    )


def clover_forgeries(code: str) -> list[dict[str, str]]:
    return [
        {},
        {"X-Clover-Auth": ""},
        {"X-Clover-Auth": "wrong"},
        {"X-Clover-Auth": code[:-1]},
        {"X-Clover-Auth": code + "x"},
        {"X-Clover-Auth": code.upper() if code != code.upper() else code.lower()},
        {"X-Clover-Auth": f"{code}\t"},
        {"Authorization": code},
    ]


def test_clover_webhooks_with_forged_auth_are_401_and_change_nothing(
    rt: LocalRuntime, connected: dict[str, str]
) -> None:
    code = clover_of(rt).webhook_auth_code
    merchant = connected["clover"]
    uninstall = json.dumps(
        {"appId": "app", "merchants": {merchant: [{"objectId": "A:app", "type": "DELETE", "ts": 1}]}}
    ).encode()
    # A verification body that smuggles merchants must authenticate like any message
    smuggled = json.dumps({"verificationCode": "x", "merchants": {merchant: []}}).encode()
    for body in (clover_event(merchant), uninstall, smuggled):
        for headers in clover_forgeries(code):
            resp = post_webhook(rt, "clover", body, headers)
            assert resp.status_code == 401, headers.keys()
            assert resp.json() == {"error": "unauthorized"}
    assert queued_syncs(rt.settings) == []
    conn = connection(rt.settings, "clover", merchant)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE
    # and the genuine code is accepted (the forgeries failed on the signature, not the body)
    assert post_webhook(rt, "clover", clover_event(merchant), {"X-Clover-Auth": code}).status_code == 200
    assert len(queued_syncs(rt.settings)) == 1


def test_poynt_webhooks_with_forged_signatures_are_401_and_change_nothing(
    rt: LocalRuntime, connected: dict[str, str]
) -> None:
    secret = poynt_of(rt).webhook_secret
    merchant = connected["poynt"]
    body = poynt_event(merchant, "APPLICATION_SUBSCRIPTION_END")
    right = poynt_signature(secret, body)
    sha256 = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    forgeries = [
        "",
        "x",
        poynt_signature("wrong-secret", body),
        poynt_signature(secret, body + b" "),  # the signature of another body
        sha256,  # another algorithm
        right[:-2],
        right.lower(),
        base64.b64encode(hashlib.sha1(body).digest()).decode(),  # a plain hash, no key
    ]
    for sig in forgeries:
        resp = post_webhook(rt, "poynt", body, {"Poynt-Webhook-Signature": sig})
        assert resp.status_code == 401, sig
        assert resp.json() == {"error": "unauthorized"}
    # and a genuine signature over a body changed after signing
    resp = post_webhook(
        rt,
        "poynt",
        body.replace(b"SUBSCRIPTION_END", b"SUBSCRIPTION_EnD"),
        {"Poynt-Webhook-Signature": right},
    )
    assert resp.status_code == 401
    conn = connection(rt.settings, "poynt", merchant)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE
    assert secret_exists(rt.settings, "poynt", merchant)
    assert queued_syncs(rt.settings) == []


@pytest.mark.parametrize("merchant_id", HOSTILE_IDS)
def test_authentic_webhooks_naming_hostile_merchant_ids_are_ignored(
    rt: LocalRuntime, merchant_id: str
) -> None:
    # Given correctly signed messages (the provider's secret) about merchant ids built to inject
    names = stage_secret_names(rt)
    clover_body = json.dumps(
        {
            "appId": "app",
            "merchants": {
                merchant_id: [{"objectId": "A:app", "type": "DELETE", "ts": 1}, {"objectId": "O:x"}]
            },
        }
    ).encode()
    poynt_bodies = [poynt_event(merchant_id), poynt_event(merchant_id, "APPLICATION_SUBSCRIPTION_END")]
    # Then each is answered 200 (revealing nothing), and nothing is queued, revoked or named after them
    resp = post_webhook(rt, "clover", clover_body, {"X-Clover-Auth": clover_of(rt).webhook_auth_code})
    assert resp.status_code == 200
    secret = poynt_of(rt).webhook_secret
    for body in poynt_bodies:
        resp = post_webhook(rt, "poynt", body, {"Poynt-Webhook-Signature": poynt_signature(secret, body)})
        assert resp.status_code == 200
    assert queued_syncs(rt.settings) == []
    assert stage_secret_names(rt) == names


# --------------------------------------------------------------------------- oversized bodies


def test_oversized_bodies_get_413_before_anything_is_parsed(
    rt: LocalRuntime, connected: dict[str, str]
) -> None:
    secret = poynt_of(rt).webhook_secret
    merchant = connected["poynt"]
    # Over the webhook limit (256 KiB), correctly signed: the handler refuses it
    body = poynt_event(merchant)[:-1] + b', "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    resp = post_webhook(rt, "poynt", body, {"Poynt-Webhook-Signature": poynt_signature(secret, body)})
    assert resp.status_code == 413
    # Over the front's limit (1 MiB): refused before the handler runs, with a length or chunked
    big = b"{" + b" " * (1024 * 1024) + b"}"
    assert post_webhook(rt, "clover", big, {}).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    resp = requests.post(f"{rt.api_url}/webhooks/clover", data=chunks(), timeout=TIMEOUT)
    assert resp.status_code == 413
    assert queued_syncs(rt.settings) == []


def test_a_body_with_a_lying_content_length_is_a_400(rt: LocalRuntime) -> None:
    import http.client

    parts = urlsplit(rt.api_url)
    for length in ("-1", "abc", "1e3"):
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=TIMEOUT)
        try:
            conn.putrequest("POST", "/webhooks/clover")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            resp = conn.getresponse()
            assert resp.status == 400, length
            resp.read()
        finally:
            conn.close()


def test_every_hostile_request_left_only_well_formed_secret_names(rt: LocalRuntime) -> None:
    assert_clean_secret_names(rt)
