"""Poynt sandbox: consent, the /token grants (JWT bearer verification, code, refresh), merchant
tokens, and the orders API (paging links, filters, limits, access rules)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import jwt
import pytest
import requests

from posync_local.sandbox import PoyntSandbox
from posync_local.sandbox.client import (
    DEFAULT_REDIRECT,
    poynt_assertion,
    poynt_code,
    poynt_connect,
    poynt_headers,
    query_of,
)
from posync_local.sandbox.data import iso_ms
from posync_local.sandbox.keys import app_assertion, generate_rsa_keypair
from posync_local.sandbox.poynt import JWT_BEARER, PUBLIC_AUDIENCE

pytestmark = pytest.mark.integration


def app_token(poynt: PoyntSandbox, assertion: str) -> requests.Response:
    return requests.post(
        f"{poynt.url}/token", data={"grantType": JWT_BEARER, "assertion": assertion}, timeout=10
    )


def orders(poynt: PoyntSandbox, bid: str, token: str, **params: Any) -> requests.Response:
    headers = poynt_headers(token)
    headers.update(params.pop("headers", {}))
    return requests.get(f"{poynt.url}/businesses/{bid}/orders", params=params, headers=headers, timeout=30)


# consent ------------------------------------------------------------------------------------------


def test_consent_page_and_approve_redirect(poynt: PoyntSandbox, http: requests.Session) -> None:
    bid = poynt.add_merchant(orders=1)
    params = {"client_id": poynt.app_id, "redirect_uri": DEFAULT_REDIRECT, "context": "signed-state"}
    page = http.get(f"{poynt.url}/applications/authorize", params=params)
    assert page.status_code == 200
    assert 'id="approve"' in page.text
    assert 'id="deny"' in page.text
    assert f'<option value="{bid}" selected>' in page.text
    r = http.post(
        f"{poynt.url}/applications/authorize",
        data={**params, "business_id": bid, "decision": "approve"},
        allow_redirects=False,
    )
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["status"] == "success"
    assert q["context"] == "signed-state"
    assert q["businessId"] == bid
    assert q["code"]


def test_consent_deny_and_the_auto_knobs(poynt: PoyntSandbox, http: requests.Session) -> None:
    bid = poynt.add_merchant(orders=1)
    params = {"client_id": poynt.app_id, "redirect_uri": DEFAULT_REDIRECT, "context": "c1"}
    r = http.post(
        f"{poynt.url}/applications/authorize",
        data={**params, "business_id": bid, "decision": "deny"},
        allow_redirects=False,
    )
    assert r.status_code == 302
    assert query_of(r.headers["Location"]) == {"status": "denied", "context": "c1"}
    poynt.knobs.auto_approve = True
    r = http.get(f"{poynt.url}/applications/authorize", params=params, allow_redirects=False)
    assert query_of(r.headers["Location"])["status"] == "success"
    poynt.knobs.auto_approve = False
    poynt.knobs.auto_deny = True
    r = http.get(f"{poynt.url}/applications/authorize", params=params, allow_redirects=False)
    assert query_of(r.headers["Location"])["status"] == "denied"


def test_unknown_application_gets_a_400_page(poynt: PoyntSandbox, http: requests.Session) -> None:
    r = http.get(
        f"{poynt.url}/applications/authorize",
        params={"client_id": "urn:aid:nope", "redirect_uri": DEFAULT_REDIRECT},
    )
    assert r.status_code == 400
    assert "Unknown application" in r.text


# the JWT bearer grant -----------------------------------------------------------------------------


def test_a_good_self_signed_jwt_gets_an_app_token(poynt: PoyntSandbox) -> None:
    r = app_token(poynt, poynt_assertion(poynt))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"accessToken", "refreshToken", "expiresIn", "scope", "tokenType"}
    assert body["expiresIn"] == 86400
    assert body["tokenType"] == "BEARER"
    # Poynt's public API base is an accepted audience too
    assert app_token(poynt, poynt_assertion(poynt, audience=PUBLIC_AUDIENCE)).status_code == 200
    assert poynt.stats.app_token_grants == 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad signature", "invalid signature"),
        ("wrong aud", "invalid audience"),
        ("exp - iat over 300 s", "at most 300 seconds"),
        ("expired", "JWT expired"),
        ("sub differs from iss", "sub must equal iss"),
        ("unknown app", "unknown application"),
        ("not a JWT", "malformed JWT"),
    ],
)
def test_bad_self_signed_jwts_are_refused(poynt: PoyntSandbox, case: str, reason: str) -> None:
    now = int(time.time())
    if case == "bad signature":
        other_key, _ = generate_rsa_keypair()
        assertion = app_assertion(poynt.app_id, other_key, poynt.url)
    elif case == "wrong aud":
        assertion = poynt_assertion(poynt, audience="https://example.com")
    elif case == "exp - iat over 300 s":
        assertion = poynt_assertion(poynt, ttl_s=301)
    elif case == "expired":
        assertion = poynt_assertion(poynt, iat=now - 400, ttl_s=300)
    elif case == "sub differs from iss":
        assertion = poynt_assertion(poynt, extra={"sub": "urn:aid:someone-else"})
    elif case == "unknown app":
        assertion = app_assertion("urn:aid:unknown", poynt.app_private_key_pem, poynt.url)
    else:
        assertion = "not.a.jwt"
    r = app_token(poynt, assertion)
    assert r.status_code == 401
    body = r.json()
    assert body["code"] == "UNAUTHORIZED"
    assert reason in body["developerMessage"]
    assert assertion not in r.text


def test_a_jti_works_once(poynt: PoyntSandbox) -> None:
    assertion = poynt_assertion(poynt, jti=str(uuid.uuid4()))
    assert app_token(poynt, assertion).status_code == 200
    replay = app_token(poynt, assertion)
    assert replay.status_code == 401
    assert "jti already used" in replay.json()["developerMessage"]


def test_a_registered_app_can_use_its_own_key(poynt: PoyntSandbox) -> None:
    private, public = generate_rsa_keypair()
    poynt.register_app("urn:aid:second-app", public)
    assert app_token(poynt, app_assertion("urn:aid:second-app", private, poynt.url)).status_code == 200


# the authorization code grant and merchant tokens -------------------------------------------------


def test_the_merchant_access_token_is_a_jwt_carrying_the_business_id(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=2)
    tokens = poynt_connect(poynt, bid)
    claims = jwt.decode(
        tokens["accessToken"],
        poynt.public_key_pem,
        algorithms=["RS256"],
        audience=poynt.app_id,
        issuer=poynt.url,
    )
    assert claims["poynt.biz"] == bid
    assert claims["sub"] == poynt.app_id
    assert isinstance(claims["poynt.uid"], int)
    assert claims["exp"] - claims["iat"] == 86400
    assert {"jti", "iat", "exp"} <= set(claims)
    assert tokens["refreshToken"] not in tokens["accessToken"]
    assert poynt.stats.token_exchanges == 1


def test_code_exchange_checks_the_app_jwt_client_id_redirect_and_single_use(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=1)
    code = poynt_code(poynt, bid)
    url = f"{poynt.url}/token"
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": poynt.app_id,
        "redirect_uri": DEFAULT_REDIRECT,
    }
    no_jwt = requests.post(url, data=form, timeout=10)
    assert no_jwt.status_code == 401
    wrong_redirect = requests.post(
        url,
        data={**form, "redirect_uri": "http://127.0.0.1:9/other"},
        headers={"Authorization": f"Bearer {poynt_assertion(poynt)}"},
        timeout=10,
    )
    assert wrong_redirect.status_code == 400
    assert "invalid_grant" in wrong_redirect.text
    ok = requests.post(
        url, data=form, headers={"Authorization": f"Bearer {poynt_assertion(poynt)}"}, timeout=10
    )
    assert ok.status_code == 200
    again = requests.post(
        url, data=form, headers={"Authorization": f"Bearer {poynt_assertion(poynt)}"}, timeout=10
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_refresh_rotates_and_the_old_refresh_token_dies(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=2)
    first = poynt_connect(poynt, bid)
    url = f"{poynt.url}/token"
    r1 = requests.post(
        url, data={"grantType": "REFRESH_TOKEN", "refreshToken": first["refreshToken"]}, timeout=10
    )
    assert r1.status_code == 200
    second = r1.json()
    assert jwt.decode(second["accessToken"], options={"verify_signature": False})["poynt.biz"] == bid
    r2 = requests.post(
        url, data={"grantType": "REFRESH_TOKEN", "refreshToken": first["refreshToken"]}, timeout=10
    )
    assert r2.status_code == 400
    assert "invalid_grant" in r2.text
    assert orders(poynt, bid, second["accessToken"]).status_code == 200
    assert poynt.stats.refreshes[bid] == 1
    assert poynt.stats.refresh_calls[bid] == 2


def test_forced_expiry_and_revoke(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=2)
    tokens = poynt_connect(poynt, bid)
    poynt.expire_access_tokens(bid)
    assert orders(poynt, bid, tokens["accessToken"]).status_code == 401
    refreshed = requests.post(
        f"{poynt.url}/token",
        data={"grantType": "REFRESH_TOKEN", "refreshToken": tokens["refreshToken"]},
        timeout=10,
    ).json()
    assert orders(poynt, bid, refreshed["accessToken"]).status_code == 200
    poynt.revoke(bid)
    assert orders(poynt, bid, refreshed["accessToken"]).status_code == 401
    r = requests.post(
        f"{poynt.url}/token",
        data={"grantType": "REFRESH_TOKEN", "refreshToken": refreshed["refreshToken"]},
        timeout=10,
    )
    assert r.status_code == 400
    assert "invalid_grant" in r.text


# orders -------------------------------------------------------------------------------------------


def test_orders_need_a_token_for_that_business(poynt: PoyntSandbox) -> None:
    mine = poynt.add_merchant(orders=3)
    other = poynt.add_merchant(orders=3)
    tokens = poynt_connect(poynt, mine)
    assert orders(poynt, mine, tokens["accessToken"]).status_code == 200
    wrong = orders(poynt, other, tokens["accessToken"])
    assert wrong.status_code == 403
    assert wrong.json()["code"] == "FORBIDDEN"
    none = requests.get(f"{poynt.url}/businesses/{mine}/orders", timeout=10)
    assert none.status_code == 401
    assert none.json()["code"] == "UNAUTHORIZED"
    # an app token opens the businesses that authorized the app, and no others
    app = app_token(poynt, poynt_assertion(poynt)).json()["accessToken"]
    assert orders(poynt, mine, app).status_code == 200
    assert orders(poynt, other, app).status_code == 403


def test_following_links_pages_every_order_in_updated_order(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=250, currency="GBP")
    token = poynt_connect(poynt, bid)["accessToken"]
    first = orders(poynt, bid, token, limit=100)
    body = first.json()
    assert body["count"] == 250
    got = body["orders"]
    links = body["links"]
    while links:
        (link,) = links
        assert link["rel"] == "next"
        assert link["method"] == "GET"
        r = requests.get(poynt.url + link["href"], headers=poynt_headers(token), timeout=10)
        got += r.json()["orders"]
        links = r.json()["links"]
    truth = poynt.orders(bid)
    assert [o["id"] for o in got] == [o["id"] for o in truth]
    assert got == truth
    keys = [(o["updatedAt"], o["id"]) for o in got]
    assert keys == sorted(keys)


def test_default_and_maximum_limits(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=150)
    token = poynt_connect(poynt, bid)["accessToken"]
    assert len(orders(poynt, bid, token).json()["orders"]) == 10
    assert len(orders(poynt, bid, token, limit=500).json()["orders"]) == 100
    last = orders(poynt, bid, token, limit=100, startOffset=100).json()
    assert len(last["orders"]) == 50
    assert last["links"] == []


def test_start_end_and_if_modified_since_filter_on_updated_at(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=200, days=30)
    token = poynt_connect(poynt, bid)["accessToken"]
    truth = poynt.orders(bid)
    start, end = truth[40]["updatedAt"], truth[120]["updatedAt"]
    got = orders(poynt, bid, token, startAt=start, endAt=end, limit=100).json()
    assert [o["id"] for o in got["orders"]] == [o["id"] for o in truth if start <= o["updatedAt"] < end]
    assert got["count"] == len([o for o in truth if start <= o["updatedAt"] < end])
    since = datetime.fromisoformat(truth[150]["updatedAt"].replace("Z", "+00:00")).replace(microsecond=0)
    ims = orders(
        poynt,
        bid,
        token,
        limit=100,
        headers={"If-Modified-Since": format_datetime(since.astimezone(UTC), usegmt=True)},
    ).json()
    floor = iso_ms(int(since.timestamp() * 1000))
    assert [o["id"] for o in ims["orders"]] == [o["id"] for o in truth if o["updatedAt"] >= floor]
    assert orders(poynt, bid, token, startAt="yesterday").status_code == 400


def test_missing_api_version_is_served_and_counted(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=3)
    token = poynt_connect(poynt, bid)["accessToken"]
    r = requests.get(
        f"{poynt.url}/businesses/{bid}/orders", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200
    assert poynt.stats.missing_api_version == 1
    assert orders(poynt, bid, token).status_code == 200
    assert poynt.stats.missing_api_version == 1


def test_single_order_and_business(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=3, currency="CAD")
    token = poynt_connect(poynt, bid)["accessToken"]
    truth = poynt.orders(bid)[0]
    r = requests.get(
        f"{poynt.url}/businesses/{bid}/orders/{truth['id']}", headers=poynt_headers(token), timeout=10
    )
    assert r.json() == truth
    missing = requests.get(
        f"{poynt.url}/businesses/{bid}/orders/{uuid.uuid4()}", headers=poynt_headers(token), timeout=10
    )
    assert missing.status_code == 404
    biz = requests.get(f"{poynt.url}/businesses/{bid}", headers=poynt_headers(token), timeout=10).json()
    assert biz["id"] == bid
    assert biz["stores"][0]["currency"] == "CAD"


def test_a_naive_link_follower_misses_orders_modified_while_paging(poynt: PoyntSandbox) -> None:
    # Given orders in a window ending before now, and 3 orders modified after every page
    bid = poynt.add_merchant(orders=120, days=20)
    token = poynt_connect(poynt, bid)["accessToken"]
    end = iso_ms(time.time_ns() // 1_000_000 - 1)
    window = [o["id"] for o in poynt.orders(bid) if o["updatedAt"] < end]
    poynt.knobs.modify_during_paging = 3
    # When a client follows the next links
    body = orders(poynt, bid, token, endAt=end, limit=30).json()
    seen = [o["id"] for o in body["orders"]]
    pages = 1
    while body["links"]:
        body = requests.get(
            poynt.url + body["links"][0]["href"], headers=poynt_headers(token), timeout=10
        ).json()
        seen += [o["id"] for o in body["orders"]]
        pages += 1
    # Then it misses 3 orders per link it followed, and a re-read without endAt finds them all
    assert len(set(window) - set(seen)) == 3 * (pages - 1)
    poynt.knobs.modify_during_paging = 0
    everything = orders(poynt, bid, token, limit=100, startOffset=0).json()["count"]
    assert everything == len(window)


# profiles, changes to older orders, on-terminal installs ---------------------------------------


@pytest.fixture
def profiled(poynt: PoyntSandbox) -> Any:
    from posync_local.sandbox.poynt import DEFAULT_PROFILE

    yield poynt
    poynt.use_profile(DEFAULT_PROFILE)


@pytest.mark.parametrize(
    ("profile", "status", "deny"),
    [
        ("guessed", "success", {"status": "denied"}),
        ("sdk", "AUTHORIZED", {"status": "DENIED"}),
        ("sparse", None, {"error": "access_denied"}),
        ("newest-first", "OK", {"status": "CANCELED"}),
    ],
)
def test_each_profile_spells_the_consent_status_its_way_and_the_code_carries_the_business(
    profiled: PoyntSandbox, profile: str, status: str | None, deny: dict[str, str]
) -> None:
    profiled.use_profile(profile)
    bid = profiled.add_merchant(orders=1)
    form = {
        "client_id": profiled.app_id,
        "redirect_uri": DEFAULT_REDIRECT,
        "context": "c",
        "business_id": bid,
    }
    ok = requests.post(
        f"{profiled.url}/applications/authorize",
        data={**form, "decision": "approve"},
        allow_redirects=False,
        timeout=10,
    )
    q = query_of(ok.headers["Location"])
    assert q.get("status") == status
    assert jwt.decode(q["code"], options={"verify_signature": False})["poynt.biz"] == bid
    no = requests.post(
        f"{profiled.url}/applications/authorize",
        data={**form, "decision": "deny"},
        allow_redirects=False,
        timeout=10,
    )
    nq = query_of(no.headers["Location"])
    assert "code" not in nq
    assert {k: nq[k] for k in deny} == deny


@pytest.mark.parametrize("profile", ["guessed", "sdk", "sparse", "newest-first"])
def test_each_profile_filters_orders_and_links_pages_its_way(profiled: PoyntSandbox, profile: str) -> None:
    profiled.use_profile(profile)
    prof = profiled.profile
    bid = profiled.add_merchant(orders=30, days=10)
    token = poynt_connect(profiled, bid)["accessToken"]
    truth = profiled.orders(bid)
    # the rows come in the profile's order, with its link rel (or none)
    body = orders(profiled, bid, token, limit=10).json()
    rels = [x["rel"] for x in body["links"]]
    assert rels == ([prof.link_rel] if prof.link_rel else [])
    # startAt/endAt filter the profile's field: an order changed now is found by its new
    # updatedAt only where they filter update time
    old = min(truth, key=lambda o: o["createdAt"])["id"]
    profiled.modify_orders(bid, [old])
    now = datetime.now(UTC)
    window = {
        "startAt": iso_ms(int(now.timestamp() * 1000) - 60_000),
        "endAt": iso_ms(int(now.timestamp() * 1000) + 60_000),
    }
    ids = [o["id"] for o in orders(profiled, bid, token, limit=100, **window).json()["orders"]]
    assert (old in ids) == (prof.window_field == "modified")
    # If-Modified-Since filters update time under every profile, and a 304 says nothing changed
    since = now.replace(microsecond=0) - timedelta(seconds=30)
    ims = format_datetime(since, usegmt=True)
    r = orders(profiled, bid, token, limit=100, headers={"If-Modified-Since": ims})
    # (the generated orders may include some updated in those 30 s too: all of them, and old)
    recent = {
        o["id"]
        for o in profiled.orders(bid)
        if datetime.fromisoformat(o["updatedAt"].replace("Z", "+00:00")) >= since
    }
    assert old in recent
    assert sorted(o["id"] for o in r.json()["orders"]) == sorted(recent)
    later = format_datetime(now.replace(microsecond=0) + timedelta(hours=1), usegmt=True)
    assert orders(profiled, bid, token, headers={"If-Modified-Since": later}).status_code == 304


def test_cancel_refund_and_strip_item_ids_are_new_versions(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=40, days=10)
    paid = [
        o
        for o in poynt.orders(bid)
        if o["amounts"].get("capturedTotals") and o["statuses"]["status"] == "COMPLETED"
    ]
    a, b, c = paid[0], paid[1], paid[2]
    poynt.cancel_order(bid, a["id"])
    poynt.refund_order(bid, b["id"], 5)
    poynt.strip_item_ids(bid, c["id"])
    na, nb, nc = (poynt.order(bid, o["id"]) for o in (a, b, c))
    assert na["statuses"]["status"] == "CANCELLED" and "capturedTotals" not in na["amounts"]
    assert all(
        t["status"] == "VOIDED" for t in na["transactions"] if t["action"] in ("SALE", "CAPTURE", "AUTHORIZE")
    )
    assert nb["amounts"]["refundedTotals"]["orderAmount"] == 5
    assert (
        nb["transactions"][-1]["action"] == "REFUND"
        and nb["statuses"]["transactionStatusSummary"] == "PARTIALLY_REFUNDED"
    )
    assert all("id" not in it for it in nc["items"])
    for new, was in ((na, a), (nb, b), (nc, c)):
        assert new["updatedAt"] > was["updatedAt"]
    token = poynt_connect(poynt, bid)["accessToken"]
    served = {o["id"]: o for o in orders(poynt, bid, token, limit=100).json()["orders"]}
    assert served[a["id"]] == na and served[b["id"]] == nb and served[c["id"]] == nc
    with pytest.raises(ValueError, match="paid"):
        poynt.refund_order(bid, a["id"])


def test_installs_open_the_business_to_the_app_token_and_the_billing_list(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=2)
    app = app_token(poynt, poynt_assertion(poynt)).json()["accessToken"]
    assert orders(poynt, bid, app).status_code == 403
    sub = poynt.install_app(bid)
    assert orders(poynt, bid, app).status_code == 200
    listed = requests.get(
        f"{poynt.url}/apps/{poynt.app_id}/subscriptions",
        headers={"Authorization": f"Bearer {app}"},
        timeout=10,
    ).json()
    assert sub in listed["list"] and listed["total"] == len(listed["list"]) and sub["status"] == "ACTIVE"
    poynt.uninstall_app(bid)
    assert orders(poynt, bid, app).status_code == 403


def test_app_level_knobs_refuse_the_apps_jwt(poynt: PoyntSandbox) -> None:
    def assertion() -> str:
        return poynt_assertion(poynt, ttl_s=240)

    def grant(jwt_: str) -> requests.Response:
        return app_token(poynt, jwt_)

    assert grant(assertion()).status_code == 200
    # a wrong aud for the region
    poynt.knobs.jwt_audience = "https://services-eu.poynt.net"
    r = grant(assertion())
    assert (r.status_code, r.json()["message"]) == (401, "invalid audience")
    poynt.knobs.jwt_audience = None
    # our clock 10 minutes behind the provider's
    poynt.knobs.clock_skew_s = 600
    assert grant(assertion()).json()["message"] == "JWT expired"
    poynt.knobs.clock_skew_s = 0
    # a rotated key pair
    registered = poynt.apps[poynt.app_id]
    poynt.rotate_app_key()
    try:
        assert grant(assertion()).json()["message"] == "invalid signature"
    finally:
        poynt.apps[poynt.app_id] = registered  # the module's sandbox is shared


def test_a_refresh_jwt_is_ignored_or_verified_by_profile(poynt: PoyntSandbox) -> None:
    mid = poynt.add_merchant(orders=1)
    first = poynt_connect(poynt, mid)

    def refresh(token: str) -> requests.Response:
        return requests.post(
            f"{poynt.url}/token",
            data={"grantType": "REFRESH_TOKEN", "refreshToken": token},
            headers={"Authorization": "Bearer not-a-jwt"},
            timeout=10,
        )

    r = refresh(first["refreshToken"])
    assert r.status_code == 200  # "ignored": Poynt documents no client authentication here
    poynt.knobs.refresh_client_auth = "verified"
    r2 = refresh(r.json()["refreshToken"])
    assert (r2.status_code, r2.json()["code"]) == (401, "UNAUTHORIZED")


def test_the_reuse_knob_lets_a_used_refresh_token_keep_working(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=1)
    first = poynt_connect(poynt, bid)
    poynt.knobs.refresh_reuse = "survives"

    def refresh(token: str) -> requests.Response:
        return requests.post(
            f"{poynt.url}/token", data={"grantType": "REFRESH_TOKEN", "refreshToken": token}, timeout=10
        )

    second = refresh(first["refreshToken"])
    again = refresh(first["refreshToken"])
    assert (second.status_code, again.status_code) == (200, 200)
    assert second.json()["refreshToken"] != again.json()["refreshToken"]
    poynt.revoke(bid)
    assert refresh(first["refreshToken"]).status_code == 400
