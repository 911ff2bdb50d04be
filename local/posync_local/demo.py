"""``posync demo``: the whole product on this machine, checked against the sandboxes' ground truth.

One process runs everything ``make demo`` shows: the embedded AWS (moto's server) with
the stage provisioned from ``posync.resources``, the Clover and Poynt sandboxes, and the
real Lambda handlers behind the local HTTP front (:class:`posync_local.runtime.LocalRuntime`).
Then, as a merchant and the schedule would:

1. the app credentials are stored in Secrets Manager (the sandboxes' default apps);
2. two Clover merchants and one Poynt merchant connect **through their hosted links**:
   ``GET {api}/connect/{provider}`` -> the sandbox's consent page -> the form is posted
   with Approve, as a browser would -> the redirect to our callback -> the success page;
3. the backfill each callback queued is drained into the worker;
4. the sandboxes create and change orders, and one scheduled tick (dispatcher + worker)
   picks them up;
5. every sandbox order (``sandbox.orders(merchant)``) is looked up in DynamoDB (its
   latest version) and in the manifested exports (``read_manifested`` folded by
   ``latest``), and compared with the canonical form of the provider's order.

The exit code is 0 only if nothing is missing, stale or different; otherwise the summary
says what is. Nothing secret is printed: no token, code, client secret or key.

In-process use (the integration test): ``run_demo(DemoOptions(...), echo)`` returns a
:class:`DemoResult`; pass ``base=`` a started runtime to share its AWS and sandboxes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urljoin

import click
import requests

from posync.canonical import normalize
from posync.domain import connection_id
from posync.exports import iter_manifest_items, iter_manifests, latest, read_manifested
from posync.schedule import PollConfig
from posync.store import OrderRepository
from posync_local.demo_poynt import change_older_orders
from posync_local.local_tick import TickReport
from posync_local.runtime import LocalRuntime

if TYPE_CHECKING:
    from posync.config import Settings
    from posync_local.sandbox.merchants import OrderSandbox

Echo = Callable[[str], None]

HTTP_TIMEOUT_S = 30
DRAIN_MAX_SECONDS = 600.0
SHOWN_PROBLEMS = 10  # ids listed per kind of problem (the counts are always complete)


class DemoError(Exception):
    """A step of the demo failed (the message says which, and never carries a secret)."""


# --------------------------------------------------------------------------- options and results


@dataclass(frozen=True)
class MerchantPlan:
    provider: str
    orders: int
    currency: str


@dataclass(frozen=True)
class DemoOptions:
    """What the demo creates. Orders are spread over ``days`` days (more than 90: Clover's
    90-day cut on a time filter makes the backfill page window by window)."""

    merchants: tuple[MerchantPlan, ...] = (
        MerchantPlan("clover", 300, "USD"),
        MerchantPlan("clover", 200, "CAD"),
        MerchantPlan("poynt", 250, "USD"),
    )
    days: int = 120
    new_orders: int = 5  # per merchant, after the backfill
    changed_orders: int = 20  # per merchant, after the backfill
    deleted_orders: int = 2  # per Clover merchant, after the tick: the first announced by a DELETE webhook
    stage: str = "demo"
    seed: int = 7
    api_port: int = 0
    aws_port: int = 0

    @property
    def backfill_days(self) -> int:
        return self.days + 30  # the first sync reaches back past the oldest seeded order


@dataclass
class MerchantReport:
    """One merchant's orders: the sandbox's truth against DynamoDB and the manifested exports."""

    provider: str
    merchant_id: str
    name: str
    sandbox_orders: int = 0
    created_after_backfill: list[str] = field(default_factory=list)  # order ids the sandbox created
    changed_after_backfill: list[str] = field(default_factory=list)  # order ids the sandbox changed
    older_changed: list[str] = field(default_factory=list)  # Poynt: older orders cancelled/refunded
    deleted: list[str] = field(default_factory=list)  # order ids the sandbox deleted (Clover)
    tombstones: int = 0  # deleted orders whose latest stored and exported version is their tombstone
    live_after_delete: list[str] = field(default_factory=list)  # deleted, but not a correct tombstone
    stored_latest: int = 0  # orders whose stored version is the sandbox's current one
    exported_latest: int = 0  # orders whose newest exported version is the current one
    versions_exported: int = 0  # lines in manifested exports (a change log: versions, not orders)
    manifests: int = 0
    files: int = 0
    missing_in_store: list[str] = field(default_factory=list)
    stale_in_store: list[str] = field(default_factory=list)
    missing_in_exports: list[str] = field(default_factory=list)
    stale_in_exports: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)  # latest exported != canonical(sandbox order)
    differing_fields: Counter[str] = field(default_factory=Counter)  # canonical fields that differed
    unexpected: list[str] = field(default_factory=list)  # stored or exported, unknown to the sandbox

    @property
    def ok(self) -> bool:
        return self.sandbox_orders > 0 and not self.problems()

    def problems(self) -> dict[str, list[str]]:
        found = {
            "missing in DynamoDB": self.missing_in_store,
            "older version in DynamoDB": self.stale_in_store,
            "missing in the exports": self.missing_in_exports,
            "older version in the exports": self.stale_in_exports,
            "exported with content other than the provider's order": self.different,
            "deleted at the provider, not a tombstone in DynamoDB and the exports": self.live_after_delete,
            "not in the sandbox": self.unexpected,
        }
        return {k: v for k, v in found.items() if v}


@dataclass
class DemoResult:
    merchants: list[MerchantReport] = field(default_factory=list)
    manifests: int = 0
    files: int = 0
    records: int = 0
    manifest_keys: list[str] = field(default_factory=list)
    backfill: TickReport | None = None
    tick: TickReport | None = None
    elapsed_s: float = 0.0
    step: str = "starting"  # the step running (or that failed)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.merchants) and all(m.ok for m in self.merchants)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


# --------------------------------------------------------------------------- the browser's part


class _ConsentForm(HTMLParser):
    """The consent page's form: action, hidden inputs, the merchant select and the buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.select: str | None = None
        self.options: list[str] = []
        self.buttons: dict[str, tuple[str, str]] = {}  # id -> (name, value)
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self.select = a.get("name") or None
        elif tag == "option":
            self.options.append(a.get("value", ""))
        elif tag == "button" and a.get("id"):
            self.buttons[a["id"]] = (a.get("name", ""), a.get("value", ""))
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _page_title(html: str) -> str:
    parser = _ConsentForm()
    parser.feed(html)
    return parser.title.strip()


