"""``posync probe clover MERCHANT_ID``: read-only checks of the Clover rows of
``docs/provider-contracts.md`` against a real connection (see ``posync.probe``).

The probe lists a sample of the merchant's recent orders once per expansion it needs
(about a dozen GETs in all, one at a time, at most 2 a second: the transport's limiter;
Clover allows 16 per token). It never
writes, and a finding's ``detail`` names fields and counts only: no amounts of a named
order, no token, no card field.

``context(transport, merchant_id)`` builds what the checks share; ``CHECKS`` are the rows,
in the register's order. A row the account has no data for (no card payment, no service
charge, no order older than 90 days) is ``not checkable``, saying what it needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from posync.errors import ProviderError
from posync.probe import Check, Finding
from posync.providers.clover.normalizer import TAX_SCALE, normalize_clover
from posync.providers.clover.probe_lifecycle import CHECKS as LIFECYCLE_CHECKS
from posync.providers.clover.source import LEVEL, LINES, NESTED_CUT, PAYMENTS
from posync.ratelimit import Deadline
from posync.transport import Transport

DAY_MS = 86_400_000
SAMPLE = 100  # orders listed once (no expansion: small) to choose the orders the checks read
CARD_KEYS = ("com.clover.tender.credit_card", "com.clover.tender.debit_card")


@dataclass
class CloverProbe:
    """What the Clover checks share: the connection's transport and the sample's list reads.

    The sample is the merchant's ``SAMPLE`` most recently modified orders of the last 89
    days; each check reads it with the expansion it needs (one list call per expansion,
    cached), so the whole probe costs about a dozen requests.
    """

    transport: Transport
    merchant_id: str
    deadline: Deadline = field(default_factory=lambda: Deadline.after(120))
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    _listed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/v3/merchants/{self.merchant_id}"

    def get(self, path: str, params: Any = None) -> Any:
        return self.transport.get(self.base + path, params, deadline=self.deadline).body

    def status(self, path: str, params: Any = None) -> int:
        """The HTTP status of a GET (4xx answers included)."""
        try:
            return self.transport.get(self.base + path, params, deadline=self.deadline).status
        except ProviderError as exc:
            if exc.status is None:
                raise
            return exc.status

    def listed(self, expand: str = "") -> list[dict[str, Any]]:
        """The sample read with ``expand`` (the same orders each time, by modified time)."""
        if expand not in self._listed:
            params = [
                ("filter", f"modifiedTime>={self.now_ms - 89 * DAY_MS}"),
                ("filter", f"modifiedTime<{self.now_ms}"),
                ("orderBy", "modifiedTime DESC"),
                ("limit", str(SAMPLE)),
            ]
            if expand:
                params.append(("expand", expand))
            body = self.get("/orders", params)
            elements = body.get("elements") if isinstance(body, dict) else None
            self._listed[expand] = [
                o for o in elements or [] if isinstance(o, dict) and isinstance(o.get("id"), str)
            ]
        return self._listed[expand]

    def by_id(self, expand: str) -> dict[str, dict[str, Any]]:
        return {str(o["id"]): o for o in self.listed(expand)}


@dataclass
class _LifecycleView:
    """The lifecycle rows' view of a :class:`CloverProbe` (``probe_lifecycle.ProbeContext``):
    absolute paths, ``(status, body)`` answers (a 404 is an answer there, not a failure)."""

    probe: CloverProbe

    @property
    def merchant_id(self) -> str:
        return self.probe.merchant_id

    def now_ms(self) -> int:
        return self.probe.now_ms

    def get(self, path: str, params: Any = None) -> tuple[int, Any]:
        try:
            reply = self.probe.transport.get(path, params, deadline=self.probe.deadline)
        except ProviderError as exc:
            if exc.status is None:
                raise
            return exc.status, None
        return reply.status, reply.body


def _lifecycle(check: Check) -> Check:
    return Check(check.row, check.summary, lambda p: check.run(_LifecycleView(p)))


def context(transport: Transport, merchant_id: str) -> CloverProbe:
    """The checks' shared context for one connection (its transport reads as the sync does)."""
    return CloverProbe(transport, merchant_id)


