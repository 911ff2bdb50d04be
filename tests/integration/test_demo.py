"""``posync demo`` in-process with small merchants: exit 0, the summary's numbers are the sandboxes' truth,
and nothing secret is printed.

The demo runs on a stage of its own sharing the session's embedded AWS and sandboxes
(``run_demo(..., base=local_runtime)``), so it costs seconds, not a second moto server.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from posync.config import Settings
from posync.domain import connection_id
from posync.exports import iter_manifests, latest, read_manifested
from posync.store import OrderRepository
from posync.tokens import SecretsManagerTokenStore
from posync_local.cli import cli
from posync_local.demo import DemoOptions, DemoResult, MerchantPlan, run_demo
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

OPTIONS = DemoOptions(
    merchants=(
        MerchantPlan("clover", 80, "USD"),  # enough orders for some order-level discounts
        MerchantPlan("clover", 30, "CAD"),
        MerchantPlan("poynt", 40, "USD"),
    ),
    days=100,  # more than 90: Clover's 90-day cut applies to the backfill
    new_orders=3,
    changed_orders=6,
    stage="demoit",
)


@dataclass
class DemoRun:
    settings: Settings  # the demo stage's (same embedded AWS as the session's runtime)
    result: DemoResult
    lines: list[str]  # the summary, line by line
    output: str  # the summary, what the process printed meanwhile, and every log record


@pytest.fixture(scope="module")
def demo(local_runtime: LocalRuntime, captured_logs: LogCapture) -> Iterator[DemoRun]:
    if local_runtime.clover is None or local_runtime.poynt is None:
        pytest.skip("the provider sandboxes are not available")
    lines: list[str] = []
    mark = captured_logs.mark()
    out, err = io.StringIO(), io.StringIO()
    patch = pytest.MonkeyPatch()
    patch.setattr(sys, "stdout", out)
    patch.setattr(sys, "stderr", err)
    try:
        # INFO: the handlers' log lines are kept too (to scan them), as `posync demo --verbose` shows them
        result = run_demo(OPTIONS, lines.append, base=local_runtime, log_level=logging.INFO)
    finally:
        patch.undo()
    settings = Settings.from_env({**os.environ, "POSYNC_STAGE": OPTIONS.stage})
    output = "\n".join([*lines, out.getvalue(), err.getvalue(), captured_logs.since(mark)])
    yield DemoRun(settings, result, lines, output)
    local_runtime.apply_env()


def sandbox(rt: LocalRuntime, provider: str) -> Any:
    return rt.clover if provider == "clover" else rt.poynt


def test_the_demo_exits_0_with_every_sandbox_order_synced(demo: DemoRun, local_runtime: LocalRuntime) -> None:
    # Given the demo ran with two Clover merchants and one Poynt merchant, whose orders include
    # what the exports must carry faithfully (Clover order-level discounts, fetched separately)
    result = demo.result
    clover = [m for m in result.merchants if m.provider == "clover"]
    assert any(
        (o.get("discounts") or {}).get("elements")
        for m in clover
        for o in sandbox(local_runtime, "clover").orders(m.merchant_id)
    )
    # Then it succeeded and says so
    problems = {f"{m.provider} {m.merchant_id}": m.problems() for m in result.merchants}
    assert result.error is None, "\n".join(demo.lines)
    assert result.exit_code == 0, problems
    assert [m.provider for m in result.merchants] == ["clover", "clover", "poynt"]
    total = sum(m.sandbox_orders for m in result.merchants)
    assert any(line.startswith(f"OK: all {total:,} sandbox orders of 3 merchants") for line in demo.lines)


def test_the_summary_numbers_are_the_sandboxes_ground_truth(
    demo: DemoRun, local_runtime: LocalRuntime
) -> None:
    settings = demo.settings
    for plan, m in zip(OPTIONS.merchants, demo.result.merchants, strict=True):
        # Given the sandbox's orders of this merchant (ground truth) ...
        truth = sandbox(local_runtime, m.provider).orders(m.merchant_id)
        created, changed = set(m.created_after_backfill), set(m.changed_after_backfill)
        assert len(created) == OPTIONS.new_orders and len(changed) == OPTIONS.changed_orders
        assert len(truth) == plan.orders + OPTIONS.new_orders == m.sandbox_orders
        # ... what DynamoDB and the manifested exports hold, read independently of the demo
        stored = list(OrderRepository(settings).iter_orders(connection_id(m.provider, m.merchant_id)))
        versions = list(read_manifested(settings, provider=m.provider, merchant_id=m.merchant_id))
        manifests = list(iter_manifests(settings, m.provider, m.merchant_id))
        # Then the report's numbers are those
        assert m.stored_latest == len(stored) == len(truth)
        assert m.exported_latest == len(latest(versions)) == len(truth)
        # every version once: the backfill's, the new orders', the changed ones' (a new order
        # changed before the tick is one version), each older Poynt order changed between the
        # runs, and each Clover deletion's tombstone
        older = set(m.older_changed)  # Poynt: older orders cancelled/refunded between the runs
        assert len(older) == (6 if m.provider == "poynt" else 0)
        deleted = OPTIONS.deleted_orders if m.provider == "clover" else 0
        assert m.tombstones == len(m.deleted) == deleted
        assert (
            m.versions_exported
            == len(versions)
            == plan.orders + len(created) + len((changed | older) - created) + deleted
        )
        for oid in m.deleted:
            assert next(o for o in latest(versions) if o["order_id"] == oid)["state"] == "deleted"
        # the backfill and the scheduled run; Clover also the DELETE webhook's run and the reconcile
        # sweep (it tombstones the deletion no webhook announced); Poynt's sweep corrects nothing,
        # and a run that exports nothing writes no manifest
        assert m.manifests == len(manifests) == (4 if m.provider == "clover" else 2)
        assert m.files == sum(len(x["files"]) for x in manifests)
        # and the summary's table row prints them
        row = next(
            line for line in demo.lines if line.startswith(f"  {m.provider} ") and m.merchant_id in line
        )
        numbers = [int(n) for n in re.findall(r"\s(\d+)(?=\s|$)", row.split(m.merchant_id, 1)[1])]
        assert numbers == [
            len(truth),
            OPTIONS.new_orders,
            OPTIONS.changed_orders,
            len(truth),
            len(truth),
            len(versions),
            len(manifests),
            m.files,
        ]
    # the totals line counts every manifest of the stage
    result = demo.result
    assert result.manifests == 10  # 4 per Clover merchant, 2 for Poynt (its sweep corrects nothing)
    assert result.files == sum(m.files for m in result.merchants)
    assert result.records == sum(m.versions_exported for m in result.merchants)
    assert any(f"{result.files:,} files under exports/orders/v1/" in line for line in demo.lines)


def test_the_demo_connected_through_the_hosted_link_and_prints_how_to_explore(demo: DemoRun) -> None:
    connected = [
        line for line in demo.lines if line.rstrip().endswith(("'Clover connected'", "'Poynt connected'"))
    ]
    assert len(connected) == 3
    for command in ("posync local up --sandbox", "posync exports list", "posync connections list"):
        assert any(command in line for line in demo.lines), command
    assert any(re.search(r"^Elapsed: \d+\.\d s$", line) for line in demo.lines)


def test_the_demo_prints_no_secret(demo: DemoRun, local_runtime: LocalRuntime) -> None:
    # Given every secret the sandboxes handed out for the demo's merchants, and the app secrets
    clover, poynt = local_runtime.clover, local_runtime.poynt
    assert clover is not None and poynt is not None
    secrets: set[str] = {
        clover.client_secret,
        clover.webhook_auth_code,
        poynt.webhook_secret,
        *(
            line
            for line in poynt.app_credentials["private_key_pem"].splitlines()
            if "PRIVATE KEY" not in line
        ),
    }
    settings = demo.settings
    for m in demo.result.merchants:
        sb = sandbox(local_runtime, m.provider)
        for grant in sb.tokens.grants_of(m.merchant_id):
            secrets.update(a.token for a in grant.access)
            if grant.refresh is not None:
                secrets.add(grant.refresh.token)
        secrets.update(c.code for c in sb.codes._codes.values() if c.merchant_id == m.merchant_id)
        stored = SecretsManagerTokenStore(settings).read(m.provider, m.merchant_id)
        secrets.update({stored.access_token, stored.refresh_token or ""})
    secrets = {s for s in secrets if len(s) >= 8}
    assert len(secrets) > 10
    # Then none of them is in what the demo printed (nor in anything printed meanwhile)
    assert [s[:4] + "..." for s in secrets if s in demo.output] == []


def test_posync_demo_is_a_command_with_help() -> None:
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--orders" in result.output and "--days" in result.output


def test_the_poynt_ground_truth_is_field_by_field_and_catches_a_wrong_export(
    demo: DemoRun, local_runtime: LocalRuntime
) -> None:
    from posync_local.demo_poynt import differences

    # Given the demo's Poynt merchant, whose older orders were cancelled and refunded between runs
    m = next(r for r in demo.result.merchants if r.provider == "poynt")
    raw = {str(o["id"]): o for o in sandbox(local_runtime, "poynt").orders(m.merchant_id)}
    exported = {
        str(o["order_id"]): o
        for o in latest(read_manifested(demo.settings, provider="poynt", merchant_id=m.merchant_id))
    }
    # Then every exported order agrees with its raw order on totals, tips, tenders, refunds, cancellation
    assert m.different == [] and not m.differing_fields
    assert all(differences(raw[oid], exported[oid]) == [] for oid in raw)
    states = {exported[oid]["state"] for oid in m.older_changed}
    assert {"cancelled", "partially_refunded", "refunded"} <= states
    # And a tip or a tender exported wrong is named
    paid = next(
        o
        for o in exported.values()
        if o["payments"] and o["totals"]["tip"] >= 0 and o["state"] != "cancelled"
    )
    wrong = {**paid, "totals": {**paid["totals"], "tip": paid["totals"]["tip"] + 1}}
    assert differences(raw[paid["order_id"]], wrong) == ["poynt tip"]
    other = {**paid, "payments": [{**p, "tender": "gift_card"} for p in paid["payments"]]}
    assert "poynt tenders" in differences(raw[paid["order_id"]], other)