@dataclass(frozen=True)
class ConnectOutcome:
    status: int
    title: str
    final_url: str


def connect_through_hosted_link(
    api_url: str, provider: str, merchant_id: str, decision: str = "approve"
) -> ConnectOutcome:
    """What a merchant's browser does: open the connect link, pick the merchant, click a button.

    ``GET {api}/connect/{provider}`` is followed to the provider's consent page; its form is
    filled in (the merchant select set to ``merchant_id``, the ``decision`` button pressed)
    and posted; the redirect to our callback is followed to the page it answers.
    """
    with requests.Session() as browser:
        page = browser.get(f"{api_url}/connect/{provider}", timeout=HTTP_TIMEOUT_S)
        if page.status_code != 200:
            raise DemoError(f"{provider}: the connect link answered {page.status_code}")
        form = _ConsentForm()
        form.feed(page.text)
        if form.action is None or decision not in form.buttons or form.select is None:
            raise DemoError(f"{provider}: the consent page at {page.url.split('?')[0]} has no consent form")
        if merchant_id not in form.options:
            raise DemoError(f"{provider}: merchant {merchant_id} is not offered on the consent page")
        data = dict(form.fields)
        data[form.select] = merchant_id
        name, value = form.buttons[decision]
        data[name] = value
        answer = browser.post(urljoin(page.url, form.action), data=data, timeout=HTTP_TIMEOUT_S)
        return ConnectOutcome(answer.status_code, _page_title(answer.text), answer.url)


