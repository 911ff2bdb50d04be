"""Clover sandbox OAuth: consent page, code exchange (secret and PKCE), refresh rotation, expiry, revoke."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable

import pytest
import requests

from posync_local.sandbox import CloverSandbox
from posync_local.sandbox.client import DEFAULT_REDIRECT, bearer, clover_code, clover_connect, query_of

pytestmark = pytest.mark.integration


def orders_status(clover: CloverSandbox, mid: str, token: str) -> int:
    return requests.get(
        f"{clover.url}/v3/merchants/{mid}/orders", headers=bearer(token), timeout=10
    ).status_code


def refresh(clover: CloverSandbox, refresh_token: str) -> requests.Response:
    return requests.post(
        f"{clover.url}/oauth/v2/refresh",
        json={"client_id": clover.client_id, "refresh_token": refresh_token},
        timeout=10,
    )


def test_consent_page_shows_merchants_and_both_buttons(clover: CloverSandbox, http: requests.Session) -> None:
    # Given two merchants
    first = clover.add_merchant(orders=1)
    second = clover.add_merchant(orders=1)
    # When the authorize page is opened for the second one
    r = http.get(
        f"{clover.url}/oauth/v2/authorize",
        params={
            "client_id": clover.client_id,
            "redirect_uri": DEFAULT_REDIRECT,
            "state": "xyz",
            "merchant_id": second,
        },
    )
    # Then it is an HTML form with Approve and Deny, the second merchant preselected
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert '<button id="approve" name="decision" value="approve"' in r.text
    assert '<button id="deny" name="decision" value="deny"' in r.text
    assert f'<option value="{second}" selected>' in r.text
    assert f'<option value="{first}">' in r.text
    assert 'value="xyz"' in r.text


def test_unknown_client_id_gets_a_400_page(clover: CloverSandbox, http: requests.Session) -> None:
    r = http.get(
        f"{clover.url}/oauth/v2/authorize",
        params={"client_id": "NOSUCHAPP0000", "redirect_uri": DEFAULT_REDIRECT, "state": "s"},
    )
    assert r.status_code == 400
    assert "Unknown app" in r.text


def test_the_authorize_page_creates_a_merchant_when_there_is_none(
    make_clover: Callable[..., CloverSandbox], http: requests.Session
) -> None:
    clover = make_clover()
    assert clover.merchants == []
    r = http.get(
        f"{clover.url}/oauth/v2/authorize",
        params={"client_id": clover.client_id, "redirect_uri": DEFAULT_REDIRECT},
    )
    assert r.status_code == 200
    assert len(clover.merchants) == 1
    assert clover.merchants[0] in r.text


def test_approve_redirects_with_merchant_client_code_and_state(
    clover: CloverSandbox, http: requests.Session
) -> None:
    mid = clover.add_merchant(orders=1)
    r = http.post(
        f"{clover.url}/oauth/v2/authorize",
        data={
            "client_id": clover.client_id,
            "redirect_uri": f"{DEFAULT_REDIRECT}?keep=1",
            "state": "st@te/1",
            "merchant_id": mid,
            "decision": "approve",
        },
        allow_redirects=False,
    )
    assert r.status_code == 302
    loc = r.headers["Location"]
    assert loc.startswith(f"{DEFAULT_REDIRECT}?keep=1&")
    q = query_of(loc)
    assert q["merchant_id"] == mid
    assert q["client_id"] == clover.client_id
    assert q["state"] == "st@te/1"
    assert len(q["code"]) >= 20
    assert q["employee_id"] == clover.merchant(mid).profile.employees[0]


def test_deny_redirects_with_access_denied(clover: CloverSandbox, http: requests.Session) -> None:
    mid = clover.add_merchant(orders=1)
    r = http.post(
        f"{clover.url}/oauth/v2/authorize",
        data={
            "client_id": clover.client_id,
            "redirect_uri": DEFAULT_REDIRECT,
            "state": "s9",
            "merchant_id": mid,
            "decision": "deny",
        },
        allow_redirects=False,
    )
    assert r.status_code == 302
    assert query_of(r.headers["Location"]) == {"error": "access_denied", "state": "s9"}


def test_auto_approve_and_auto_deny_knobs_redirect_at_once(
    make_clover: Callable[..., CloverSandbox], http: requests.Session
) -> None:
    clover = make_clover()
    mid = clover.add_merchant(orders=1)
    other = clover.add_merchant(orders=1)
    params = {
        "client_id": clover.client_id,
        "redirect_uri": DEFAULT_REDIRECT,
        "state": "a",
        "merchant_id": other,
    }
    clover.knobs.auto_approve = True
    r = http.get(f"{clover.url}/oauth/v2/authorize", params=params, allow_redirects=False)
    assert r.status_code == 302
    assert query_of(r.headers["Location"])["merchant_id"] == other
    del params["merchant_id"]
    r = http.get(f"{clover.url}/oauth/v2/authorize", params=params, allow_redirects=False)
    assert query_of(r.headers["Location"])["merchant_id"] == mid  # the first merchant by default
    clover.knobs.auto_approve = False
    clover.knobs.auto_deny = True
    r = http.get(f"{clover.url}/oauth/v2/authorize", params=params, allow_redirects=False)
    assert r.status_code == 302
    assert query_of(r.headers["Location"])["error"] == "access_denied"


def test_code_exchange_gives_tokens_with_expirations(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=3)
    before = int(time.time())
    tokens = clover_connect(clover, mid)
    assert set(tokens) == {
        "access_token",
        "access_token_expiration",
        "refresh_token",
        "refresh_token_expiration",
    }
    assert before + 1800 <= tokens["access_token_expiration"] <= int(time.time()) + 1800
    assert tokens["refresh_token_expiration"] >= before + 365 * 86400
    assert orders_status(clover, mid, tokens["access_token"]) == 200
    assert clover.stats.token_exchanges == 1


def test_a_code_works_once_and_only_with_the_right_secret(
    clover: CloverSandbox, http: requests.Session
) -> None:
    mid = clover.add_merchant(orders=1)
    code = clover_code(clover, mid)
    url = f"{clover.url}/oauth/v2/token"
    wrong = http.post(url, json={"client_id": clover.client_id, "client_secret": "wrong", "code": code})
    assert wrong.status_code == 401
    assert "message" in wrong.json()
    # a wrong secret does not burn the code
    ok = http.post(
        url, json={"client_id": clover.client_id, "client_secret": clover.client_secret, "code": code}
    )
    assert ok.status_code == 200
    again = http.post(
        url, json={"client_id": clover.client_id, "client_secret": clover.client_secret, "code": code}
    )
    assert again.status_code == 401
    bogus = http.post(
        url, json={"client_id": clover.client_id, "client_secret": clover.client_secret, "code": "nope"}
    )
    assert bogus.status_code == 401


def test_a_code_expires_after_ten_minutes(clover: CloverSandbox, http: requests.Session) -> None:
    mid = clover.add_merchant(orders=1)
    code = clover_code(clover, mid)
    rec = clover.codes.peek(code)
    assert rec is not None
    assert 599 <= rec.expires_at - time.time() <= 600
    rec.expires_at = time.time() - 1  # ten minutes later
    r = http.post(
        f"{clover.url}/oauth/v2/token",
        json={"client_id": clover.client_id, "client_secret": clover.client_secret, "code": code},
    )
    assert r.status_code == 401


def test_a_code_is_bound_to_its_app(clover: CloverSandbox, http: requests.Session) -> None:
    mid = clover.add_merchant(orders=1)
    clover.add_app("OTHERAPP00000", "other-secret")
    code = clover_code(clover, mid)
    r = http.post(
        f"{clover.url}/oauth/v2/token",
        json={"client_id": "OTHERAPP00000", "client_secret": "other-secret", "code": code},
    )
    assert r.status_code == 401


def test_pkce_exchange_uses_the_verifier_instead_of_the_secret(
    clover: CloverSandbox, http: requests.Session
) -> None:
    mid = clover.add_merchant(orders=1)
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    code = clover_code(clover, mid, code_challenge=challenge, code_challenge_method="S256")
    url = f"{clover.url}/oauth/v2/token"
    bad = http.post(url, json={"client_id": clover.client_id, "code": code, "code_verifier": "w" * 50})
    assert bad.status_code == 401
    good = http.post(url, json={"client_id": clover.client_id, "code": code, "code_verifier": verifier})
    assert good.status_code == 200
    assert orders_status(clover, mid, good.json()["access_token"]) == 200


def test_an_app_with_a_site_url_only_redirects_under_it(
    clover: CloverSandbox, http: requests.Session
) -> None:
    clover.add_merchant(orders=1)
    clover.add_app("SITEAPP000000", "s", site_url="https://app.example.com/")
    ok = http.get(
        f"{clover.url}/oauth/v2/authorize",
        params={"client_id": "SITEAPP000000", "redirect_uri": "https://app.example.com/cb"},
    )
    bad = http.get(
        f"{clover.url}/oauth/v2/authorize",
        params={"client_id": "SITEAPP000000", "redirect_uri": "https://evil.example/cb"},
    )
    assert ok.status_code == 200
    assert bad.status_code == 400


def test_a_refresh_token_works_once(clover: CloverSandbox) -> None:
    # Given a connected merchant
    mid = clover.add_merchant(orders=2)
    first = clover_connect(clover, mid)
    # When its refresh token is used
    r1 = refresh(clover, first["refresh_token"])
    assert r1.status_code == 200
    second = r1.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    # Then using it again is refused
    r2 = refresh(clover, first["refresh_token"])
    assert r2.status_code == 401
    assert r2.json() == {"message": "Invalid refresh token"}
    # And the new pair works, while the old access token stays valid until it expires
    assert orders_status(clover, mid, second["access_token"]) == 200
    assert orders_status(clover, mid, first["access_token"]) == 200
    r3 = refresh(clover, second["refresh_token"])
    assert r3.status_code == 200
    assert clover.stats.refreshes[mid] == 2
    assert clover.stats.refresh_calls[mid] == 3


def test_refresh_needs_the_right_client_id(clover: CloverSandbox, http: requests.Session) -> None:
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    r = http.post(
        f"{clover.url}/oauth/v2/refresh",
        json={"client_id": "SOMEONEELSE00", "refresh_token": tokens["refresh_token"]},
    )
    assert r.status_code == 401
    assert refresh(clover, tokens["refresh_token"]).status_code == 200  # not burnt by the bad call


def test_early_refresh_is_refused_while_the_access_token_has_time_left(clover: CloverSandbox) -> None:
    # Given the knob that makes Clover refuse early refreshes
    clover.knobs.refuse_early_refresh = True
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    # When refreshing with 30 minutes left
    r = refresh(clover, tokens["refresh_token"])
    # Then it is refused, and the refresh token is not spent
    assert r.status_code == 400
    assert r.json() == {"message": "access_token not expired"}
    # When the access token has expired, the same refresh token works
    clover.expire_access_tokens(mid)
    assert refresh(clover, tokens["refresh_token"]).status_code == 200


def test_forced_expiry_gives_401_and_a_refresh_fixes_it(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    assert clover.expire_access_tokens(mid) == 1
    assert orders_status(clover, mid, tokens["access_token"]) == 401
    new = refresh(clover, tokens["refresh_token"]).json()
    assert orders_status(clover, mid, new["access_token"]) == 200


def test_access_ttl_knob_sets_the_lifetime(clover: CloverSandbox) -> None:
    clover.knobs.access_ttl_s = 1
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    assert tokens["access_token_expiration"] - time.time() <= 1.5
    assert orders_status(clover, mid, tokens["access_token"]) == 200
    time.sleep(1.1)
    assert orders_status(clover, mid, tokens["access_token"]) == 401


def test_refresh_ttl_knob_expires_refresh_tokens(clover: CloverSandbox) -> None:
    clover.knobs.refresh_ttl_s = 0
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    r = refresh(clover, tokens["refresh_token"])
    assert r.status_code == 401
    assert r.json() == {"message": "Refresh token expired"}


def test_revoke_ends_api_access_and_refresh_until_reconnect(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mid)
    clover.revoke(mid)
    assert orders_status(clover, mid, tokens["access_token"]) == 401
    assert refresh(clover, tokens["refresh_token"]).status_code == 401
    again = clover_connect(clover, mid)
    assert orders_status(clover, mid, again["access_token"]) == 200


def test_a_token_only_opens_its_own_merchant(clover: CloverSandbox) -> None:
    mine = clover.add_merchant(orders=1)
    other = clover.add_merchant(orders=1)
    tokens = clover_connect(clover, mine)
    assert orders_status(clover, other, tokens["access_token"]) == 401
    r = requests.get(f"{clover.url}/v3/merchants/{mine}/orders", timeout=10)
    assert r.status_code == 401
    assert r.json() == {"message": "401 Unauthorized"}


def recover(clover: CloverSandbox, recovery_token: str, secret: str | None = None) -> requests.Response:
    return requests.post(
        f"{clover.url}/oauth/v2/recovery",
        json={
            "client_id": clover.client_id,
            "client_secret": secret or clover.client_secret,
            "recovery_token": recovery_token,
        },
        timeout=10,
    )


def test_recovery_mends_a_refresh_whose_reply_was_lost(clover: CloverSandbox) -> None:
    # Given a refresh whose reply never arrived: r0 spent, r1 issued but unknown to the app
    mid = clover.add_merchant(orders=1)
    first = clover_connect(clover, mid)
    lost = refresh(clover, first["refresh_token"]).json()
    # When the app recovers with the spent token (the one immediately preceding the lost one)
    r = recover(clover, first["refresh_token"])
    # Then it gets a new pair, and the lost refresh token is dead
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "access_token",
        "access_token_expiration",
        "refresh_token",
        "refresh_token_expiration",
    }
    assert orders_status(clover, mid, body["access_token"]) == 200
    assert refresh(clover, lost["refresh_token"]).status_code == 401
    assert refresh(clover, body["refresh_token"]).status_code == 200
    assert clover.stats.recoveries[mid] == 1


def test_recovery_is_refused_once_the_lost_token_was_used_or_two_weeks_passed(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1)
    first = clover_connect(clover, mid)
    second = refresh(clover, first["refresh_token"]).json()
    # The current refresh token was used: it is not lost, so its predecessor recovers nothing
    refresh(clover, second["refresh_token"])
    assert recover(clover, first["refresh_token"]).status_code == 401
    # Only the immediately preceding token recovers; an older one does not
    third = clover_connect(clover, mid)
    refresh(clover, third["refresh_token"])
    clover.knobs.recovery_window_s = 0
    assert recover(clover, third["refresh_token"]).json() == {"message": "Invalid recovery token"}
    # And a live, unused refresh token is not a recovery token
    clover.knobs.recovery_window_s = 14 * 86400
    fresh = clover_connect(clover, mid)
    assert recover(clover, fresh["refresh_token"]).status_code == 401


def test_recovery_needs_the_app_secret_and_a_high_trust_app(clover: CloverSandbox) -> None:
    mid = clover.add_merchant(orders=1)
    first = clover_connect(clover, mid)
    refresh(clover, first["refresh_token"])
    r = recover(clover, first["refresh_token"], secret="not-the-secret")
    assert (r.status_code, r.json()) == (401, {"message": "Invalid client_secret"})
    clover.knobs.recovery_enabled = False
    assert recover(clover, first["refresh_token"]).status_code == 403
    clover.knobs.recovery_enabled = True
    old_secret = clover.client_secret
    clover.rotate_client_secret()
    assert recover(clover, first["refresh_token"], secret=old_secret).status_code == 401
    assert recover(clover, first["refresh_token"]).status_code == 200


def test_the_clock_skew_knob_moves_the_date_header(clover: CloverSandbox) -> None:
    from email.utils import parsedate_to_datetime

    clover.knobs.clock_skew_s = 900
    r = refresh(clover, "unknown")
    assert abs(parsedate_to_datetime(r.headers["Date"]).timestamp() - time.time() - 900) < 5
