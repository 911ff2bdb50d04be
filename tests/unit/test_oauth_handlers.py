"""The connect, callback and webhooks handlers in-process against moto (no provider traffic)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from posync.answers import answer_for, body_bytes
from posync.authorization import Connected
from posync.aws import reset_clients
from posync.config import Settings
from posync.errors import InvalidInput, ProviderError
from posync.webhooks import DynamoVerificationStore, PayloadTooLarge
from tests.unit.test_oauth_connections import create_tables

ROOT = Path(__file__).resolve().parents[2]
AUTH = "clover-hook-auth"


class Ctx:
    function_name = "fn"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:fn"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"handler_{name}_{uuid.uuid4().hex}", ROOT / "functions" / name / "handler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    env = {
        "POSYNC_STAGE": "unith",
        "POSYNC_PUBLIC_BASE_URL": "https://api.example.test",
        "POSYNC_CLOVER_OAUTH_BASE": "http://clover.test",
        "POSYNC_POYNT_OAUTH_BASE": "http://poynt-web.test",
        "POSYNC_POYNT_API_BASE": "http://poynt.test",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        reset_clients()
        settings = Settings.from_env()
        create_tables(settings)
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        sm.create_secret(
            Name=settings.state_key_secret_name, SecretString=base64.b64encode(b"k" * 32).decode()
        )
        sm.create_secret(
            Name=settings.app_secret_name("clover"),
            SecretString=json.dumps(
                {"client_id": "CLOVERAPP1", "client_secret": "x", "webhook_auth_code": AUTH}
            ),
        )
        yield settings
    reset_clients()


def http_event(
    method: str, path: str, provider: str, query: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "rawPath": path,
        "pathParameters": {"provider": provider},
        "queryStringParameters": query or {},
        "headers": extra.pop("headers", {}),
        "requestContext": {"http": {"method": method, "path": path}, "requestId": "r"},
        **extra,
    }


def test_connect_redirects_to_the_consent_page(stack: Settings) -> None:
    connect = load("connect")
    resp = connect.handler(http_event("GET", "/connect/clover", "clover"), Ctx())
    assert resp["statusCode"] == 302
    # And it sets the browser-binding cookie the callback will require
    [cookie] = resp["cookies"]
    assert cookie.startswith("posync_connect=") and "HttpOnly" in cookie and "Secure" in cookie
    location = urlsplit(resp["headers"]["Location"])
    assert location.netloc == "clover.test" and location.path == "/oauth/v2/authorize"
    q = parse_qs(location.query)
    assert q["client_id"] == ["CLOVERAPP1"]
    assert q["redirect_uri"] == ["https://api.example.test/oauth/clover/callback"]
    assert len(q["state"][0]) > 40


def test_connect_answers_unknown_providers_bad_refs_and_missing_apps(stack: Settings) -> None:
    connect = load("connect")
    assert connect.handler(http_event("GET", "/connect/square", "square"), Ctx())["statusCode"] == 404
    bad = connect.handler(http_event("GET", "/connect/clover", "clover", {"ref": "<script>"}), Ctx())
    assert bad["statusCode"] == 400
    assert "<script>" not in bad["body"]
    # An unsigned ref: a clear page, no redirect, no cookie
    unsigned = connect.handler(http_event("GET", "/connect/clover", "clover", {"ref": "shop-1"}), Ctx())
    assert unsigned["statusCode"] == 400 and "not valid" in unsigned["body"]
    assert "Location" not in unsigned["headers"] and "cookies" not in unsigned
    # Poynt has no app credentials in this stack
    missing = connect.handler(http_event("GET", "/connect/poynt", "poynt"), Ctx())
    assert missing["statusCode"] == 503
    assert "text/html" in missing["headers"]["Content-Type"]


def test_a_forged_callback_answers_a_page_that_links_a_fresh_connect(stack: Settings) -> None:
    callback = load("callback")
    resp = callback.handler(
        http_event(
            "GET",
            "/oauth/clover/callback",
            "clover",
            {"merchant_id": "ABCDEFGHJK123", "code": "the-code-123", "state": "abc.def"},
        ),
        Ctx(),
    )
    assert resp["statusCode"] == 400
    assert "not valid" in resp["body"]
    assert 'href="https://api.example.test/connect/clover"' in resp["body"]
    assert "the-code-123" not in resp["body"]


def test_a_successful_callback_redirects_to_the_configured_page(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stage with a success URL and a callback service that completes
    monkeypatch.setenv("POSYNC_SUCCESS_REDIRECT_URL", "https://shop.example/done")
    callback = load("callback")

    class Done:
        def complete(
            self, provider: str, params: dict[str, str], *, cookie: str | None, remaining_s: float
        ) -> Connected:
            assert (provider, params) == (
                "clover",
                {"code": "c", "state": "s", "merchant_id": "ABCDEFGHJK123"},
            )
            # the browser's cookie and the invocation's remaining time reach the service
            assert (cookie, remaining_s) == ("b" * 43, 10.0)
            return Connected("clover", "ABCDEFGHJK123", None, 0)

    setattr(callback, "SERVICE", Done())  # noqa: B010 (a module attribute mypy cannot see)
    # When the provider sends the merchant back
    resp = callback.handler(
        http_event(
            "GET",
            "/oauth/clover/callback",
            "clover",
            {"code": "c", "state": "s", "merchant_id": "ABCDEFGHJK123"},
            cookies=["other=1", "posync_connect=" + "b" * 43],
        ),
        Ctx(),
    )
    # Then the browser goes to the operator's page with provider and merchant id
    assert resp["statusCode"] == 302
    assert (
        resp["headers"]["Location"] == "https://shop.example/done?provider=clover&merchant_id=ABCDEFGHJK123"
    )


def test_without_a_success_url_the_callback_shows_a_page(stack: Settings) -> None:
    callback = load("callback")

    class Done:
        def complete(self, provider: str, params: dict[str, str], **_: object) -> Connected:
            return Connected("poynt", "0b9f1c2e-1111-4222-8333-444455556666", None, 0, "Caf\u00e9 <Bleu>")

    setattr(callback, "SERVICE", Done())  # noqa: B010 (a module attribute mypy cannot see)
    resp = callback.handler(http_event("GET", "/oauth/poynt/callback", "poynt", {}), Ctx())
    assert resp["statusCode"] == 200
    assert "Poynt connected" in resp["body"]
    # And the page names the merchant's business (escaped)
    assert "Caf\u00e9 &lt;Bleu&gt; (Poynt merchant 0b9f1c2e-1111-4222-8333-444455556666)" in resp["body"]


def test_the_clover_verification_handshake_is_stored_for_the_operator(stack: Settings) -> None:
    # Given a Clover app whose webhook auth code is not set yet
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.put_secret_value(
        SecretId=stack.app_secret_name("clover"),
        SecretString=json.dumps({"client_id": "CLOVERAPP1", "client_secret": "x"}),
    )
    webhooks = load("webhooks")

    def send(code: str) -> int:
        body = base64.b64encode(json.dumps({"verificationCode": code}).encode()).decode()
        event = http_event("POST", "/webhooks/clover", "clover", body=body, isBase64Encoded=True)
        return int(webhooks.handler(event, Ctx())["statusCode"])

    # When Clover posts verification codes (the operator clicked "Send" several times)
    assert [send(f"v-{i}") for i in range(5)] == [200] * 5
    # Then each is kept with its time, and past five in an hour they are refused with a 429
    assert send("v-5") == 429
    codes = DynamoVerificationStore(stack).read_verification_codes("clover")
    assert [c for c, _ in codes] == [f"v-{i}" for i in range(5)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", at) for _, at in codes)


def test_the_verification_store_keeps_codes_and_reads_the_older_single_code_item(stack: Settings) -> None:
    # Given the single-code item an earlier version wrote
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    ddb.put_item(
        TableName=stack.control_table,
        Item={
            "pk": {"S": "webhook#clover#verification"},
            "code": {"S": "old-1"},
            "received_at": {"S": "2026-12-01T10:00:00Z"},
        },
    )
    clock = [1_796_700_000.0]
    store = DynamoVerificationStore(stack, clock=lambda: clock[0])
    # When new codes arrive, an hour apart from the limit
    for i in range(5):
        assert store.put_verification_code("clover", f"n-{i}")
    assert not store.put_verification_code("clover", "n-5")
    clock[0] += 3601
    assert store.put_verification_code("clover", "n-6")
    # Then the old code and the new ones are listed with their times, newest last
    got = store.read_verification_codes("clover")
    assert got[0] == ("old-1", "2026-12-01T10:00:00Z")
    assert [c for c, _ in got][1:] == ["n-0", "n-1", "n-2", "n-3", "n-4", "n-6"]
    assert store.read_verification_code("clover") == got[-1]


def test_webhook_answers_401_413_and_200(stack: Settings) -> None:
    webhooks = load("webhooks")
    body = json.dumps({"appId": "A", "merchants": {"ABCDEFGHJK123": [{"objectId": "O:1", "type": "UPDATE"}]}})
    bad = webhooks.handler(
        http_event("POST", "/webhooks/clover", "clover", body=body, headers={"X-Clover-Auth": "no"}), Ctx()
    )
    assert (bad["statusCode"], json.loads(bad["body"])) == (401, {"error": "unauthorized"})
    big = webhooks.handler(
        http_event(
            "POST", "/webhooks/clover", "clover", body="x" * (256 * 1024 + 1), headers={"X-Clover-Auth": AUTH}
        ),
        Ctx(),
    )
    assert big["statusCode"] == 413
    # An authentic message for a merchant we do not know: 200, nothing revealed
    ok = webhooks.handler(
        http_event("POST", "/webhooks/clover", "clover", body=body, headers={"X-Clover-Auth": AUTH}), Ctx()
    )
    assert (ok["statusCode"], json.loads(ok["body"])) == (200, {"ok": True})


def test_answer_for_maps_domain_errors_without_leaking_detail() -> None:
    assert answer_for(ProviderError("clover token endpoint answered 500"), "page", "r")["statusCode"] == 502
    assert answer_for(InvalidInput("not a valid clover merchant id"), "json", "r")["statusCode"] == 400
    boom = answer_for(RuntimeError("secret-value-xyz"), "page", "req-9")
    assert boom["statusCode"] == 500
    assert "secret-value-xyz" not in boom["body"] and "req-9" in boom["body"]


def test_body_bytes_limits_before_and_after_base64() -> None:
    assert body_bytes({"body": "abc"}, 10) == b"abc"
    assert body_bytes({"body": base64.b64encode(b"abc").decode(), "isBase64Encoded": True}, 10) == b"abc"
    with pytest.raises(PayloadTooLarge):
        body_bytes({"body": base64.b64encode(b"a" * 11).decode(), "isBase64Encoded": True}, 10)
    with pytest.raises(PayloadTooLarge):
        body_bytes({"body": "a" * 100, "isBase64Encoded": True}, 10)
    with pytest.raises(InvalidInput):
        body_bytes({"body": "!!!!", "isBase64Encoded": True}, 10)


def test_health_answers_ok_only_when_the_settings_are_valid(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stage whose settings parse
    ok = load("health").handler(http_event("GET", "/health", ""), Ctx())
    assert (ok["statusCode"], json.loads(ok["body"])) == (200, {"status": "ok"})
    # When a setting is invalid (a cold start with a broken environment)
    monkeypatch.setenv("POSYNC_BACKFILL_DAYS", "lots")
    broken = load("health").handler(http_event("GET", "/health", ""), Ctx())
    # Then it is a 503 that says nothing about which setting
    assert (broken["statusCode"], json.loads(broken["body"])) == (503, {"status": "unavailable"})
    assert "BACKFILL" not in broken["body"]