# --------------------------------------------------------------------------- ground truth


def _poynt_truth(report: MerchantReport, sandbox: OrderSandbox, exported: dict[str, dict[str, Any]]) -> None:
    """Poynt: every exported latest version against the raw order, field by field (demo_poynt)."""
    from posync_local.demo_poynt import differences

    for raw in sandbox.orders(report.merchant_id):
        got = exported.get(str(raw["id"]))
        wrong = differences(raw, got) if got is not None else []
        if wrong:
            report.different.append(str(raw["id"]))
            report.differing_fields.update(wrong)


def _expected(provider: str, sandbox: OrderSandbox, merchant_id: str) -> dict[str, dict[str, Any]]:
    """order id -> the canonical form of the sandbox's current version of that order."""
    return {str(raw["id"]): normalize(provider, merchant_id, raw) for raw in sandbox.orders(merchant_id)}


def canonical_figures(order: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of a canonical order that ``CloverSandbox.figures`` states independently."""
    totals = order["totals"]
    return {
        **{f"totals.{k}": totals[k] for k in ("subtotal", "discount", "tax", "service_charge", "total")},
        "line_items.total": [li["total"] for li in order["line_items"]],
        "payments.tender": [p["tender"] for p in order["payments"]],
        "payments.card_brand": [p["card_brand"] for p in order["payments"]],
        "refunds.amount": [r["amount"] for r in order["refunds"]],
    }


def figure_differences(expected: Mapping[str, Any] | None, order: Mapping[str, Any]) -> list[str]:
    """The figures (``totals.tax``, ``payments.tender``, ...) in which ``order`` differs from
    the sandbox's own ``expected`` ones (none expected: nothing to compare)."""
    if expected is None:
        return []
    got = canonical_figures(order)
    return [name for name, value in expected.items() if got.get(name) != value]


def verify_merchant(settings: Settings, report: MerchantReport, sandbox: OrderSandbox) -> MerchantReport:
    """Fill ``report`` with the comparison of the sandbox's orders, DynamoDB and the exports."""
    provider, mid = report.provider, report.merchant_id
    want = _expected(provider, sandbox, mid)
    report.sandbox_orders = len(want)
    # Clover: also the sandbox's own figures, computed apart from posync's normalizer
    figures_of = getattr(sandbox, "figures", None)
    figures: dict[str, dict[str, Any]] = figures_of(mid) if callable(figures_of) else {}

    stored_orders = {
        str(o["order_id"]): o for o in OrderRepository(settings).iter_orders(connection_id(provider, mid))
    }
    stored = {oid: str(o["modified_at"]) for oid, o in stored_orders.items()}
    versions = list(read_manifested(settings, provider=provider, merchant_id=mid))
    exported = {str(o["order_id"]): o for o in latest(versions)}
    report.versions_exported = len(versions)

    for oid, order in want.items():
        if order["state"] == "deleted":
            # A tombstone's times are when posync found out (the webhook, a 404) unless Clover
            # shows the deletion: its content is the order's, its state deleted, in both places.
            if _is_tombstone_of(stored_orders.get(oid), order) and _is_tombstone_of(exported.get(oid), order):
                report.tombstones += 1
                report.stored_latest += 1
                report.exported_latest += 1
            else:
                report.live_after_delete.append(oid)
            continue
        current = order["modified_at"]
        if oid not in stored:
            report.missing_in_store.append(oid)
        elif stored[oid] != current:
            report.stale_in_store.append(oid)
        else:
            report.stored_latest += 1
        if oid not in exported:
            report.missing_in_exports.append(oid)
        elif exported[oid]["modified_at"] != current:
            report.stale_in_exports.append(oid)
        elif exported[oid] != order or figure_differences(figures.get(oid), exported[oid]):
            report.different.append(oid)
            got = exported[oid]
            report.differing_fields.update(
                k for k in sorted(set(order) | set(got)) if order.get(k) != got.get(k)
            )
            report.differing_fields.update(figure_differences(figures.get(oid), got))
        else:
            report.exported_latest += 1
    report.unexpected = sorted((set(stored) | set(exported)) - set(want))
    if provider == "poynt":
        _poynt_truth(report, sandbox, exported)

    for manifest in iter_manifests(settings, provider, mid):
        report.manifests += 1
        report.files += len(manifest.get("files", []))
    return report


def _is_tombstone_of(got: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    """``got`` is the tombstone of the deleted order ``want`` (the canonical form of Clover's
    deleted order): deleted, not before Clover's deletion, the same content otherwise."""
    if got is None or got.get("state") != "deleted" or not got.get("deleted_at"):
        return False
    if str(got["deleted_at"]) < str(want["deleted_at"]):
        return False
    times = ("modified_at", "deleted_at")
    return {k: v for k, v in got.items() if k not in times} == {
        k: v for k, v in want.items() if k not in times
    }


# --------------------------------------------------------------------------- logging


class _QuietPosyncLogs:
    """The handlers log JSON lines to stdout; during the demo they go to stderr, warnings and up.

    Everything is put back on exit (levels and streams), so an in-process caller's own
    log capture is unaffected afterwards.
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self._saved: list[tuple[logging.Logger, int]] = []
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> _QuietPosyncLogs:
        for name in ("posync", "posync_local", "botocore", "urllib3", "werkzeug"):
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level))
            logger.setLevel(max(self.level, logging.WARNING) if name != "posync" else self.level)
        for handler in logging.getLogger("posync").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                self._streams.append((handler, handler.stream))
                handler.setStream(sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level in self._saved:
            logger.setLevel(level)
        for handler, stream in self._streams:
            handler.setStream(stream)


# --------------------------------------------------------------------------- the run


def _sandbox(rt: LocalRuntime, provider: str) -> OrderSandbox:
    sb = rt.clover if provider == "clover" else rt.poynt
    if sb is None:
        raise DemoError(f"the {provider} sandbox is not running")
    return sb


@contextlib.contextmanager
def _runtime(options: DemoOptions, base: LocalRuntime | None) -> Iterator[LocalRuntime]:
    env = {"POSYNC_BACKFILL_DAYS": str(options.backfill_days)}
    if base is not None:
        rt = base.derive(options.stage, env=env)
    else:
        rt = LocalRuntime(
            api_port=options.api_port,
            aws_port=options.aws_port,
            sandbox=True,
            stage=options.stage,
            env=env,
            sandbox_seed=options.seed,
        )
    rt.start()
    try:
        rt.reset_data()  # a stage used before in this process (moto keeps its state per process)
        yield rt
    finally:
        rt.stop()
        if base is not None:
            base.apply_env()


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _report_line(rep: TickReport) -> str:
    extra = f", {rep.failures} failed deliveries retried" if rep.failures else ""
    return (
        f"{_plural(rep.messages, 'message')} in {_plural(rep.batches, 'batch')}{extra}, "
        f"{rep.elapsed_s:.1f} s (stopped: {rep.stopped_by})"
    )


def _stdout_echo() -> Echo:
    out = sys.stdout  # bound now: the handlers' own prints are redirected while the demo runs

    def echo(line: str) -> None:
        click.echo(line, file=out)
        out.flush()

    return echo


def run_demo(
    options: DemoOptions | None = None,
    echo: Echo | None = None,
    *,
    base: LocalRuntime | None = None,
    log_level: int = logging.WARNING,
    reraise: bool = False,
) -> DemoResult:
    """Run the demo (see the module docstring); ``echo`` receives every line of the summary.

    While it runs, what the handlers print themselves (Powertools' metric lines) and log
    goes to stderr when ``log_level`` is INFO or lower, and is dropped otherwise (log
    records of WARNING and up still reach stderr). An unexpected exception ends the demo
    with its type named (its text may quote a URL carrying an authorization code), or
    propagates with ``reraise``.
    """
    options = options or DemoOptions()
    echo = echo or _stdout_echo()
    started = time.monotonic()
    result = DemoResult()
    echo("posync demo: embedded AWS, Clover and Poynt sandboxes and the real handlers, in this process")
    try:
        with contextlib.ExitStack() as stack:
            sink = sys.stderr if log_level <= logging.INFO else stack.enter_context(_discard())
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(_QuietPosyncLogs(log_level))
            rt = stack.enter_context(_runtime(options, base))
            _run(rt, options, echo, result)
            result.elapsed_s = time.monotonic() - started
            _summary(rt, result, echo)
    except DemoError as exc:
        result.error = str(exc)
        result.elapsed_s = time.monotonic() - started
        echo("")
        echo(f"FAILED while {result.step}: {exc}")
    except Exception as exc:
        if reraise:
            raise
        result.error = f"unexpected {type(exc).__name__}"
        result.elapsed_s = time.monotonic() - started
        echo("")
        echo(f"FAILED while {result.step}: {result.error} (POSYNC_DEBUG=1 shows the details)")
    # moto's state is garbage now: collecting it here takes a fraction of a second, leaving
    # it to the interpreter's exit took ten seconds and more.
    gc.collect()
    return result


@contextlib.contextmanager
def _discard() -> Iterator[TextIO]:
    with Path(os.devnull).open("w", encoding="utf-8") as sink:
        yield sink


def _run(rt: LocalRuntime, options: DemoOptions, echo: Echo, result: DemoResult) -> None:
    result.step = "storing the app credentials"
    echo(f"[1/6] local stack up: API {rt.api_url}, AWS (moto) {rt.aws_endpoint}, stage {rt.stage}")

    # The runtime put the sandboxes' app credentials in; store them again the way an operator
    # would set them, and show which apps they are (ids only, never a secret).
    rt.store_sandbox_credentials()
    clover, poynt = rt.clover, rt.poynt
    if clover is None or poynt is None:
        raise DemoError("the provider sandboxes are not running")
    echo(
        f"[2/6] app credentials stored in Secrets Manager ({rt.settings.app_secret_name('clover')}, "
        f"{rt.settings.app_secret_name('poynt')}): Clover app {clover.app_credentials['client_id']}, "
        f"Poynt app {poynt.app_credentials['app_id']} (secrets not shown)"
    )

    result.step = "connecting the merchants"
    echo("[3/6] merchants connect through their hosted links (consent page, Approve, callback):")
    for plan in options.merchants:
        sb = _sandbox(rt, plan.provider)
        mid = sb.add_merchant(orders=plan.orders, currency=plan.currency, days=options.days)
        report = MerchantReport(plan.provider, mid, sb.merchant_name(mid))
        outcome = connect_through_hosted_link(rt.api_url, plan.provider, mid)
        if outcome.status != 200 or not outcome.title.endswith("connected"):
            raise DemoError(
                f"{plan.provider} merchant {mid}: the callback answered {outcome.status} "
                f"{outcome.title!r} instead of the success page"
            )
        result.merchants.append(report)
        echo(
            f"      {plan.provider:<7} {mid:<36} {report.name[:28]:<28} "
            f"{_plural(plan.orders, 'order')} over {options.days} days -> {outcome.title!r}"
        )

    result.step = "draining the backfill"
    rep = rt.drain(max_seconds=DRAIN_MAX_SECONDS)
    result.backfill = rep
    echo(f"[4/6] backfill drained: {_report_line(rep)}")
    if not rep.idle:
        raise DemoError(f"the backfill did not finish ({rep.stopped_by})")

    result.step = "the scheduled sync"
    for report in result.merchants:
        sb = _sandbox(rt, report.provider)
        report.created_after_backfill = sb.create_orders(report.merchant_id, options.new_orders)
        report.changed_after_backfill = sb.modify_orders(report.merchant_id, options.changed_orders)
        if report.provider == "poynt":  # older Poynt orders cancelled and refunded between runs
            report.older_changed = change_older_orders(sb, report.merchant_id)
    # A slot one polling bound later: connections synced moments ago are not due before it
    # (posync.schedule polls quiet ones less often); by then every one of them is.
    bound = PollConfig.from_env(os.environ, rt.settings.schedule_minutes).max_interval_s
    rep = rt.tick(at=datetime.now(UTC) + timedelta(seconds=bound), max_seconds=DRAIN_MAX_SECONDS)
    result.tick = rep
    echo(
        f"[5/6] sandboxes created {options.new_orders} and changed {options.changed_orders} orders "
        f"per merchant; scheduled tick: {_dispatch_text(rep.dispatcher)}; {_report_line(rep)}"
    )
    if not rep.idle:
        raise DemoError(f"the scheduled sync did not finish ({rep.stopped_by})")

    result.step = "deleting orders"
    _delete_and_reconcile(rt, options, echo, result)

    result.step = "checking the orders"
    echo("[6/6] checking every sandbox order against DynamoDB and the manifested exports")
    settings = rt.settings
    for report in result.merchants:
        verify_merchant(settings, report, _sandbox(rt, report.provider))
    for key, manifest in iter_manifest_items(settings):
        result.manifests += 1
        result.files += len(manifest.get("files", []))
        result.records += int(manifest.get("record_count", 0))
        result.manifest_keys.append(key)


def _delete_and_reconcile(rt: LocalRuntime, options: DemoOptions, echo: Echo, result: DemoResult) -> None:
    """Clover deletes orders at the register: the first announced by its DELETE webhook, the
    others only found by the reconciliation sweep (read by id); then the sweep runs for all."""
    clover = rt.clover
    if clover is None or options.deleted_orders <= 0:
        return
    for report in result.merchants:
        if report.provider != "clover":
            continue
        report.deleted = sorted(report.created_after_backfill)[: options.deleted_orders]
        clover.delete_orders(report.merchant_id, report.deleted)
        statuses = clover.send_webhook(
            f"{rt.api_url}/webhooks/clover", report.merchant_id, report.deleted[:1], event_type="DELETE"
        )
        if statuses != [200]:
            raise DemoError(f"the DELETE webhook was answered {statuses}")
    rep = rt.drain(max_seconds=DRAIN_MAX_SECONDS)
    rt.apply_env()
    sweep = rt.invoke("dispatcher", {"kind": "reconcile"})
    rep2 = rt.drain(max_seconds=DRAIN_MAX_SECONDS)
    if not (rep.idle and rep2.idle):
        raise DemoError(f"the deletions or the sweep did not finish ({rep.stopped_by}, {rep2.stopped_by})")
    echo(
        f"      Clover deleted {options.deleted_orders} orders per merchant (the first announced by its "
        f"DELETE webhook: {_report_line(rep)}); reconcile sweep: {_dispatch_text(sweep)}; "
        f"{_report_line(rep2)}"
    )


def _dispatch_text(dispatcher: Any) -> str:
    if isinstance(dispatcher, Mapping):
        sent = dispatcher.get("sent")
        total = dispatcher.get("connections")
        if sent is not None and total is not None:
            return f"{sent} of {total} connections queued"
    return "dispatcher ran"


def _summary(rt: LocalRuntime, result: DemoResult, echo: Echo) -> None:
    echo("")
    echo("Merchants (orders: the sandbox's ground truth; latest: at the sandbox's current version)")
    header = (
        f"  {'provider':<8} {'merchant id':<36} {'orders':>6} {'new':>4} {'changed':>7} "
        f"{'DynamoDB latest':>15} {'exports latest':>14} {'versions':>8} {'runs':>4} {'files':>5}"
    )
    echo(header)
    for m in result.merchants:
        echo(
            f"  {m.provider:<8} {m.merchant_id:<36} {m.sandbox_orders:>6} {len(m.created_after_backfill):>4} "
            f"{len(m.changed_after_backfill):>7} {m.stored_latest:>15} {m.exported_latest:>14} "
            f"{m.versions_exported:>8} {m.manifests:>4} {m.files:>5}"
        )
    echo("")
    bucket = rt.settings.bucket
    echo(
        f"Exports in s3://{bucket}: {_plural(result.files, 'file')} under exports/orders/v1/, "
        f"{_plural(result.manifests, 'manifest')} under exports/manifests/v1/, "
        f"{_plural(result.records, 'record')}"
    )
    for key in result.manifest_keys[:6]:
        echo(f"  {key}")
    if len(result.manifest_keys) > 6:
        echo(f"  ... and {len(result.manifest_keys) - 6} more")
    echo(f"Elapsed: {result.elapsed_s:.1f} s")
    echo("")
    echo("Explore by hand:")
    echo("  posync local up --sandbox     # a local stack like this one, serving until Ctrl-C")
    echo("  then open http://127.0.0.1:8080/connect/clover in a browser and Approve on the sandbox's page;")
    echo("  in a second terminal:")
    echo("  posync local tick             # what the schedule does: sync every connection")
    echo("  posync connections list")
    echo("  posync exports list")
    echo("  posync exports read --latest --limit 5")
    echo("")
    total = sum(m.sandbox_orders for m in result.merchants)
    if result.ok:
        echo(
            f"OK: all {total:,} sandbox orders of {_plural(len(result.merchants), 'merchant')} are in "
            "DynamoDB at their latest version and in manifested exports"
            f" ({_plural(sum(m.tombstones for m in result.merchants), 'deleted order')} as tombstones)."
        )
        return
    echo("NOT OK: some sandbox orders did not arrive as they should:")
    for m in result.merchants:
        for kind, ids in m.problems().items():
            shown = ", ".join(ids[:SHOWN_PROBLEMS]) + (" ..." if len(ids) > SHOWN_PROBLEMS else "")
            echo(f"  {m.provider} {m.merchant_id}: {len(ids)} {kind}: {shown}")
        if m.differing_fields:
            fields = ", ".join(f"{k} ({n})" for k, n in sorted(m.differing_fields.items()))
            echo(f"  {m.provider} {m.merchant_id}: canonical fields that differ: {fields}")
        if m.sandbox_orders == 0:
            echo(f"  {m.provider} {m.merchant_id}: the sandbox has no orders")


# --------------------------------------------------------------------------- the command


@click.command("demo")
@click.option(
    "--orders",
    type=click.IntRange(1, 5000),
    default=None,
    help="Seeded orders per merchant (default: 300 and 200 for the two Clover merchants, 250 for Poynt).",
)
@click.option(
    "--days",
    type=click.IntRange(1, 365),
    default=120,
    show_default=True,
    help="Spread the seeded orders over this many days (over 90: the 90-day windows matter).",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the sandboxes' merchants and orders.")
@click.option("--verbose", is_flag=True, help="Show the handlers' log lines (JSON, on stderr).")
def demo_command(orders: int | None, days: int, seed: int, verbose: bool) -> None:
    """Connect sandbox merchants through the hosted link, sync, export, and check every order.

    Starts everything in this process (embedded AWS, Clover and Poynt sandboxes, the real
    handlers), connects two Clover merchants and one Poynt merchant through their hosted
    links, drains the backfill, lets the sandboxes create and change orders, runs a
    scheduled sync, and prints a summary. No AWS account, Docker or internet is needed.

    Exits 0 only if every sandbox order is in DynamoDB at its latest version and in
    manifested exports; otherwise it lists what is missing and exits 1.
    """
    plans = DemoOptions().merchants
    if orders is not None:
        plans = tuple(MerchantPlan(p.provider, orders, p.currency) for p in plans)
    options = DemoOptions(merchants=plans, days=days, seed=seed)

    debug = os.environ.get("POSYNC_DEBUG", "") not in ("", "0", "false", "no")
    result = run_demo(options, log_level=logging.INFO if verbose else logging.WARNING, reraise=debug)
    if not result.ok:
        missing = sum(len(ids) for m in result.merchants for ids in m.problems().values())
        reason = result.error or f"{missing} sandbox order(s) did not arrive as they should (listed above)"
        click.echo(f"Error: the demo failed: {reason}", err=True)
    sys.exit(result.exit_code)