def _elements(value: Any) -> list[Any] | None:
    if isinstance(value, dict) and isinstance(value.get("elements"), list):
        return list(value["elements"])
    return None


def _payments(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _elements(order.get("payments")) or [] if isinstance(p, dict)]


def _lines(order: dict[str, Any]) -> list[dict[str, Any]]:
    return [li for li in _elements(order.get("lineItems")) or [] if isinstance(li, dict)]


def _is_card(payment: dict[str, Any]) -> bool:
    tender = payment.get("tender")
    return isinstance(tender, dict) and tender.get("labelKey") in CARD_KEYS


# ----------------------------------------------------------------------------------- checks


def list_order(p: CloverProbe) -> Finding:
    row = "CLV-LIST-1"
    now = int(time.time() * 1000)
    body = p.get(
        "/orders",
        [
            ("filter", f"modifiedTime>={now - 30 * DAY_MS}"),
            ("filter", f"modifiedTime<{now}"),
            ("orderBy", "modifiedTime ASC"),
            ("limit", "20"),
        ],
    )
    elements = _elements(body) if isinstance(body, dict) else None
    if elements is None:
        return Finding(row, "differs", "the list reply has no elements array")
    raw_times = [o.get("modifiedTime") for o in elements if isinstance(o, dict)]
    if not raw_times:
        return Finding(row, "not checkable", "no order modified in the last 30 days")
    times = [t for t in raw_times if isinstance(t, int) and now - 30 * DAY_MS <= t < now]
    if len(times) < len(raw_times):
        bad = raw_times
        return Finding(
            row, "differs", f"{len(bad)} of {len(times)} orders outside the two modifiedTime filters"
        )
    if times != sorted(times):
        return Finding(row, "differs", "orderBy=modifiedTime ASC did not return ascending modified times")
    return Finding(row, "holds", f"{len(times)} orders inside both filters, ascending by modifiedTime")


def window_cut(p: CloverProbe) -> Finding:
    row = "CLV-LIST-3"
    now = int(time.time() * 1000)
    old = p.get(
        "/orders",
        [
            ("filter", f"modifiedTime>={now - 200 * DAY_MS}"),
            ("filter", f"modifiedTime<{now - 91 * DAY_MS}"),
            ("limit", "1"),
        ],
    )
    if not (_elements(old) or []):
        return Finding(row, "not checkable", "no order modified 91-200 days ago to show the 90-day cut")
    wide = p.get(
        "/orders",
        [
            ("filter", f"modifiedTime>={now - 200 * DAY_MS}"),
            ("filter", f"modifiedTime<{now}"),
            ("orderBy", "modifiedTime ASC"),
            ("limit", "1"),
        ],
    )
    first = (_elements(wide) or [{}])[0]
    t = first.get("modifiedTime") if isinstance(first, dict) else None
    if isinstance(t, int) and t >= now - 91 * DAY_MS:
        return Finding(row, "holds", "a 200-day filter returned nothing older than 90 days")
    return Finding(row, "differs", "a 200-day filter returned an order older than 90 days (no cut)")


def unexpanded_absent(p: CloverProbe) -> Finding:
    row = "CLV-EXPAND-1"
    with_lines = [o for o in p.listed("lineItems") if _lines(o)]
    if not with_lines:
        return Finding(row, "not checkable", "no recent order with line items")
    plain = p.by_id("").get(str(with_lines[0]["id"]), {})
    value = plain.get("lineItems")
    if value is None:
        return Finding(row, "holds", "orders with line items listed without expand have no lineItems key")
    if isinstance(value, dict) and "href" in value and "elements" not in value:
        return Finding(row, "differs", "unexpanded lineItems came as an href (profile href-unexpanded)")
    return Finding(row, "differs", "lineItems came expanded without being asked for")


