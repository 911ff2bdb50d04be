"""The token adapters' side of issue 18: Clover's recovery call, and refusals of the app told
apart from refusals of a merchant's grant (scripted HTTP, no sockets)."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from posync.errors import ProviderError
from posync.tokens import AppAuthFailed, RefreshRefused, TokenSet
from tests.unit.oauth_fakes import FakeClock
from tests.unit.test_oauth_providers import (
    Reply,
    ScriptedHTTP,
    clover,
    form_body,
    json_body,
    poynt,
    stored,
)

NOW = FakeClock()()


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def dated(http: ScriptedHTTP, at: float) -> None:
    """Every reply of ``http`` carries ``Date: at``."""
    send = http.send

    def with_date(request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        resp = send(request, *args, **kwargs)
        resp.headers["Date"] = formatdate(at, usegmt=True)
        return resp

    http.send = with_date  # type: ignore[method-assign]


def test_clover_recovery_posts_the_spent_token_with_the_app_secret() -> None:
    def recovery(req: requests.PreparedRequest) -> Reply:
        assert json_body(req) == {
            "client_id": "CLOVERAPP1234",
            "client_secret": "clover-client-secret-value",
            "recovery_token": "old-refresh",
        }
        return 200, {
            "access_token": "rec-access",
            "access_token_expiration": 1_800_001_800,
            "refresh_token": "rec-refresh",
            "refresh_token_expiration": 1_831_600_000,
        }

    oauth, http = clover({("POST", "/oauth/v2/recovery"): recovery})
    spent = TokenSet("a", 1, "old-refresh", 2, 3, connected_at="2027-01-01T00:00:00.000Z")
    new = oauth.recover(spent, "old-refresh")
    assert (new.access_token, new.refresh_token, new.access_expires_at) == (
        "rec-access",
        "rec-refresh",
        1_800_001_800,
    )
    assert new.connected_at == spent.connected_at and new.previous_refresh_token is None
    assert http.sent[0].url == "http://clover.test/oauth/v2/recovery"


@pytest.mark.parametrize(
    ("path", "reply", "error"),
    [
        ("/oauth/v2/refresh", (401, {"message": "Invalid client_id"}), AppAuthFailed),
        ("/oauth/v2/refresh", (401, {"message": "Invalid refresh token"}), RefreshRefused),
        ("/oauth/v2/recovery", (401, {"message": "Invalid client_secret"}), AppAuthFailed),
        ("/oauth/v2/recovery", (401, {"message": "Invalid recovery token"}), RefreshRefused),
        ("/oauth/v2/recovery", (403, {"message": "403 Forbidden"}), RefreshRefused),
        ("/oauth/v2/recovery", (503, {}), ProviderError),
    ],
)
def test_clover_refusals_of_the_app_are_not_refusals_of_the_grant(
    path: str, reply: Reply, error: type[Exception]
) -> None:
    oauth, _ = clover({("POST", path): lambda _r: reply})
    with pytest.raises(error):
        if path.endswith("refresh"):
            oauth.refresh(stored())
        else:
            oauth.recover(stored(), "old-refresh")


def test_a_refusal_with_a_clock_more_than_300_s_off_is_the_apps() -> None:
    oauth, http = clover(
        {("POST", "/oauth/v2/refresh"): lambda _r: (401, {"message": "Invalid refresh token"})}
    )
    dated(http, NOW + 200)
    with pytest.raises(RefreshRefused):
        oauth.refresh(stored())
    dated(http, NOW + 900)
    with pytest.raises(AppAuthFailed) as info:
        oauth.refresh(stored())
    assert info.value.kind == "clock"


@pytest.mark.parametrize(
    ("app_reply", "outcome", "kind"),
    [
        ((200, {"accessToken": "app", "expiresIn": 600}), RefreshRefused, None),
        ((401, {"code": "UNAUTHORIZED", "message": "invalid signature"}), AppAuthFailed, "key"),
        ((401, {"code": "UNAUTHORIZED", "message": "invalid audience"}), AppAuthFailed, "audience"),
        ((401, {"code": "UNAUTHORIZED", "message": "JWT expired"}), AppAuthFailed, "clock"),
        ((401, {"code": "UNAUTHORIZED", "message": "unknown application"}), AppAuthFailed, "key"),
        ((503, {}), ProviderError, None),
    ],
)
def test_a_poynt_refusal_is_blamed_on_the_merchant_only_when_the_app_itself_is_accepted(
    pem: str, app_reply: Reply, outcome: type[Exception], kind: str | None
) -> None:
    # Given a refresh refused with 401, and Poynt's answer to a fresh app-token grant
    def token(req: requests.PreparedRequest) -> Reply:
        if form_body(req).get("grantType") == "REFRESH_TOKEN":
            return 401, {"code": "UNAUTHORIZED", "message": "refused"}
        return app_reply

    oauth, http = poynt({("POST", "/token"): token}, pem)
    # When the refresh is refused
    with pytest.raises(outcome) as info:
        oauth.refresh(stored())
    # Then the app was checked with its own grant before the merchant was blamed
    assert [form_body(r)["grantType"] for r in http.sent] == [
        "REFRESH_TOKEN",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ]
    if kind is not None:
        assert isinstance(info.value, AppAuthFailed) and info.value.kind == kind
