"""The token store on Secrets Manager and the refresh lease on DynamoDB (moto, in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from posync.aws import reset_clients
from posync.config import Settings
from posync.tokens import DynamoAppBreaker, DynamoLeases, SecretsManagerTokenStore, TokenSet, TokensMissing
from tests.unit.oauth_fakes import FakeClock, unit_settings
from tests.unit.test_oauth_connections import create_tables

M = "ABCDEFGHJK123"


@pytest.fixture
def settings() -> Iterator[Settings]:
    with mock_aws():
        reset_clients()
        s = unit_settings()
        key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
        boto3.client("kms", region_name="us-east-1").create_alias(
            AliasName=s.resources.kms_alias, TargetKeyId=key
        )
        create_tables(s)
        yield s
    reset_clients()


def pair(n: int = 0) -> TokenSet:
    return TokenSet(f"acc-{n}", 1_800_000_000 + n, f"ref-{n}", 1_900_000_000, 1_799_000_000)


def test_new_tokens_create_a_kms_encrypted_secret_that_reads_back(settings: Settings) -> None:
    # Given a merchant who just consented
    store = SecretsManagerTokenStore(settings)
    # When its tokens are stored
    store.store_new("clover", M, pair())
    # Then the secret exists under the contract name, encrypted with the stage key, and reads back
    desc = boto3.client("secretsmanager", region_name="us-east-1").describe_secret(
        SecretId=f"posync/unit/clover/{M}"
    )
    assert desc["KmsKeyId"] == settings.resources.kms_alias
    assert store.read("clover", M) == pair()


def test_storing_again_replaces_the_pair_and_a_refresh_save_overwrites(settings: Settings) -> None:
    store = SecretsManagerTokenStore(settings)
    store.store_new("clover", M, pair(0))
    store.store_new("clover", M, pair(1))
    assert store.read("clover", M) == pair(1)
    store.save("clover", M, pair(2))
    assert store.read("clover", M).access_token == "acc-2"


def test_reconnecting_after_uninstall_restores_the_scheduled_secret(settings: Settings) -> None:
    # Given a secret scheduled for deletion (the app was uninstalled)
    store = SecretsManagerTokenStore(settings)
    store.store_new("clover", M, pair(0))
    store.schedule_deletion("clover", M)
    with pytest.raises(TokensMissing):
        store.read("clover", M)
    store.schedule_deletion("clover", M)  # twice is harmless
    # When the merchant connects again
    store.store_new("clover", M, pair(3))
    # Then the secret is usable again with the new pair
    assert store.read("clover", M) == pair(3)


def test_a_missing_secret_is_tokens_missing(settings: Settings) -> None:
    with pytest.raises(TokensMissing):
        SecretsManagerTokenStore(settings).read("poynt", "0b9f1c2e-1111-4222-8333-444455556666")


def test_the_lease_is_exclusive_until_released_or_expired(settings: Settings) -> None:
    # Given two Lambdas with their own lease clients
    clock = FakeClock()
    a = DynamoLeases(settings, clock=clock, sleep=clock.sleep, confirm_after_s=0)
    b = DynamoLeases(settings, clock=clock, sleep=clock.sleep, confirm_after_s=0)
    name = "lease#refresh#clover#" + M
    # When A takes the lease, B cannot
    assert a.acquire(name, "A", 30)
    assert not b.acquire(name, "B", 30)
    # And B's release does not free A's lease
    b.release(name, "B")
    assert not b.acquire(name, "B", 30)
    # When A releases, B gets it
    a.release(name, "A")
    assert b.acquire(name, "B", 30)
    # When B dies and the lease expires, A takes it over
    clock.sleep(31)
    assert a.acquire(name, "A", 30)
    # And B's late release does not remove A's lease
    b.release(name, "B")
    assert not b.acquire(name, "B2", 30)


def test_the_lease_put_is_conditional_on_absence_or_expiry() -> None:
    # Given a stubbed DynamoDB client (the exact call matters here)
    settings = unit_settings()
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    clock = FakeClock(1_800_000_000.0)
    expected: dict[str, Any] = {
        "TableName": "posync-unit-control",
        "Item": {
            "pk": {"S": "lease#refresh#x"},
            "owner": {"S": "me"},
            "expires_at": {"N": "1800000030"},
            "acquired_at_ms": {"N": "1800000000000"},
        },
        "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
        "ExpressionAttributeValues": {":now": {"N": "1800000000"}},
        "ReturnValues": "ALL_OLD",
    }
    with Stubber(ddb) as stub:
        stub.add_response("put_item", {}, expected)
        stub.add_response(
            "get_item",
            {"Item": {"pk": {"S": "lease#refresh#x"}, "owner": {"S": "someone-else"}}},
            {
                "TableName": "posync-unit-control",
                "Key": {"pk": {"S": "lease#refresh#x"}},
                "ConsistentRead": True,
            },
        )
        stub.add_client_error("put_item", "ConditionalCheckFailedException")
        leases = DynamoLeases(settings, clock=clock, sleep=clock.sleep)
        leases._ddb = lambda: ddb  # type: ignore[method-assign]
        # When the put succeeds but the read-back names another owner (a racing writer won)
        assert leases.acquire("lease#refresh#x", "me", 30) is False
        # When the condition fails
        assert leases.acquire("lease#refresh#x", "me", 30) is False
        stub.assert_no_pending_responses()


def test_only_the_holder_can_extend_the_lease_and_the_extension_keeps_others_out(settings: Settings) -> None:
    # Given A holding the refresh lease (30 s)
    clock = FakeClock()
    a = DynamoLeases(settings, clock=clock, sleep=clock.sleep, confirm_after_s=0)
    b = DynamoLeases(settings, clock=clock, sleep=clock.sleep, confirm_after_s=0)
    name = "lease#refresh#clover#" + M
    assert a.acquire(name, "A", 30)
    # When A extends it 25 s later, and 20 s after that B tries to take it
    clock.sleep(25)
    assert a.extend(name, "A", 30)
    clock.sleep(20)
    assert not b.acquire(name, "B", 30)
    # When the extended lease runs out, B takes it, and A's fence check (extend) now fails
    clock.sleep(11)
    assert b.acquire(name, "B", 30)
    assert not a.extend(name, "A", 30)
    # And B knows it took over an unreleased lease (its holder may still save); after a release
    # the next holder knows it did not
    assert b.took_over(name, "B")
    b.release(name, "B")
    assert a.acquire(name, "A2", 30) and not a.took_over(name, "A2")


def test_the_app_breaker_opens_once_shares_its_state_and_probes_once_half_open(settings: Settings) -> None:
    # Given two containers' breakers on one control table
    clock = FakeClock()
    one = DynamoAppBreaker(settings, clock=clock, cooldown_s=300)
    two = DynamoAppBreaker(settings, clock=clock, cooldown_s=300)
    assert one.admit("poynt") and two.admit("poynt")
    # When both see an app-level failure, only the first opens it (one event)
    assert one.app_failed("poynt", "key", "the app's key pair is not known to poynt")
    assert not two.app_failed("poynt", "key", "the app's key pair is not known to poynt")
    # Then neither container refreshes for that app, while the other app is untouched
    assert not one.admit("poynt") and not two.admit("poynt")
    assert one.admit("clover")
    # When the cool-down passes, exactly one container probes
    clock.sleep(301)
    assert [one.admit("poynt"), two.admit("poynt")] == [True, False]
    # When the probe fails, it opens again for twice as long (no second event)
    assert not one.app_failed("poynt", "key", "still refused")
    clock.sleep(301)
    assert not two.admit("poynt")
    clock.sleep(300)
    assert two.admit("poynt")
    # When the probe succeeds, everyone refreshes again
    two.succeeded("poynt")
    assert one.admit("poynt") and two.admit("poynt")


def test_a_storm_of_transient_token_failures_opens_the_breaker(settings: Settings) -> None:
    clock = FakeClock()
    breaker = DynamoAppBreaker(settings, clock=clock, storm_threshold=5, storm_window_s=300)
    # Four failures, a success, four more: no storm (consecutive failures only)
    assert not any(breaker.transient_failed("clover") for _ in range(4))
    breaker.succeeded("clover")
    assert not any(breaker.transient_failed("clover") for _ in range(4))
    assert breaker.admit("clover")
    # The fifth in a row opens it, once
    assert breaker.transient_failed("clover")
    assert not breaker.transient_failed("clover")
    assert not breaker.admit("clover")