def dotted_paths(p: CloverProbe) -> Finding:
    row = "CLV-EXPAND-2"
    if not any(_elements(li.get("taxRates")) for o in p.listed(LINES) for li in _lines(o)):
        return Finding(row, "not checkable", "no recent order with taxed line items")
    lines = [li for o in p.listed("lineItems.taxRates") for li in _lines(o)]
    if not lines:
        return Finding(row, "differs", "expand=lineItems.taxRates did not bring the line items")
    if not any(_elements(li.get("taxRates")) for li in lines):
        return Finding(row, "differs", "expand=lineItems.taxRates brought line items without tax rates")
    if any(_elements(li.get("modifications")) for li in lines):
        return Finding(row, "differs", "lineItems.taxRates also inlined modifications")
    return Finding(row, "holds", "a dotted path expanded its parent and only that child")


def tender_ref(p: CloverProbe) -> Finding:
    row = "CLV-EXPAND-3"
    payments = [pay for o in p.listed("payments") for pay in _payments(o)]
    if not payments:
        return Finding(row, "not checkable", "no recent order with payments")
    tenders = [pay.get("tender") for pay in payments]
    if all(isinstance(t, dict) and set(t) <= {"id", "href"} for t in tenders):
        return Finding(row, "holds", f"{len(tenders)} payments: without payments.tender the tender is {{id}}")
    return Finding(row, "differs", "the tender came whole without payments.tender (profile tender-inline)")


def card_explicit(p: CloverProbe) -> Finding:
    row = "CLV-EXPAND-4"
    cards = [pay for o in p.listed("payments.tender") for pay in _payments(o) if _is_card(pay)]
    if not cards:
        return Finding(row, "not checkable", "no recent order paid by card")
    if any("cardTransaction" in pay for pay in cards):
        return Finding(row, "differs", "cardTransaction came without being expanded (profile card-inline)")
    expanded = [
        pay
        for o in p.listed("payments.tender,payments.cardTransaction")
        for pay in _payments(o)
        if _is_card(pay)
    ]
    if expanded and all(isinstance(pay.get("cardTransaction"), dict) for pay in expanded):
        return Finding(row, "holds", f"{len(cards)} card payments: cardTransaction only when expanded")
    return Finding(row, "differs", "payments.cardTransaction did not bring every card transaction")


def expand_limit(p: CloverProbe) -> Finding:
    row = "CLV-EXPAND-5"
    sample = p.listed("")
    if not sample:
        return Finding(row, "not checkable", "no recent order")
    status = p.status(
        f"/orders/{sample[0]['id']}", {"expand": "lineItems,lineItems.taxRates,payments,refunds"}
    )
    if status == 400:
        return Finding(row, "holds", "four expansions (dotted paths counted) were refused with 400")
    return Finding(row, "differs", f"four expansions answered {status}")


def service_charge_definition(p: CloverProbe) -> Finding:
    row = "CLV-SC-1"
    charges = [o["serviceCharge"] for o in p.listed(LEVEL) if isinstance(o.get("serviceCharge"), dict)]
    if not charges:
        return Finding(row, "not checkable", "no recent order with a service charge")
    if all("percentageDecimal" in sc and "amount" not in sc for sc in charges):
        return Finding(
            row, "holds", f"{len(charges)} orders: serviceCharge is a definition (percentageDecimal)"
        )
    return Finding(row, "differs", "serviceCharge is not a definition with percentageDecimal")


