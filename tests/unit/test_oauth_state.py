"""The signed OAuth state: round trip, forgery, expiry, provider binding, single use."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from posync.aws import reset_clients
from posync.errors import InvalidState
from posync.oauth_state import (
    BINDING_COOKIE,
    DynamoStateNonces,
    ExpiredState,
    InvalidLink,
    LinkSigner,
    SecretsManagerStateKey,
    StateKeys,
    StateKeyUnavailable,
    StateSigner,
    binding_cookie,
    cookie_value,
    key_from_secret,
    key_id,
    new_binding,
)
from tests.unit.oauth_fakes import FakeClock, unit_settings
from tests.unit.test_oauth_connections import create_tables

KEY = b"k" * 32


def signer(clock: FakeClock, key: bytes = KEY) -> StateSigner:
    return StateSigner(lambda: key, clock=clock)


def reason(fn: object) -> str:
    assert callable(fn)
    with pytest.raises(InvalidState) as info:
        fn()
    return info.value.reason


def test_a_state_round_trips_with_its_ref_and_merchant_hint() -> None:
    clock = FakeClock()
    s = signer(clock)
    state = s.issue("clover", ref="shop-42", merchant_hint="ABCDEFGHJK123")
    got = s.verify("clover", state)
    assert (got.provider, got.ref, got.merchant_hint) == ("clover", "shop-42", "ABCDEFGHJK123")
    assert got.expires_at - got.issued_at == 600
    assert len(got.nonce) == 22


def test_every_state_has_its_own_nonce() -> None:
    s = signer(FakeClock())
    assert len({s.verify("poynt", s.issue("poynt")).nonce for _ in range(50)}) == 50


def test_a_state_signed_with_another_key_is_forged() -> None:
    clock = FakeClock()
    theirs = signer(clock, b"x" * 32).issue("clover")
    assert reason(lambda: signer(clock).verify("clover", theirs)) == "forged"


def test_an_edited_payload_is_forged() -> None:
    # Given a genuine state whose payload is edited to carry another ref
    clock = FakeClock()
    s = signer(clock)
    payload, mac = s.issue("clover", ref="mine").split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["ref"] = "theirs"
    edited = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    # Then it does not verify
    assert reason(lambda: s.verify("clover", f"{edited}.{mac}")) == "forged"


def test_a_state_for_another_provider_is_forged() -> None:
    clock = FakeClock()
    s = signer(clock)
    assert reason(lambda: s.verify("poynt", s.issue("clover"))) == "forged"


def test_a_state_older_than_ten_minutes_is_expired_and_keeps_its_ref() -> None:
    clock = FakeClock()
    s = signer(clock)
    state = s.issue("clover", ref="shop-1")
    clock.sleep(599)
    s.verify("clover", state)
    clock.sleep(1)
    with pytest.raises(ExpiredState) as info:
        s.verify("clover", state)
    assert info.value.reason == "expired"
    assert info.value.payload.ref == "shop-1"


def test_no_state_is_missing() -> None:
    s = signer(FakeClock())
    assert reason(lambda: s.verify("clover", None)) == "missing"
    assert reason(lambda: s.verify("clover", "")) == "missing"


@given(st.text(max_size=300))
def test_arbitrary_text_never_verifies(text: str) -> None:
    s = signer(FakeClock())
    with pytest.raises(InvalidState):
        s.verify("clover", text or "x")


def test_key_from_secret_accepts_base64_or_text_and_refuses_short_keys() -> None:
    raw = bytes(range(32))
    assert key_from_secret(base64.b64encode(raw).decode()) == raw
    assert key_from_secret("a-generated-password-of-32-chars!") == b"a-generated-password-of-32-chars!"
    with pytest.raises(StateKeyUnavailable):
        key_from_secret("short")


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        reset_clients()
        yield
    reset_clients()


def test_the_state_key_is_cached_with_a_maximum_age(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the state key secret, read through Powertools parameters with a 300 s maximum age
    settings = unit_settings()
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.create_secret(Name=settings.state_key_secret_name, SecretString=base64.b64encode(KEY).decode())
    keys = SecretsManagerStateKey(settings)
    first = keys()
    # When the secret is rotated
    sm.put_secret_value(
        SecretId=settings.state_key_secret_name, SecretString=base64.b64encode(b"y" * 32).decode()
    )
    # Then the cached copy serves within its maximum age
    assert (first.current, first.previous) == (KEY, None)
    assert keys().current == KEY
    # And once it is older than that, the new key is current and the old one previous
    import aws_lambda_powertools.utilities.parameters.base as base

    later = datetime.now() + timedelta(seconds=301)
    monkeypatch.setattr(base, "datetime", type("Later", (), {"now": staticmethod(lambda: later)}))
    rotated = keys()
    assert (rotated.current, rotated.previous) == (b"y" * 32, KEY)
    assert rotated.rotated_at is not None


def test_a_state_names_its_key_and_the_previous_key_works_for_a_state_lifetime() -> None:
    # Given a state issued just before a key rotation
    clock = FakeClock()
    old = signer(clock).issue("clover", ref="shop-1")
    body = json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))
    assert body["k"] == key_id(KEY) and KEY.decode() not in old
    rotated = StateKeys(current=b"n" * 32, previous=KEY, rotated_at=clock())
    after = StateSigner(lambda: rotated, clock=clock)
    # When the callback verifies it with the new keys, it is accepted (the previous key's window)
    assert after.verify("clover", old).ref == "shop-1"
    # And new states are signed with the new key
    assert json.loads(base64.urlsafe_b64decode(after.issue("clover").split(".")[0] + "=="))["k"] == key_id(
        b"n" * 32
    )
    # But once the window (state lifetime + cache age) has passed, the previous key signs nothing
    late = signer(FakeClock(clock() + 900)).issue("clover")
    clock.sleep(901)
    assert reason(lambda: after.verify("clover", late)) == "forged"


class CountingKeys:
    """A key source whose refresh returns the rotated keys (another container rotated first)."""

    def __init__(self, stale: StateKeys, fresh: StateKeys) -> None:
        self.stale, self.fresh, self.refreshes = stale, fresh, 0

    def __call__(self) -> StateKeys:
        return self.stale

    def refresh(self) -> StateKeys:
        self.refreshes += 1
        self.stale = self.fresh
        return self.fresh


def test_an_unknown_key_id_re_reads_the_key_once() -> None:
    # Given a container still holding the old key, and a state signed with the new key
    clock = FakeClock()
    fresh = StateKeys(current=b"n" * 32, previous=KEY, rotated_at=clock())
    state = StateSigner(lambda: fresh, clock=clock).issue("poynt")
    keys = CountingKeys(StateKeys(current=KEY), fresh)
    # When it verifies the state, it re-reads the key and accepts it
    assert StateSigner(keys, clock=clock).verify("poynt", state).provider == "poynt"
    assert keys.refreshes == 1


def test_the_state_binds_the_browser_cookie() -> None:
    # Given a state issued to the browser holding cookie A
    clock = FakeClock()
    s = signer(clock)
    mine, theirs = new_binding(), new_binding()
    state = s.verify("clover", s.issue("clover", browser=mine))
    # Then only cookie A matches; another browser's cookie or none does not
    assert StateSigner.bound_to(state, mine)
    assert not StateSigner.bound_to(state, theirs)
    assert not StateSigner.bound_to(state, None)
    assert mine not in s.issue("clover", browser=mine)  # only its hash travels
    # And a state issued without a binding is never bound
    assert not StateSigner.bound_to(s.verify("clover", s.issue("clover")), mine)


def test_the_binding_cookie_is_secure_only_on_https_and_follows_the_redirect_back() -> None:
    https = binding_cookie("v", secure=True, provider="clover")
    assert https.startswith(f"{BINDING_COOKIE}=v; Path=/oauth/clover/callback; Max-Age=600")
    assert "HttpOnly" in https and "SameSite=Lax" in https and "Secure" in https
    assert "Secure" not in binding_cookie("v", secure=False, provider="poynt")
    assert cookie_value(["a=1", f"{BINDING_COOKIE}=xyz", "b=2"]) == "xyz"
    assert cookie_value(None) is None


def test_a_connect_link_signature_binds_provider_ref_and_expiry() -> None:
    clock = FakeClock()
    links = LinkSigner(lambda: KEY, clock=clock)
    exp = int(clock()) + 7 * 86400
    sig = links.sign("clover", "shop-7", exp)
    assert links.verify("clover", "shop-7", str(exp), sig) == exp
    assert links.verify("clover", None, None, None) is None  # no ref: nothing to check

    def link_reason(provider: str, ref: str, expires: str | None, s: str | None) -> str:
        with pytest.raises(InvalidLink) as info:
            links.verify(provider, ref, expires, s)
        return info.value.reason

    assert link_reason("clover", "shop-8", str(exp), sig) == "forged"  # another ref
    assert link_reason("poynt", "shop-7", str(exp), sig) == "forged"  # another provider
    assert link_reason("clover", "shop-7", str(exp + 86400), sig) == "forged"  # a longer life
    assert link_reason("clover", "shop-7", None, None) == "unsigned"
    assert link_reason("clover", "shop-7", str(exp), sig[:-1] + ("B" if sig[-1] == "A" else "A")) == "forged"
    other = LinkSigner(lambda: b"x" * 32, clock=clock).sign("clover", "shop-7", exp)
    assert link_reason("clover", "shop-7", str(exp), other) == "forged"
    clock.sleep(7 * 86400)
    assert link_reason("clover", "shop-7", str(exp), sig) == "expired"


def test_a_missing_state_key_is_a_configuration_problem(aws: None) -> None:
    with pytest.raises(StateKeyUnavailable):
        SecretsManagerStateKey(unit_settings())()


def test_a_nonce_can_be_consumed_once(aws: None) -> None:
    # Given the control table
    settings = unit_settings()
    create_tables(settings)
    nonces = DynamoStateNonces(settings, clock=FakeClock())
    nonce = "A" * 22
    # When the callback consumes the nonce twice
    assert nonces.consume(nonce, 1_800_000_600) is True
    assert nonces.consume(nonce, 1_800_000_600) is False
    # Then the used-state item carries a TTL a day past the state's expiry
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=settings.control_table, Key={"pk": {"S": f"state#{nonce}"}}
    )["Item"]
    assert item["expires_at"]["N"] == str(1_800_000_600 + 86400)
    # And a malformed nonce never reaches a key
    assert nonces.consume("../../x", 1) is False
