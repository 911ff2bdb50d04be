"""A caught-up connection's scheduled run leases one slot of the app's shared concurrency.

With Clover's 10 concurrent requests per app, a tick over many caught-up merchants must not
let the first two runs take five slots each while the rest wait (the tick benchmark showed
exactly that: 1.8x the per-app floor).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from posync.config import Settings
from posync.domain import Connection
from posync.ratelimit import Deadline
from posync.sync import CAUGHT_UP_S, SourceFactory, SyncConfig, _caught_up

NOW = time.time()


class RecordingSlots:
    def __init__(self) -> None:
        self.wanted: list[int] = []

    def lease(self, want: int, deadline: Deadline) -> int:
        self.wanted.append(want)
        return want

    def keep(self, in_flight: int) -> int | None:
        return None

    def release(self) -> None:
        pass

    def acquire(self, deadline: Deadline) -> None:
        pass


class NoTokens:
    def access_token(self, conn: Connection) -> str:
        raise AssertionError("no request is made here")

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        raise AssertionError("no request is made here")


def conn_with(cursor: dict[str, Any]) -> Connection:
    return Connection(provider="clover", merchant_id="ABCDEFGHJKMNP", cursor=cursor)


@pytest.mark.parametrize(
    ("cursor", "caught_up"),
    [
        ({}, False),  # first sync: a backfill
        ({"modified_ms": int((NOW - 600) * 1000)}, True),
        ({"modified_ms": int((NOW - CAUGHT_UP_S - 60) * 1000)}, False),  # hours behind
        ({"modified_ms": int(NOW * 1000), "run": {"id": "r"}}, False),  # a run in progress
        ({"updated_at": "2000-01-01T00:00:00.000Z"}, False),
        ({"updated_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW - 60))}, True),
        ({"updated_at": "not a time"}, False),
    ],
)
def test_caught_up_means_a_settled_cursor_close_to_now(cursor: dict[str, Any], caught_up: bool) -> None:
    assert _caught_up(conn_with(cursor), NOW) is caught_up


def test_the_factory_leases_one_slot_for_a_caught_up_run_and_full_parallelism_otherwise() -> None:
    # Given a factory sharing the app's concurrency through recorded leases
    settings = Settings.from_env({})
    slots = RecordingSlots()
    config = SyncConfig.from_env({}, settings)
    factory = SourceFactory(settings, NoTokens(), config, app_slots=lambda p: slots)
    deadline = Deadline.after(60)
    # When a caught-up connection and a backfilling one get their sources
    factory(conn_with({"modified_ms": int((NOW - 60) * 1000)}), deadline).close()
    factory(conn_with({}), deadline).close()
    # Then the first asks for one slot and the second for the per-token concurrency (5)
    assert slots.wanted == [1, 5]


def test_the_factory_gives_each_source_the_configured_cpu_slots() -> None:
    settings = Settings.from_env({})
    assert SyncConfig.from_env({}, settings).cpu_slots == 1
    config = SyncConfig.from_env({"POSYNC_SYNC_CPU_SLOTS": "3"}, settings)
    source = SourceFactory(settings, NoTokens(), config)(conn_with({}), Deadline.after(60))
    try:
        assert source.config.cpu_slots == 3
        assert all(source._cpu.acquire(blocking=False) for _ in range(3))
        assert not source._cpu.acquire(blocking=False)  # three slots only
        for _ in range(3):
            source._cpu.release()
    finally:
        source.close()
