"""Faults at scale: a dispatcher pass cut short, and a continuation picked up after a 429.

- The dispatcher dies mid-pass (its SendMessageBatch calls after the first never go out, as
  when Lambda's timeout stops it): the retried invocation of the same scheduled event queues
  exactly the connections the first one did not, and no connection gets two messages.
- A 429 whose Retry-After outlasts the invocation: the run checkpoints and continues, and
  its continuation, in a cold container that never saw the 429, still waits the Retry-After
  out (the pause travels in the run's state): the provider sees no early retry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from posync_local.local_functions import FunctionHost
from posync_local.local_tick import scheduled_event
from tests.chaos.conftest import Chaos, Fault, Kill, stats_delta

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def test_a_dispatcher_killed_mid_pass_is_finished_by_its_retry_without_doubles(chaos: Chaos) -> None:
    # Given 13 Clover merchants, backfilled, each with new orders since
    merchants = [chaos.merchant("clover", orders=8, days=5) for _ in range(13)]
    assert chaos.drain().failures == 0
    for m in merchants:
        chaos.clover().create_orders(m, 2)
    # When the schedule fires and the dispatcher dies after its first batch went out
    chaos.faults.add(
        Fault(
            "dispatcher_killed",
            "sqs",
            "SendMessageBatch",
            when="before",
            target=chaos.sync_queue_url,
            skip=1,
            times=100,
        )
    )
    # (55 minutes on: every connection is due, hourly or not, and a mark made now still pending)
    event = scheduled_event(chaos.rt.settings, datetime.now(UTC) + timedelta(minutes=55))
    with pytest.raises(Kill):
        chaos.rt.invoke("dispatcher", event)
    chaos.stop_faults()
    # And Lambda retries the same event
    retry: dict[str, Any] = chaos.rt.invoke("dispatcher", event)
    # Then the retry queued only the connections the dead pass had not: those are pending
    first = 13 - retry["sent"]
    assert 1 <= first <= 10 and retry["states"]["pending"] == first
    assert retry["complete"] is True and retry["failed"] == 0
    # And draining runs each connection once for that slot, and loses nothing
    report = chaos.drain()
    assert report.messages == 13 and report.failures == 0
    for m in merchants:
        assert chaos.assert_cursor_covers("clover", m) == 10
    chaos.aws_faults["dispatcher_killed"] += 1
    chaos.settle()
    chaos.verify()


class ColdContainers:
    """A new container for every invocation: nothing a 429 left in memory reaches the next one."""

    def __init__(self, chaos: Chaos) -> None:
        self.rt = chaos.rt
        self.cold_starts = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        host = FunctionHost(
            self.rt.functions.functions_dir, stage=self.rt.stage, account_id=self.rt.functions.account_id
        )
        self.cold_starts += 1
        return host.handler("worker")(event, context)


def test_a_continuation_after_a_429_waits_out_the_retry_after_in_another_container(chaos: Chaos) -> None:
    # Given a Clover merchant whose API allows 2 calls a second per token and punishes a retry
    # within a second of its 429 (Clover sends no Retry-After with a rate 429: posync waits a
    # second, then doubles, CLV-429-1), and worker invocations of 4 s (1 s of stop margin): a
    # 429 near an invocation's end is waited out by the continuation, in another container
    m = chaos.merchant("clover", orders=60, days=5)
    sb = chaos.clover()
    sb.knobs.per_token_rps = 2
    sb.knobs.retry_after_ms = 1000
    sb.knobs.retry_early_penalty = True
    cold = ColdContainers(chaos)
    chaos.rt.functions.override("worker", cold)
    before = sb.stats.snapshot()
    # When the backfill runs, each invocation in a cold container
    report = chaos.drain(worker_timeout_s=4, max_seconds=120)
    # Then it was refused, continued across invocations, and no call went out during a Retry-After
    after = sb.stats.snapshot()
    chaos.provider_faults["http_429"] = stats_delta(before, after, "rate_limited")
    assert chaos.provider_faults["http_429"] > 0
    assert report.failures == 0 and cold.cold_starts >= 2
    assert stats_delta(before, after, "early_retries") == 0
    conn = chaos.connection("clover", m)
    assert conn.last_run["status"] == "completed" and conn.last_run["invocations"] >= 2
    assert chaos.assert_cursor_covers("clover", m) == 60
    chaos.rt.functions.override("worker", chaos.containers)
    chaos.settle()
    chaos.verify()
