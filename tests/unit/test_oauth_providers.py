"""Clover and Poynt OAuth adapters against a scripted HTTP transport (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from posync.app_credentials import CloverAppCredentials, PoyntAppCredentials
from posync.errors import ProviderError, RateLimited
from posync.providers import CallbackParams, ExchangeRefused, deadline
from posync.providers.clover.oauth import CloverOAuth
from posync.providers.poynt.oauth import PoyntOAuth, business_id_of
from posync.tokens import RefreshNotDue, RefreshRefused, TokenSet
from tests.unit.oauth_fakes import FakeClock, unit_settings

Reply = tuple[int, Any] | Exception
Route = Callable[[requests.PreparedRequest], Reply]
BIZ = "0b9f1c2e-1111-4222-8333-444455556666"
APP_ID = "urn:aid:5e3b1a52-5d2c-4a8e-9a7b-2f4b0c7d9e11"


class ScriptedHTTP(BaseAdapter):
    """A requests transport answering from Python functions keyed by (method, path)."""

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        super().__init__()
        self.routes = routes
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        reply = self.routes[(str(request.method), urlsplit(str(request.url)).path)](request)
        if isinstance(reply, Exception):
            raise reply
        status, body = reply
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        resp.url = str(request.url)
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def session_with(routes: dict[tuple[str, str], Route]) -> tuple[requests.Session, ScriptedHTTP]:
    s = requests.Session()
    http = ScriptedHTTP(routes)
    s.mount("http://", http)
    return s, http


def json_body(req: requests.PreparedRequest) -> dict[str, Any]:
    body = req.body or b"{}"
    return dict(json.loads(body))


def form_body(req: requests.PreparedRequest) -> dict[str, str]:
    body = req.body if isinstance(req.body, str) else (req.body or b"").decode()
    return {k: v[0] for k, v in parse_qs(body).items()}


CLOVER = CloverAppCredentials("CLOVERAPP1234", "clover-client-secret-value")


def clover(
    routes: dict[tuple[str, str], Route], clock: FakeClock | None = None
) -> tuple[CloverOAuth, ScriptedHTTP]:
    s, http = session_with(routes)
    return CloverOAuth(unit_settings().clover, lambda: CLOVER, s, clock or FakeClock()), http


# ------------------------------------------------------------------------------ Clover


def test_clover_consent_url_carries_client_state_redirect_and_the_merchant_hint() -> None:
    oauth, _ = clover({})
    url = oauth.authorize_url("https://api.example.test/oauth/clover/callback", "S.T", "ABCDEFGHJK123")
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://clover.test/oauth/v2/authorize"
    assert q == {
        "client_id": "CLOVERAPP1234",
        "redirect_uri": "https://api.example.test/oauth/clover/callback",
        "state": "S.T",
        "merchant_id": "ABCDEFGHJK123",
    }


def test_clover_callback_parameters_and_denial() -> None:
    oauth, _ = clover({})
    ok = oauth.read_callback({"merchant_id": "M", "code": "c0de", "state": "s", "client_id": "x"})
    assert (ok.denied, ok.merchant_id, ok.state, ok.code) == (False, "M", "s", "c0de")
    assert "c0de" not in repr(ok)
    denied = oauth.read_callback({"error": "access_denied", "state": "s"})
    assert denied.denied and denied.error == "access_denied"


def test_clover_exchange_posts_the_code_with_the_app_secret_and_returns_absolute_expiry() -> None:
    def token(req: requests.PreparedRequest) -> Reply:
        assert json_body(req) == {
            "client_id": "CLOVERAPP1234",
            "client_secret": CLOVER.client_secret,
            "code": "c0de",
        }
        return 200, {
            "access_token": "acc",
            "access_token_expiration": 1_800_001_800,
            "refresh_token": "ref",
            "refresh_token_expiration": 1_831_536_000,
        }

    oauth, http = clover(
        {("POST", "/oauth/v2/token"): token, ("GET", "/v3/merchants/ABCDEFGHJK123"): merchant}
    )
    grant = oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="ABCDEFGHJK123"), "https://x/cb")
    assert grant.merchant_id == "ABCDEFGHJK123"
    assert grant.tokens == TokenSet("acc", 1_800_001_800, "ref", 1_831_536_000, 1_800_000_000)
    # and the new token was checked against the merchant the callback named, whose name it read
    assert http.sent[1].headers["Authorization"] == "Bearer acc"
    assert grant.business_name == "Shop"


def merchant(req: requests.PreparedRequest) -> Reply:
    return 200, {"id": "ABCDEFGHJK123", "name": "Shop"}


def token_ok(req: requests.PreparedRequest) -> Reply:
    return 200, {"access_token": "acc", "access_token_expiration": 1_800_001_800, "refresh_token": "ref"}


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ((401, {"message": "401 Unauthorized"}), ExchangeRefused),
        ((403, {}), ExchangeRefused),
        ((404, {}), ExchangeRefused),
        ((500, {}), ProviderError),
        (requests.ReadTimeout("slow"), ProviderError),
    ],
)
def test_a_clover_code_of_another_merchant_is_refused(reply: Reply, error: type[Exception]) -> None:
    # Given a callback whose merchant_id was rewritten: the code's token does not open that merchant
    routes: dict[tuple[str, str], Route] = {
        ("POST", "/oauth/v2/token"): token_ok,
        ("GET", "/v3/merchants/ABCDEFGHJK123"): lambda _r: reply,
    }
    oauth, _ = clover(routes)
    # Then the exchange is refused (nothing will be stored), or fails as the provider's error
    with pytest.raises(error):
        oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="ABCDEFGHJK123"), "https://x/cb")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ((401, {"message": "Invalid code"}), ExchangeRefused),
        ((400, {"message": "code expired"}), ExchangeRefused),
        ((500, {"message": "oops"}), ProviderError),
        ((503, {}), ProviderError),
        (requests.ReadTimeout("slow"), ProviderError),
        (requests.ConnectionError("refused"), ProviderError),
    ],
)
def test_clover_exchange_failures(reply: Reply, error: type[Exception]) -> None:
    oauth, _ = clover({("POST", "/oauth/v2/token"): lambda _r: reply})
    with pytest.raises(error):
        oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="ABCDEFGHJK123"), "https://x/cb")


def test_clover_exchange_needs_a_well_formed_merchant_id() -> None:
    oauth, http = clover({})
    with pytest.raises(Exception, match="merchant id"):
        oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="../etc"), "https://x/cb")
    assert http.sent == []


def stored() -> TokenSet:
    return TokenSet("old-access", 1_800_000_100, "old-refresh", 1_831_536_000, 1_799_998_300)


def test_clover_refresh_sends_the_refresh_token_and_returns_the_new_pair() -> None:
    def refresh(req: requests.PreparedRequest) -> Reply:
        assert json_body(req) == {"client_id": "CLOVERAPP1234", "refresh_token": "old-refresh"}
        return 200, {
            "access_token": "new-access",
            "access_token_expiration": 1_800_001_800,
            "refresh_token": "new-refresh",
            "refresh_token_expiration": 1_831_600_000,
        }

    oauth, _ = clover({("POST", "/oauth/v2/refresh"): refresh})
    new = oauth.refresh(stored())
    assert (new.access_token, new.refresh_token, new.access_expires_at) == (
        "new-access",
        "new-refresh",
        1_800_001_800,
    )


def test_clover_refresh_without_a_new_refresh_token_keeps_the_old_one() -> None:
    oauth, _ = clover(
        {("POST", "/oauth/v2/refresh"): lambda _r: (200, {"access_token": "n", "access_token_expiration": 5})}
    )
    new = oauth.refresh(stored())
    assert (new.refresh_token, new.refresh_expires_at) == ("old-refresh", 1_831_536_000)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ((400, {"message": "access_token not expired"}), RefreshNotDue),
        ((401, {"message": "Invalid refresh token"}), RefreshRefused),
        ((400, {"message": "invalid_grant"}), RefreshRefused),
        ((429, {}), RateLimited),
        ((502, {}), ProviderError),
        ((404, {}), ProviderError),
        (requests.ReadTimeout("lost reply"), ProviderError),
    ],
)
def test_clover_refresh_outcomes(reply: Reply, error: type[Exception]) -> None:
    oauth, _ = clover({("POST", "/oauth/v2/refresh"): lambda _r: reply})
    with pytest.raises(error):
        oauth.refresh(stored())


def test_a_refusal_reason_never_echoes_a_token() -> None:
    echo = "Invalid refresh token old-refresh-abcdefghijklmnopqrstuvwxyz0123456789"
    oauth, _ = clover({("POST", "/oauth/v2/refresh"): lambda _r: (401, {"message": echo})})
    with pytest.raises(RefreshRefused) as info:
        oauth.refresh(stored())
    assert "abcdefghijklmnopqrstuvwxyz" not in info.value.reason
    assert "Invalid refresh token" in info.value.reason


def test_an_expired_refresh_token_is_not_even_sent() -> None:
    oauth, http = clover({}, FakeClock(1_900_000_000))
    with pytest.raises(RefreshRefused):
        oauth.refresh(stored())
    assert http.sent == []


# ------------------------------------------------------------------------------- Poynt


@pytest.fixture(scope="module")
def keypair() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, pem


def poynt(
    routes: dict[tuple[str, str], Route], pem: str, clock: FakeClock | None = None
) -> tuple[PoyntOAuth, ScriptedHTTP]:
    s, http = session_with(routes)
    creds = PoyntAppCredentials(APP_ID, pem)
    return PoyntOAuth(unit_settings().poynt, lambda: creds, s, clock or FakeClock()), http


def merchant_jwt(biz: str | None = BIZ) -> str:
    claims: dict[str, Any] = {"iss": "https://poynt.test", "sub": "u", "exp": 1_900_000_000}
    if biz is not None:
        claims["poynt.biz"] = biz
    return jwt.encode(claims, "poynt-signing-key-for-tests-only-32b", algorithm="HS256")


def verify_app_jwt(token: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key.public_key(),
        algorithms=["RS256"],
        audience="http://poynt.test",
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


def test_poynt_self_signed_jwt_has_the_required_claims(keypair: tuple[rsa.RSAPrivateKey, str]) -> None:
    key, pem = keypair
    oauth, _ = poynt({}, pem)
    a = verify_app_jwt(oauth.self_signed_jwt(), key)
    b = verify_app_jwt(oauth.self_signed_jwt(), key)
    assert a["iss"] == a["sub"] == APP_ID
    assert a["aud"] == "http://poynt.test"
    assert 0 < a["exp"] - a["iat"] <= 300
    assert a["jti"] != b["jti"]


def test_poynt_consent_url_carries_the_state_as_context(keypair: tuple[rsa.RSAPrivateKey, str]) -> None:
    oauth, _ = poynt({}, keypair[1])
    url = urlsplit(oauth.authorize_url("https://api.example.test/oauth/poynt/callback", "S.T"))
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == "http://poynt-web.test/applications/authorize"
    assert q == {
        "client_id": APP_ID,
        "redirect_uri": "https://api.example.test/oauth/poynt/callback",
        "context": "S.T",
    }


def test_poynt_callback_status(keypair: tuple[rsa.RSAPrivateKey, str]) -> None:
    oauth, _ = poynt({}, keypair[1])
    ok = oauth.read_callback({"code": "c", "status": "success", "context": "s"})
    assert (ok.denied, ok.state, ok.code) == (False, "s", "c")
    assert oauth.read_callback({"status": "denied", "context": "s"}).denied
    assert oauth.read_callback({"code": "c", "status": "failure", "context": "s"}).denied


def test_poynt_exchange_authenticates_with_the_app_jwt_and_reads_the_business_id(
    keypair: tuple[rsa.RSAPrivateKey, str],
) -> None:
    key, pem = keypair
    access = merchant_jwt()

    def token(req: requests.PreparedRequest) -> Reply:
        assert req.headers["api-version"] == "1.2"
        claims = verify_app_jwt(req.headers["Authorization"].removeprefix("Bearer "), key)
        assert claims["iss"] == APP_ID
        assert form_body(req) == {
            "grant_type": "authorization_code",
            "code": "c0de",
            "client_id": APP_ID,
            "redirect_uri": "https://x/cb",
        }
        return 200, {"accessToken": access, "refreshToken": "r", "expiresIn": 86400, "tokenType": "BEARER"}

    def business(req: requests.PreparedRequest) -> Reply:
        assert req.headers["Authorization"] == f"Bearer {access}"
        return 200, {"id": BIZ, "legalName": "Bleu LLC", "doingBusinessAs": "Cafe Bleu"}

    oauth, _ = poynt({("POST", "/token"): token, ("GET", f"/businesses/{BIZ}"): business}, pem)
    grant = oauth.exchange_code(CallbackParams("s", "c0de"), "https://x/cb")
    assert grant.merchant_id == BIZ
    assert grant.tokens.access_expires_at == 1_800_000_000 + 86400
    assert grant.tokens.refresh_token == "r"
    assert grant.business_name == "Cafe Bleu"
    # And a business read that fails costs only the name, never the connection
    failing = poynt({("POST", "/token"): token, ("GET", f"/businesses/{BIZ}"): lambda _r: (500, {})}, pem)[0]
    assert failing.exchange_code(CallbackParams("s", "c0de"), "https://x/cb").business_name is None


def test_a_poynt_token_without_a_valid_business_id_is_a_provider_error() -> None:
    with pytest.raises(ProviderError):
        business_id_of(merchant_jwt(None))
    with pytest.raises(ProviderError):
        business_id_of(merchant_jwt("not-a-uuid"))
    with pytest.raises(ProviderError):
        business_id_of("opaque")


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ((401, {"code": "UNAUTHORIZED", "developerMessage": "invalid_grant"}), RefreshRefused),
        ((400, {"code": "invalid_grant"}), RefreshRefused),
        ((500, {}), ProviderError),
    ],
)
def test_poynt_refresh_outcomes(
    keypair: tuple[rsa.RSAPrivateKey, str], reply: Reply, error: type[Exception]
) -> None:
    def token(req: requests.PreparedRequest) -> Reply:
        if form_body(req).get("grantType") == "REFRESH_TOKEN":
            return reply
        return 200, {"accessToken": "app", "expiresIn": 600}  # the app itself is fine

    oauth, _ = poynt({("POST", "/token"): token}, keypair[1])
    with pytest.raises(error):
        oauth.refresh(stored())


def test_poynt_refresh_uses_the_refresh_grant(keypair: tuple[rsa.RSAPrivateKey, str]) -> None:
    def token(req: requests.PreparedRequest) -> Reply:
        assert form_body(req) == {"grantType": "REFRESH_TOKEN", "refreshToken": "old-refresh"}
        return 200, {"accessToken": "n", "refreshToken": "n-r", "expiresIn": 600}

    oauth, _ = poynt({("POST", "/token"): token}, keypair[1])
    new = oauth.refresh(stored())
    assert (new.access_token, new.refresh_token, new.access_expires_at) == ("n", "n-r", 1_800_000_600)


def test_the_poynt_app_token_is_cached_until_near_expiry(keypair: tuple[rsa.RSAPrivateKey, str]) -> None:
    key, pem = keypair
    clock = FakeClock()
    issued: list[str] = []

    def token(req: requests.PreparedRequest) -> Reply:
        form = form_body(req)
        assert form["grantType"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        issued.append(verify_app_jwt(form["assertion"], key)["jti"])
        return 200, {"accessToken": f"app-{len(issued)}", "expiresIn": 3600}

    oauth, _ = poynt({("POST", "/token"): token}, pem, clock)
    assert [oauth.app_access_token() for _ in range(3)] == ["app-1"] * 3
    clock.sleep(3600 - 60)
    assert oauth.app_access_token() == "app-2"
    assert len(set(issued)) == 2


def test_provider_errors_name_the_endpoint_but_not_the_secret() -> None:
    oauth, _ = clover(
        {("POST", "/oauth/v2/token"): lambda _r: requests.ConnectionError(CLOVER.client_secret)}
    )
    with pytest.raises(ProviderError) as info:
        oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="ABCDEFGHJK123"), "https://x/cb")
    assert CLOVER.client_secret not in str(info.value)
    assert "c0de" not in str(info.value)


@pytest.mark.parametrize(
    "status", ["success", "SUCCESS", "AUTHORIZED", "OK", "approved", "", None, "weird-new-value"]
)
def test_poynt_a_code_without_error_is_an_approval_whatever_status_says(
    keypair: tuple[rsa.RSAPrivateKey, str], status: str | None
) -> None:
    # Given a redirect with a code and no error, status spelled any undocumented way
    oauth, _ = poynt({}, keypair[1])
    params = {"code": "c", "context": "s"}
    if status is not None:
        params["status"] = status
    # Then it is an approval
    cb = oauth.read_callback(params)
    assert not cb.denied and cb.code == "c" and cb.state == "s"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "DENIED", "context": "s"},
        {"status": "CANCELED", "context": "s"},
        {"error": "access_denied", "context": "s"},
        {"context": "s"},
        {"code": "c", "status": "USER_DECLINED", "context": "s"},
        {"code": "c", "error": "server_error", "context": "s"},
    ],
)
def test_poynt_recognizable_denials_and_missing_codes_are_denials(
    keypair: tuple[rsa.RSAPrivateKey, str], params: dict[str, str]
) -> None:
    assert poynt({}, keypair[1])[0].read_callback(params).denied


def test_token_calls_share_the_deadline_and_none_starts_after_it() -> None:
    # Given a callback with 3 s left before its shared deadline
    clock = FakeClock(100.0)
    seen: list[Any] = []

    def token(req: requests.PreparedRequest) -> Reply:
        clock.sleep(2.8)  # the token endpoint answers slowly
        return token_ok(req)

    oauth, http = clover(
        {("POST", "/oauth/v2/token"): token, ("GET", "/v3/merchants/ABCDEFGHJK123"): merchant}
    )
    real_send = http.send

    def send(request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        seen.append(kwargs.get("timeout"))
        return real_send(request, *args, **kwargs)

    http.send = send  # type: ignore[method-assign]
    # When the exchange runs under that deadline
    with deadline(103.0, clock), pytest.raises(ProviderError, match="deadline"):
        oauth.exchange_code(CallbackParams("s", "c0de", merchant_id="ABCDEFGHJK123"), "https://x/cb")
    # Then the token POST's timeouts were cut to the 3 s left, and the merchant check (0.2 s
    # left) was never started
    assert seen == [(3.0, 3.0)]
    assert len(http.sent) == 1
