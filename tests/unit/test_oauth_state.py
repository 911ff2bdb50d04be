"""The signed OAuth state: round trip, forgery, expiry, provider binding, single use."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from posync.aws import reset_clients
from posync.errors import InvalidState
from posync.oauth_state import (
    DynamoStateNonces,
    ExpiredState,
    SecretsManagerStateKey,
    StateKeyUnavailable,
    StateSigner,
    key_from_secret,
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


def test_the_state_key_is_read_once_per_container(aws: None) -> None:
    # Given the state key secret
    settings = unit_settings()
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    sm.create_secret(Name=settings.state_key_secret_name, SecretString=base64.b64encode(KEY).decode())
    key = SecretsManagerStateKey(settings)
    # When it is used twice, even after the secret changed
    first = key()
    sm.put_secret_value(
        SecretId=settings.state_key_secret_name, SecretString=base64.b64encode(b"y" * 32).decode()
    )
    # Then the first read is kept for the container's life
    assert first == KEY
    assert key() == KEY


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