def service_charge_amounts(p: CloverProbe) -> Finding:
    row = "CLV-SC-3"
    charged = {str(o["id"]) for o in p.listed(LEVEL) if isinstance(o.get("serviceCharge"), dict)}
    pays = [pay for oid, o in p.by_id("payments").items() if oid in charged for pay in _payments(o)]
    if not pays:
        return Finding(row, "not checkable", "no recent paid order with a service charge")
    if all(isinstance((pay.get("serviceCharge") or {}).get("amount"), int) for pay in pays):
        return Finding(row, "holds", f"{len(pays)} payments each carry their serviceCharge amount")
    return Finding(
        row, "differs", "payments carry no serviceCharge amount (profile service-charge-line-basis)"
    )


def tax_rates(p: CloverProbe) -> Finding:
    """Rates in 1/100000 % and the tax left of the total equal to the tax of the rates."""
    row = "CLV-TAX-1"
    level, payments = p.by_id(LEVEL), p.by_id(PAYMENTS)
    checked = off = 0
    for o in p.listed(LINES):
        raw = dict(o)
        for part, names in (
            (level, ("discounts", "serviceCharge", "credits")),
            (payments, ("payments", "refunds")),
        ):
            other = part.get(str(o["id"]), {})
            for name in names:  # what that read brought, and nothing the rows' read left (an href)
                if name in other:
                    raw[name] = other[name]
                else:
                    raw.pop(name, None)
        rates = [
            r.get("rate")
            for li in _lines(raw)
            for r in _elements(li.get("taxRates")) or []
            if isinstance(r, dict)
        ]
        if not rates or raw.get("isVat") or not raw.get("total"):
            continue
        if any(len(_elements(raw.get(n)) or []) >= NESTED_CUT for n in ("lineItems", "payments", "refunds")):
            continue  # a list cut at 100 (CLV-NESTED-1): the sync completes it; the probe reads no more
        if any(not isinstance(r, int) or not 0 <= r <= TAX_SCALE // 2 for r in rates):
            return Finding(row, "differs", "a tax rate is not an integer in 1/100000 of a percent below 50 %")
        try:
            order = normalize_clover(p.merchant_id, raw)
        except Exception as exc:  # noqa: BLE001 - any failure is this row's finding
            return Finding(row, "differs", f"an order did not normalize ({type(exc).__name__})")
        checked += 1
        off += bool(order["discrepancies"])
    if not checked:
        return Finding(row, "not checkable", "no recent tax-exclusive order with taxed lines")
    if off:
        return Finding(
            row, "differs", f"{off} of {checked} orders: tax left of the total differs from the rates"
        )
    return Finding(row, "holds", f"{checked} orders: the tax left of the total equals the tax of the rates")


def rate_limit_headers(p: CloverProbe) -> Finding:
    return Finding(
        "CLV-429-1",
        "not checkable",
        "the probe stays inside the rate limits, so it never sees a 429 (the chaos tests cover the headers)",
    )


CHECKS: tuple[Check, ...] = (
    Check("CLV-LIST-1", "modifiedTime filters AND, orderBy modifiedTime ASC", list_order),
    Check("CLV-LIST-3", "a time filter wider than 90 days is cut to its latest 90", window_cut),
    Check("CLV-EXPAND-1", "a collection not expanded is absent", unexpanded_absent),
    Check("CLV-EXPAND-2", "a dotted path expands its parent and that child", dotted_paths),
    Check("CLV-EXPAND-3", "a payment's tender is {id} unless payments.tender", tender_ref),
    Check("CLV-EXPAND-4", "cardTransaction only with payments.cardTransaction", card_explicit),
    Check("CLV-EXPAND-5", "at most three expansions a call, dotted paths counted", expand_limit),
    Check("CLV-SC-1", "the order's serviceCharge expansion is the definition", service_charge_definition),
    Check("CLV-SC-3", "payments carry their serviceCharge amount", service_charge_amounts),
    Check("CLV-TAX-1", "rates in 1/100000 %; the total's tax equals the rates'", tax_rates),
    Check("CLV-429-1", "429s name the limit in the header's name", rate_limit_headers),
    *(_lifecycle(c) for c in LIFECYCLE_CHECKS),  # deletions, refunds, the sweep, merchant tokens
)
