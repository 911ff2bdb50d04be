"""Seeded synthetic merchants and orders, in the providers' own shapes.

Everything is a pure function of ``(sandbox seed, merchant id, order sequence number, order
version)``: the same seed gives the same merchants, the same order ids and times and the same
bodies, in any process. Merchant creation draws only ids and times (a few microseconds per
order); a body is generated when it is first served and its JSON is cached (``orderbook.py``).

Money is integer minor units of the merchant's currency (cents; yen for JPY, which has none).
All sandbox merchants price tax-exclusive (Clover ``isVat`` false): VAT-inclusive pricing is not
simulated.

Clover totals (``clover_order``), with ``rhu`` = round half up (away from zero for negatives):

- a line item's gross = ``rhu((price + Σ modifications.amount) * unitQty / 1000)`` (``unitQty`` in
  thousandths, absent = 1 unit; modification amounts are per unit);
- its net = gross + Σ its discounts, where an ``amount`` discount is negative cents and a
  ``percentage`` discount is ``-rhu(gross * percentage / 100)``;
- ``S`` = Σ line nets (refunded lines included: a refund does not change the order total);
- ``D`` = Σ order-level discounts (amounts, or ``-rhu(S * percentage / 100)``), ≤ 0;
- tax = Σ over tax rates ``r`` of ``rhu(B_r * (S + D) * r / (S * 10^7))`` where ``B_r`` is the sum of
  the nets of the lines that carry rate ``r`` (rates are in 1/100000 of a percent: 8.875% =
  887500), i.e. order discounts reduce every line's taxable amount pro rata;
- ``total = S + D + tax``.

Paid Clover orders have payments whose ``amount`` sums to ``total`` (tips are extra, in
``tipAmount``; ``taxAmount`` sums to the order's tax); refunds carry their own ``amount`` (tax
included), ``taxAmount`` and ``tipAmount``.

Poynt totals (``poynt_order``): an item's gross = ``rhu(unitPrice * quantity)``; ``items[].discount``
= Σ ``items[].discounts[].amount`` (negative cents); ``items[].tax`` = Σ ``items[].taxes[].amount``
with each tax = ``rhu((gross + discount) * rate / 100)`` (``rate`` a percent as a float);
``items[].fee`` ≥ 0. ``amounts.subTotal`` = Σ gross, ``discountTotal`` = Σ item discounts + Σ
order-level ``discounts[].amount`` (≤ 0; order-level discounts are applied after tax),
``taxTotal`` = Σ item taxes, ``feeTotal`` = Σ item fees, and
``netTotal = subTotal + discountTotal + taxTotal + feeTotal``. A captured SALE (or CAPTURE) has
``orderAmount = netTotal`` and ``transactionAmount = orderAmount + tipAmount + cashbackAmount``.

The mix: 1-8 line items usually and about 1 order in 300 with 101-250; line discounts (amount and
percentage) on ~6% of lines and order discounts on ~5% of orders; modifications; weighed items
(``unitQty``); tax-exempt items; tips; cash, credit and debit tenders; split payments; refunds on
~3% of paid orders (full or one line); ~1% hidden Clover orders (``state`` null); ~8% open
orders; a few percent of orders closing in the same millisecond as another.
"""

# ruff: noqa: S311  (seeded, reproducible test data: not for cryptography)
from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from posync_local.sandbox.clover_profile import DEFAULT as DEFAULT_PROFILE
from posync_local.sandbox.clover_profile import CloverProfile
from posync_local.sandbox.orderbook import OrderState

DAY_MS = 86_400_000
SUPPORTED_CURRENCIES = ("USD", "CAD", "EUR", "GBP", "JPY")


def rhu(num: int, den: int) -> int:
    """``num / den`` rounded half up (half away from zero for negatives); ``den`` > 0."""
    if num >= 0:
        return (2 * num + den) // (2 * den)
    return -((-2 * num + den) // (2 * den))


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def id13(rng: random.Random) -> str:
    """A Clover-style id: 13 upper-case letters and digits."""
    return base64.b32encode(rng.getrandbits(64).to_bytes(8, "big"))[:13].decode()


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds: ``2024-05-01T12:34:56.789Z``."""
    s, rem = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{rem:03d}Z"


@dataclass(frozen=True)
class CurrencyProfile:
    code: str
    tax_name: str
    tax_rate: int  # 1/100000 of a percent
    price_lo: int
    price_hi: int
    price_step: int
    cashback: int


PROFILES: dict[str, CurrencyProfile] = {
    "USD": CurrencyProfile("USD", "NY State + City Sales Tax", 887_500, 150, 2_500, 5, 2_000),
    "CAD": CurrencyProfile("CAD", "HST", 1_300_000, 150, 2_500, 5, 2_000),
    "EUR": CurrencyProfile("EUR", "TVA", 2_000_000, 150, 2_500, 10, 0),
    "GBP": CurrencyProfile("GBP", "VAT", 2_000_000, 120, 2_200, 10, 0),
    "JPY": CurrencyProfile("JPY", "Consumption tax", 1_000_000, 150, 3_000, 10, 0),
}

_ITEM_NAMES = (
    "Espresso", "Cappuccino", "Latte", "Cold Brew", "Chai Latte", "Hot Chocolate", "Green Tea",
    "Croissant", "Pain au Chocolat", "Blueberry Muffin", "Bagel", "Avocado Toast", "Club Sandwich",
    "Caesar Salad", "Tomato Soup", "Margherita Pizza", "Cheeseburger", "Veggie Burger", "Fries",
    "Onion Rings", "Chicken Wrap", "Falafel Bowl", "Pad Thai", "Ramen", "Sushi Set", "Cheesecake",
    "Brownie", "Gelato", "Lemonade", "Sparkling Water", "House Wine", "Craft Beer", "T-Shirt",
    "Tote Bag", "Gift Box", "Candle",
)  # fmt: skip
_WEIGHED = (("Coffee Beans", "lb"), ("Loose Leaf Tea", "oz"), ("Olives", "lb"), ("Cheese", "lb"))
_MODIFIERS = (("Oat milk", 60), ("Extra shot", 75), ("Large", 100), ("Add cheese", 90), ("Gluten free", 150))
_DISCOUNTS = (("Happy hour", 10), ("Staff", 25), ("Loyalty", 15), ("Manager comp", 50), ("Student", 10))
_CARDS = ("VISA", "MC", "AMEX", "DISCOVER")
_POYNT_CARDS = ("VISA", "MASTERCARD", "AMERICAN_EXPRESS", "DISCOVER")
_TIP_PCT = (10, 15, 18, 20, 22)
_LINE_COUNTS = (1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 8)


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    product_id: str
    name: str
    sku: str
    price: int
    taxable: bool
    unit: str | None  # weighed items: price per unit, quantity in thousandths


@dataclass
class MerchantProfile:
    """A merchant's fixed setup: currency, catalog, staff, devices, tax."""

    merchant_id: str
    name: str
    currency: str
    seed: int
    catalog: list[CatalogItem]
    employees: list[str]
    devices: list[str]
    store_id: str
    tax_rate: int
    tax_name: str
    tax_id: str
    tender_ids: dict[str, str]
    poynt_employees: list[int] = field(default_factory=list)
    poynt_uid: int = 0
    shared: dict[str, Any] = field(default_factory=dict)


def make_profile(
    provider: str, merchant_id: str, currency: str, sandbox_seed: int, n: int
) -> MerchantProfile:
    if currency not in PROFILES:
        raise ValueError(f"currency must be one of {SUPPORTED_CURRENCIES}, got {currency!r}")
    cp = PROFILES[currency]
    seed = derive_seed(sandbox_seed, provider, merchant_id)
    rng = random.Random(seed)
    steps = (cp.price_hi - cp.price_lo) // cp.price_step
    catalog = []
    for i, name in enumerate(_ITEM_NAMES):
        price = cp.price_lo + cp.price_step * int(rng.random() * steps)
        catalog.append(
            CatalogItem(id13(rng), uuid4(rng), name, f"SKU-{1000 + i}", price, rng.random() > 0.12, None)
        )
    for i, (name, unit) in enumerate(_WEIGHED):
        price = cp.price_lo * 4 + cp.price_step * int(rng.random() * steps)
        catalog.append(CatalogItem(id13(rng), uuid4(rng), name, f"SKU-{2000 + i}", price, True, unit))
    prof = MerchantProfile(
        merchant_id=merchant_id,
        name=f"Sandbox {('Cafe', 'Bistro', 'Market', 'Bakery')[n % 4]} {n + 1}",
        currency=currency,
        seed=seed,
        catalog=catalog,
        employees=[id13(rng) for _ in range(4)],
        devices=[id13(rng) for _ in range(2)],
        store_id=uuid4(rng),
        tax_rate=cp.tax_rate,
        tax_name=cp.tax_name,
        tax_id=id13(rng),
        tender_ids={k: id13(rng) for k in ("credit", "debit", "cash")},
        poynt_employees=[5_000_000 + int(rng.random() * 999_999) for _ in range(4)],
        poynt_uid=30_000_000 + int(rng.random() * 9_999_999),
    )
    prof.shared = {
        "tax": {"id": prof.tax_id, "name": cp.tax_name, "rate": cp.tax_rate, "isDefault": True},
        "tenders": {
            "credit": {
                "id": prof.tender_ids["credit"],
                "label": "Credit Card",
                "labelKey": "com.clover.tender.credit_card",
            },
            "debit": {
                "id": prof.tender_ids["debit"],
                "label": "Debit Card",
                "labelKey": "com.clover.tender.debit_card",
            },
            "cash": {"id": prof.tender_ids["cash"], "label": "Cash", "labelKey": "com.clover.tender.cash"},
        },
        "poynt_devices": [f"urn:tid:{uuid4(rng)}" for _ in range(2)],
    }
    return prof


def skeleton(
    provider: str, prof: MerchantProfile, n: int, days: int, anchor_ms: int, *, first_seq: int = 0
) -> list[OrderState]:
    """Ids and times of ``n`` orders created over the ``days`` days before ``anchor_ms`` (the newest a
    minute before it).

    Most orders close within minutes of being opened, some within hours, a few days later;
    about 4% close in the same millisecond as the order before them. Never later than the anchor.
    """
    rng = random.Random(derive_seed(prof.seed, "skeleton", first_seq, n, days))
    end = anchor_ms - 60_000
    start = end - days * DAY_MS
    created = sorted(start + int(rng.random() * (end - start)) for _ in range(n))
    out: list[OrderState] = []
    prev_mod = -1
    new_id = id13 if provider == "clover" else uuid4
    for k, c in enumerate(created):
        u = rng.random()
        if u < 0.70:
            delta = int(rng.random() * 300_000)
        elif u < 0.92:
            delta = int(rng.random() * 7_200_000)
        else:
            delta = int(rng.random() * 3 * DAY_MS)
        m = min(c + delta, anchor_ms)
        if prev_mod >= c and rng.random() < 0.04:
            m = prev_mod  # closed in the same millisecond as the previous order
            out[-1] = out[-1]._replace(modified_ms=m, base_modified_ms=m)
        out.append(OrderState(first_seq + k, new_id(rng), c, m, m))
        prev_mod = m
    return out


# ---------------------------------------------------------------------------------------------
# Templates: generated order bodies with slots for the per-order ids and times
#
# Each merchant has a pool of TEMPLATE_POOL order shapes (line items, discounts, taxes, tenders,
# tips, refunds, states), generated from the merchant's seed; order ``seq`` uses shape
# ``seq % TEMPLATE_POOL``, so merchants of up to that many orders never repeat a shape. A shape
# is serialized once per (expand set, variant) into a %-format string whose slots are the order's
# own id, nested ids, times and note; rendering an order is one string format (a few µs), which
# is what lets one core serve 1000-order pages at the rate limit.

TEMPLATE_POOL = 2048
FULL = "full"  # the view key of a complete order (every nested list whole)
_SLOT = re.compile(r'"@@[nj]:(\w+)@@"|@@s:(\w+)@@')
_M40 = (1 << 40) - 1
_M128 = (1 << 128) - 1
_IDK = tuple(f"i{k}" for k in range(4096))
_SUF = tuple(f"{k:03X}" for k in range(4096))
_DAY_CACHE: dict[int, str] = {}


def _n(name: str) -> str:
    """A raw JSON value slot (a number, null or an already quoted string)."""
    return f"@@n:{name}@@"


def _s(name: str) -> str:
    """A slot inside a JSON string."""
    return f"@@s:{name}@@"


class _Ids:
    """Hands out the nested-id slots ``i0``, ``i1``, ... in generation order."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        k = self.n
        self.n += 1
        return f"@@s:i{k}@@"


def compile_template(obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":")).replace("%", "%%")
    return _SLOT.sub(lambda m: f"%({m.group(1) or m.group(2)})s", text)


def fast_iso_ms(ms: int) -> str:
    """``iso_ms`` with the date part cached per day."""
    day, rem = divmod(ms, DAY_MS)
    date = _DAY_CACHE.get(day)
    if date is None:
        date = _DAY_CACHE[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    s, milli = divmod(rem, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{date}{h:02d}:{m:02d}:{s:02d}.{milli:03d}Z"


@dataclass
class TemplateMeta:
    n_ids: int = 0
    was_open: bool = False  # an open order: its first modification closes (pays) it
    refund: bool = False  # refunded some time after payment
    client_delta: int = 0


@dataclass
class Template:
    meta: TemplateMeta
    tidx: int
    compiled: dict[object, str] = field(default_factory=dict)


class OrderFactory:
    """Renders one merchant's orders from its template pool. Thread-safe (compiles are idempotent)."""

    provider = ""

    def __init__(self, prof: MerchantProfile) -> None:
        self.prof = prof
        self.base = ""  # the sandbox URL, for hrefs
        self._templates: dict[int, Template] = {}
        self._key40 = prof.seed & _M40
        self._key128 = derive_seed(prof.seed, "ids128") << 64 | derive_seed(prof.seed, "ids128b")
        # Refunds added after the order was generated (``refund_later``), per order id: shown on
        # top of the generated order by :meth:`render`, with its deletion (``deleted_ms``).
        self.later_refunds: dict[str, list[dict[str, Any]]] = {}
        self.later_payment_state: dict[str, str] = {}

    def symbolic(self, tidx: int, closed: bool, touched: bool) -> tuple[dict[str, Any], TemplateMeta]:
        raise NotImplementedError

    def view(self, full: dict[str, Any], key: object) -> Any:
        return full

    def values(self, tm: Template, st: OrderState) -> dict[str, str]:
        raise NotImplementedError

    def template(self, seq: int) -> Template:
        tidx = seq % TEMPLATE_POOL
        t = self._templates.get(tidx)
        if t is None:
            _, meta = self.symbolic(tidx, False, False)
            t = self._templates.setdefault(tidx, Template(meta, tidx))
        return t

    def render(self, st: OrderState, key: object = FULL) -> str:
        """The order's JSON for a view key (Clover: a frozenset of expanded fields, or FULL)."""
        t = self.template(st.seq)
        closed = t.meta.was_open and st.first_touch_ms is not None
        touched = st.version > 0
        ck = (key, closed, touched)
        fmt = t.compiled.get(ck)
        if fmt is None:
            sym, _ = self.symbolic(t.tidx, closed, touched)
            fmt = t.compiled.setdefault(ck, compile_template(self.view(sym, key)))
        text = fmt % self.values(t, st)
        if st.deleted_ms is not None or st.id in self.later_refunds:
            return self.overlay(text, st, key)
        return text

    def overlay(self, text: str, st: OrderState, key: object) -> str:
        """The rare orders changed after generation: deleted, or refunded later."""
        return text

    def full(self, st: OrderState) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.render(st, FULL))
        return out

    def id_prefix(self, seq: int) -> str:
        """10 characters unique per (merchant, order): a bijection of ``seq`` on 40 bits."""
        return format(((seq * 0x9E3779B97F4A7C15) & _M40) ^ self._key40, "010X")

    def nested_uuid(self, seq: int, k: int) -> str:
        x = ((((seq << 12 | k) * 0x9E3779B97F4A7C15F39CC0605CEDC835) & _M128) ^ self._key128) & _M128
        h = f"{x:032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def _rng(self, tidx: int) -> random.Random:
        return random.Random(self.prof.seed * 1_000_003 + tidx)


def _line_count(r: Callable[[], float]) -> int:
    if r() < 1 / 300:
        return 101 + int(r() * 150)
    return _LINE_COUNTS[int(r() * len(_LINE_COUNTS))]


# ---------------------------------------------------------------------------------------------
# Clover

CLOVER_NESTED = {
    "lineItems": "line_items",
    "payments": "payments",
    "refunds": "refunds",
    "discounts": "discounts",
}
CLOVER_EXPANDABLE = frozenset((*CLOVER_NESTED, "credits", "serviceCharge"))
LINE_CHILDREN = ("modifications", "discounts", "taxRates")
PAYMENT_CHILDREN = ("tender", "cardTransaction")
NESTED_CUT = 100


def _service_charge(prof: MerchantProfile) -> dict[str, Any]:
    """The merchant's service charge definition (Clover: ``percentageDecimal`` = percent x 10,000)."""
    rng = random.Random(derive_seed(prof.seed, "service-charge"))
    return {"id": id13(rng), "name": "Service charge", "enabled": True, "percentageDecimal": 180_000}


class CloverFactory(OrderFactory):
    """Clover v3 orders (money in cents, times epoch ms, nested lists ``{"elements": [...]}``)."""

    provider = "clover"
    profile: CloverProfile = DEFAULT_PROFILE  # set by the sandbox, with set_profile

    def set_profile(self, profile: CloverProfile) -> None:
        """Serve another reading of Clover: bodies compiled under the old one are dropped."""
        self.profile = profile
        self._templates.clear()

    def symbolic(self, tidx: int, closed: bool, touched: bool) -> tuple[dict[str, Any], TemplateMeta]:
        prof = self.prof
        rng = self._rng(tidx)
        r = rng.random
        ids = _Ids()
        oid = _s("oid")
        created = _n("created")
        client_created = _n("ccreated")
        meta = TemplateMeta(client_delta=int(r() * 2_000))
        employee = {"id": prof.employees[int(r() * len(prof.employees))]}
        device = {"id": prof.devices[int(r() * len(prof.devices))]}
        u = r()
        state = "hidden" if u < 0.01 else "open" if u < 0.09 else "paid" if u < 0.12 else "locked"
        meta.was_open = state == "open"
        if state == "open" and closed:
            state = "locked"
        order_ref = {"id": oid}
        tax_obj = prof.shared["tax"]
        catalog = prof.catalog
        n_cat = len(catalog)

        lines: list[dict[str, Any]] = []
        nets: list[int] = []
        taxed: list[bool] = []
        for _ in range(_line_count(r)):
            c = catalog[int(r() * n_cat)] if r() < 0.97 else catalog[-1 - int(r() * len(_WEIGHED))]
            li: dict[str, Any] = {
                "id": ids(),
                "orderRef": order_ref,
                "item": {"id": c.item_id},
                "name": c.name,
                "alternateName": "",
                "price": c.price,
                "itemCode": c.sku,
                "printed": False,
                "createdTime": created,
                "orderClientCreatedTime": client_created,
                "exchanged": False,
                "refunded": False,
                "isRevenue": True,
            }
            qty = 1000
            if c.unit is not None:
                qty = 250 + 5 * int(r() * 550)
                li["unitQty"] = qty
                li["unitName"] = c.unit
            elif r() < 0.04:
                qty = 2000 + 1000 * int(r() * 2)
                li["unitQty"] = qty
            mods_total = 0
            if c.unit is None and r() < 0.18:
                mods = []
                for _ in range(1 + int(r() * 2)):
                    name, amount = _MODIFIERS[int(r() * len(_MODIFIERS))]
                    mods.append({"id": ids(), "name": name, "amount": amount})
                    mods_total += amount
                li["modifications"] = {"elements": mods}
            gross = rhu((c.price + mods_total) * qty, 1000)
            net = gross
            if r() < 0.06:
                name, pct = _DISCOUNTS[int(r() * len(_DISCOUNTS))]
                if r() < 0.5:
                    amount = -min(gross // 2, rhu(gross * pct, 100))
                    disc: dict[str, Any] = {"id": ids(), "name": name, "amount": amount}
                else:
                    amount = -rhu(gross * pct, 100)
                    disc = {"id": ids(), "name": name, "percentage": pct}
                net += amount
                li["discounts"] = {"elements": [disc]}
            if c.taxable:
                li["taxRates"] = {"elements": [tax_obj]}
            lines.append(li)
            nets.append(net)
            taxed.append(c.taxable)

        subtotal = sum(nets)
        order_discounts: list[dict[str, Any]] = []
        disc_total = 0
        if r() < 0.05:
            name, pct = _DISCOUNTS[int(r() * len(_DISCOUNTS))]
            if r() < 0.5:
                disc_total = -rhu(subtotal * pct, 100)
                order_discounts.append({"id": ids(), "name": name, "percentage": pct})
            else:
                disc_total = -min(subtotal // 4, rhu(subtotal * pct, 100))
                order_discounts.append({"id": ids(), "name": name, "amount": disc_total})
        base = sum(n for n, t in zip(nets, taxed, strict=True) if t)
        tax = rhu(base * (subtotal + disc_total) * prof.tax_rate, subtotal * 10_000_000)
        # A service charge on ~6% of orders (drawn apart, so the other draws stay as they were):
        # a percentage of the nets (after order discounts, or not: the profile's basis), untaxed.
        service_charge = 0
        sc_def = _service_charge(prof)
        if random.Random(derive_seed(prof.seed, "sc", tidx)).random() < 0.06 and state != "hidden":
            basis = subtotal + (disc_total if self.profile.service_charge_basis == "discounted" else 0)
            service_charge = rhu(max(basis, 0) * sc_def["percentageDecimal"], 1_000_000)
            order_sc: dict[str, Any] | None = sc_def
        else:
            order_sc = None
        total = subtotal + disc_total + service_charge + tax

        # the payment plan is drawn for every order, so closing an open one keeps the draws stable
        t = r()
        tender = "credit" if t < 0.55 else "debit" if t < 0.70 else "cash"
        tip = 0
        if (tender != "cash" and r() < 0.45) or r() < 0.08:
            tip = rhu(total * _TIP_PCT[int(r() * len(_TIP_PCT))], 100)
        split = r() < 0.05
        cashback = PROFILES[prof.currency].cashback if tender == "debit" and r() < 0.05 else 0
        card = (_CARDS[int(r() * len(_CARDS))], f"{int(r() * 10_000):04d}")
        u2 = r()
        refund_kind = "full" if u2 < 0.015 else "line" if u2 < 0.03 else None
        refund_line = int(r() * len(lines))
        payment_ids = (ids(), ids())
        refund_id = ids()
        titled = r() < 0.2
        table = 1 + int(r() * 30)
        meta.n_ids = ids.n
        meta.refund = refund_kind is not None and state not in ("hidden", "open")

        order: dict[str, Any] = {
            "href": f"{_s('base')}/v3/merchants/{prof.merchant_id}/orders/{oid}",
            "id": oid,
            "currency": prof.currency,
            "employee": employee,
            "total": total,
            "title": f"Table {table}" if titled else "",
        }
        if touched:
            order["note"] = _n("note")
        order.update(
            {
                "taxRemoved": False,
                "isVat": False,
                "state": None if state == "hidden" else state,
                "manualTransaction": False,
                "groupLineItems": False,
                "testMode": False,
                "createdTime": created,
                "clientCreatedTime": client_created,
                "modifiedTime": _n("modified"),
                "device": device,
                "lineItems": {"elements": lines},
            }
        )
        if order_discounts:
            order["discounts"] = {"elements": order_discounts}
        if order_sc is not None:
            order["serviceCharge"] = order_sc
        if state in ("hidden", "open"):
            if state == "open":
                order["paymentState"] = "OPEN"
            return order, meta

        paid_at = _n("paid")
        amounts = [total] if not split else [total // 2, total - total // 2]
        taxes = [tax] if not split else [tax // 2, tax - tax // 2]
        tips = [tip] if not split else [tip // 2, tip - tip // 2]
        charges = (
            [service_charge] if not split else [service_charge // 2, service_charge - service_charge // 2]
        )
        payments = []
        for i, amount in enumerate(amounts):
            p: dict[str, Any] = {
                "id": payment_ids[i],
                "order": order_ref,
                "device": device,
                "tender": prof.shared["tenders"][tender],
                "amount": amount,
                "tipAmount": tips[i],
                "taxAmount": taxes[i],
                "cashbackAmount": cashback if i == 0 else 0,
                "result": "SUCCESS",
                "createdTime": paid_at,
                "clientCreatedTime": paid_at,
                "modifiedTime": paid_at,
                "employee": employee,
            }
            if order_sc is not None and self.profile.payment_service_charge:
                p["serviceCharge"] = {"id": sc_def["id"], "name": sc_def["name"], "amount": charges[i]}
            if tender != "cash":
                p["cardTransaction"] = {
                    "cardType": card[0],
                    "last4": card[1],
                    "type": "AUTH",
                    "state": "CLOSED",
                }
            payments.append(p)
        order["payments"] = {"elements": payments}
        order["paymentState"] = "PAID"
        if refund_kind is not None:
            first = payments[0]
            if refund_kind == "full":
                amount, rtax, rtip = first["amount"], first["taxAmount"], first["tipAmount"]
                for li in lines:
                    li["refunded"] = True
                order["paymentState"] = "REFUNDED" if not split else "PARTIALLY_REFUNDED"
            else:
                share = rhu(nets[refund_line] * (subtotal + disc_total), subtotal)
                rtax = rhu(share * prof.tax_rate, 10_000_000) if taxed[refund_line] else 0
                amount = min(share + rtax, first["amount"])
                rtax = min(rtax, first["taxAmount"], amount)
                rtip = 0
                lines[refund_line]["refunded"] = True
                order["paymentState"] = "PARTIALLY_REFUNDED"
            refund_at = _n("refund")
            order["refunds"] = {
                "elements": [
                    {
                        "id": refund_id,
                        "orderRef": order_ref,
                        "amount": amount,
                        "taxAmount": rtax,
                        "tipAmount": rtip,
                        "createdTime": refund_at,
                        "clientCreatedTime": refund_at,
                        "payment": {"id": first["id"]},
                        "employee": employee,
                        "device": device,
                    }
                ]
            }
        return order, meta

    def view(self, full: dict[str, Any], key: object) -> Any:
        """What the API shows for ``expand`` paths ``key`` (a frozenset), under the profile.

        Expansion is explicit: a collection not named is absent (profile ``unexpanded``:
        ``{"href"}``); a dotted path (``lineItems.taxRates``) expands its parent and that
        child; expanded lists stop at 100 items; a list the order does not have is left out.
        A payment's ``tender`` is ``{id}`` and its ``cardTransaction`` absent unless expanded
        (or inlined by the profile). FULL: every list whole, every child expanded.
        """
        if key == FULL:
            return full
        assert isinstance(key, frozenset)
        out = dict(full)
        href = full["href"]
        for name, path in (*CLOVER_NESTED.items(), ("credits", "credits")):
            subs = frozenset(k.split(".", 1)[1] for k in key if k.startswith(name + "."))
            if name in key or subs:
                v = full.get(name)
                if v is None:
                    continue
                items = v["elements"][:NESTED_CUT]
                if name == "lineItems":
                    items = [self.line_view(li, subs) for li in items]
                elif name == "payments":
                    items = [self.payment_view(p, subs) for p in items]
                out[name] = {"elements": items}
            elif self.profile.unexpanded == "href":
                out[name] = {"href": f"{href}/{path}"}
            else:
                out.pop(name, None)
        sc = full.get("serviceCharge")
        if sc is not None and "serviceCharge" not in key:
            if self.profile.unexpanded == "href":
                out["serviceCharge"] = {"id": sc["id"]}
            else:
                del out["serviceCharge"]
        return out

    def line_view(self, li: dict[str, Any], subs: frozenset[str]) -> dict[str, Any]:
        """A line item with only the children named in ``subs`` (modifications, discounts, taxRates)."""
        out = dict(li)
        for child in LINE_CHILDREN:
            if child in out and child not in subs:
                if self.profile.unexpanded == "href":
                    out[child] = {
                        "href": f"{_s('base')}/v3/merchants/{self.prof.merchant_id}/line_items/{child}"
                    }
                else:
                    del out[child]
        return out

    def payment_view(self, p: dict[str, Any], subs: frozenset[str]) -> dict[str, Any]:
        """A payment whose ``tender`` is ``{id}`` unless ``tender`` is in ``subs`` (or the profile
        inlines it), and whose ``cardTransaction`` is absent unless expanded (or inlined)."""
        out = dict(p)
        if "tender" not in subs and self.profile.tender == "ref":
            out["tender"] = {"id": p["tender"]["id"]}
        if (
            "cardTransaction" in out
            and "cardTransaction" not in subs
            and self.profile.card_transaction == "absent"
        ):
            del out["cardTransaction"]
        return out

    def overlay(self, text: str, st: OrderState, key: object) -> str:
        """``deletedTimestamp`` on a deleted order; refunds added later in ``refunds`` (when
        expanded) with the ``paymentState`` they leave."""
        order = json.loads(text)
        if st.deleted_ms is not None:
            order["deletedTimestamp"] = st.deleted_ms
        later = self.later_refunds.get(st.id)
        if later:
            refunds = order.get("refunds")
            if key == FULL or (isinstance(key, frozenset) and "refunds" in key):
                old = refunds.get("elements", []) if isinstance(refunds, dict) else []
                order["refunds"] = {"elements": [*old, *later]}
            order["paymentState"] = self.later_payment_state.get(st.id, "PARTIALLY_REFUNDED")
        return json.dumps(order, separators=(",", ":"))

    def values(self, tm: Template, st: OrderState) -> dict[str, str]:
        m = tm.meta
        created = st.created_ms
        closed = st.first_touch_ms if m.was_open and st.first_touch_ms is not None else st.base_modified_ms
        paid = created + (closed - created) // 3 if m.refund else closed
        vals = {
            "base": self.base,
            "oid": st.id,
            "created": str(created),
            "ccreated": str(created - m.client_delta),
            "modified": str(st.modified_ms),
            "paid": str(paid),
            "refund": str(closed),
            "note": f'"Updated (version {st.version + 1})"',
        }
        # nested ids: 13 characters, a per-order prefix and the slot number (unique per merchant)
        prefix = self.id_prefix(st.seq)
        n = m.n_ids
        vals.update(zip(_IDK[:n], [prefix + s for s in _SUF[:n]], strict=True))
        return vals


# ---------------------------------------------------------------------------------------------
# Poynt


class PoyntFactory(OrderFactory):
    """Poynt orders (``items``, ``amounts``, ``transactions``; cents; ISO 8601 UTC times)."""

    provider = "poynt"

    def symbolic(self, tidx: int, closed: bool, touched: bool) -> tuple[dict[str, Any], TemplateMeta]:
        prof = self.prof
        rng = self._rng(tidx)
        r = rng.random
        created_at = _s("created")
        meta = TemplateMeta()
        u = r()
        status = "OPENED" if u < 0.08 else "CANCELLED" if u < 0.10 else "COMPLETED"
        meta.was_open = status == "OPENED"
        if status == "OPENED" and closed:
            status = "COMPLETED"
        catalog = prof.catalog
        n_cat = len(catalog)
        rate_pct = prof.tax_rate / 100_000
        items: list[dict[str, Any]] = []
        sub_total = disc_total = tax_total = fee_total = 0
        for k in range(_line_count(r)):
            c = catalog[int(r() * n_cat)] if r() < 0.97 else catalog[-1 - int(r() * len(_WEIGHED))]
            if c.unit is not None:
                qty = 250 + 5 * int(r() * 550)
                unit = "POUND" if c.unit == "lb" else "OUNCE"
            else:
                qty = 1000 * (1 + int(r() * 3)) if r() < 0.15 else 1000
                unit = "EACH"
            gross = rhu(c.price * qty, 1000)
            discounts = []
            discount = 0
            if r() < 0.06:
                name, pct = _DISCOUNTS[int(r() * len(_DISCOUNTS))]
                discount = -min(gross // 2, rhu(gross * pct, 100))
                discounts.append({"amount": discount, "customName": name})
            taxes = []
            tax = 0
            if c.taxable:
                tax = rhu((gross + discount) * prof.tax_rate, 10_000_000)
                taxes.append({"id": prof.tax_id, "type": "SALES", "rate": rate_pct, "amount": tax})
            fee = 5 * qty // 1000 if c.name in ("Sparkling Water", "Craft Beer") else 0
            items.append(
                {
                    "id": k + 1,
                    "name": c.name,
                    "sku": c.sku,
                    "productId": c.product_id,
                    "quantity": qty / 1000,
                    "unitPrice": c.price,
                    "unitOfMeasure": unit,
                    "status": "ORDERED" if status == "OPENED" else "FULFILLED",
                    "discount": discount,
                    "tax": tax,
                    "fee": fee,
                    "taxExempted": not c.taxable,
                    "taxes": taxes,
                    "discounts": discounts,
                    "createdAt": created_at,
                    "updatedAt": created_at,
                }
            )
            sub_total += gross
            disc_total += discount
            tax_total += tax
            fee_total += fee
        order_discounts = []
        if r() < 0.05:
            name, pct = _DISCOUNTS[int(r() * len(_DISCOUNTS))]
            amount = -rhu((sub_total + disc_total) * pct, 100)
            order_discounts.append({"amount": amount, "customName": name})
            disc_total += amount
        net_total = sub_total + disc_total + tax_total + fee_total

        cash = r() >= 0.70
        tip = 0
        if not cash and r() < 0.45:
            tip = rhu(net_total * _TIP_PCT[int(r() * len(_TIP_PCT))], 100)
        auth_capture = r() < 0.12
        voided_first = r() < 0.01
        card = (_POYNT_CARDS[int(r() * len(_POYNT_CARDS))], f"{int(r() * 10_000):04d}")
        u2 = r()
        refund_kind = "full" if u2 < 0.015 else "partial" if u2 < 0.03 else None
        refund_frac = 0.2 + 0.6 * r()
        employee = prof.poynt_employees[int(r() * len(prof.poynt_employees))]
        device = prof.shared["poynt_devices"][int(r() * 2)]
        meta.n_ids = 4
        meta.refund = refund_kind is not None and status == "COMPLETED"

        currency = prof.currency
        amounts: dict[str, Any] = {
            "subTotal": sub_total,
            "discountTotal": disc_total,
            "feeTotal": fee_total,
            "taxTotal": tax_total,
            "netTotal": net_total,
            "currency": currency,
        }
        order: dict[str, Any] = {
            "id": _s("oid"),
            "createdAt": created_at,
            "updatedAt": _s("updated"),
            "orderNumber": _s("num"),
            "context": {
                "businessId": prof.merchant_id,
                "storeId": prof.store_id,
                "storeDeviceId": device,
                "source": "INSTORE",
                "employeeId": employee,
            },
            "statuses": {
                "status": status,
                "fulfillmentStatus": "FULFILLED" if status == "COMPLETED" else "NONE",
                "transactionStatusSummary": "NONE",
            },
            "amounts": amounts,
            "items": items,
            "discounts": order_discounts,
            "transactions": [],
            "taxExempted": False,
            "valid": True,
        }
        if touched:
            order["notes"] = _n("note")
        if status == "OPENED":
            return order, meta

        paid_at = _s("paid")

        def txn(
            k: int, action: str, tstatus: str, amount: int, tip_amt: int, *, parent: int | None = None
        ) -> dict[str, Any]:
            x: dict[str, Any] = {
                "id": _s(f"i{k}"),
                "action": action,
                "status": tstatus,
                "amounts": {
                    "transactionAmount": amount + tip_amt,
                    "orderAmount": amount,
                    "tipAmount": tip_amt,
                    "cashbackAmount": 0,
                    "currency": currency,
                },
                "fundingSource": (
                    {"type": "CASH"}
                    if cash
                    else {"type": "CREDIT_DEBIT", "card": {"type": card[0], "numberLast4": card[1]}}
                ),
                "createdAt": paid_at,
                "updatedAt": paid_at,
            }
            if parent is not None:
                x["parentId"] = _s(f"i{parent}")
            return x

        txns = order["transactions"]
        if status == "CANCELLED":
            txns.append(txn(0, "AUTHORIZE", "VOIDED", net_total, 0))
            order["statuses"]["transactionStatusSummary"] = "CANCELED"
            return order, meta
        if voided_first and not cash:
            txns.append(txn(3, "AUTHORIZE", "VOIDED", net_total, 0))
        if auth_capture and not cash:
            txns.append(txn(0, "AUTHORIZE", "CAPTURED", net_total, tip))
            txns.append(txn(1, "CAPTURE", "CAPTURED", net_total, tip, parent=0))
            captured = txns[-1]
        else:
            txns.append(txn(0, "SALE", "CAPTURED", net_total, tip))
            captured = txns[-1]
        amounts["capturedTotals"] = {
            "currency": currency,
            "transactionAmount": net_total + tip,
            "orderAmount": net_total,
            "tipAmount": tip,
            "cashbackAmount": 0,
        }
        summary = "COMPLETED"
        if refund_kind is not None:
            refunded = net_total if refund_kind == "full" else max(1, int(net_total * refund_frac))
            rtip = tip if refund_kind == "full" else 0
            rx = txn(2, "REFUND", "REFUNDED", refunded, rtip)
            rx["parentId"] = captured["id"]
            rx["createdAt"] = rx["updatedAt"] = _s("refund")
            txns.append(rx)
            summary = "REFUNDED" if refund_kind == "full" else "PARTIALLY_REFUNDED"
            if refund_kind == "full":
                captured["status"] = "REFUNDED"
        order["statuses"]["transactionStatusSummary"] = summary
        return order, meta

    def values(self, tm: Template, st: OrderState) -> dict[str, str]:
        m = tm.meta
        created = st.created_ms
        closed = st.first_touch_ms if m.was_open and st.first_touch_ms is not None else st.base_modified_ms
        paid = created + (closed - created) // 3 if m.refund else closed
        seq = st.seq
        return {
            "oid": st.id,
            "num": str(seq + 1),
            "created": fast_iso_ms(created),
            "updated": fast_iso_ms(st.modified_ms),
            "paid": fast_iso_ms(paid),
            "refund": fast_iso_ms(closed),
            "note": f'"Updated (version {st.version + 1})"',
            "i0": self.nested_uuid(seq, 0),
            "i1": self.nested_uuid(seq, 1),
            "i2": self.nested_uuid(seq, 2),
            "i3": self.nested_uuid(seq, 3),
        }


# ---------------------------------------------------------------------------------------------
# Clover ground-truth figures, computed here apart from posync's normalizer

CLOVER_CARD_BRANDS = {"MC": "MASTERCARD"}  # the canonical brand of each cardType the sandbox sends
CLOVER_TENDERS = {
    "com.clover.tender.credit_card": "card",
    "com.clover.tender.debit_card": "card",
    "com.clover.tender.cash": "cash",
}


def clover_figures(order: dict[str, Any], service_charge_basis: str = "discounted") -> dict[str, Any]:
    """The figures a correct canonical order of this (complete) Clover order carries, by the
    sandbox's own arithmetic (the module docstring): ``totals.subtotal``, ``totals.discount``,
    ``totals.tax``, ``totals.service_charge``, ``totals.total``, each line's total, each
    payment's tender and card brand, each refund's amount."""

    def listed(o: dict[str, Any], name: str) -> list[dict[str, Any]]:
        return list((o.get(name) or {}).get("elements", []))

    gross_sum = line_discounts = 0
    nets: list[tuple[int, list[int]]] = []
    for li in listed(order, "lineItems"):
        mods = sum(m["amount"] for m in listed(li, "modifications"))
        gross = rhu((li["price"] + mods) * li.get("unitQty", 1000), 1000)
        net = gross
        for d in listed(li, "discounts"):
            net += d["amount"] if "amount" in d else -rhu(gross * d["percentage"], 100)
        gross_sum += gross
        line_discounts += net - gross
        nets.append((net, [r["rate"] for r in listed(li, "taxRates")]))
    subtotal = sum(n for n, _ in nets)
    order_discount = 0
    for d in listed(order, "discounts"):
        order_discount += d["amount"] if "amount" in d else -rhu(subtotal * d["percentage"], 100)
    by_rate: dict[int, int] = {}
    for net, rates in nets:
        for rate in rates:
            by_rate[rate] = by_rate.get(rate, 0) + net
    tax = sum(rhu(b * (subtotal + order_discount) * r, subtotal * 10_000_000) for r, b in by_rate.items())
    sc = order.get("serviceCharge")
    charge = 0
    if sc:
        basis = subtotal + (order_discount if service_charge_basis == "discounted" else 0)
        charge = rhu(max(basis, 0) * sc["percentageDecimal"], 1_000_000)
    payments = listed(order, "payments")
    return {
        "totals.subtotal": gross_sum,
        "totals.discount": line_discounts + order_discount,
        "totals.tax": tax,
        "totals.service_charge": charge,
        "totals.total": order["total"],
        "line_items.total": [n for n, _ in nets],
        "payments.tender": [CLOVER_TENDERS.get(p["tender"].get("labelKey"), "other") for p in payments],
        "payments.card_brand": [
            CLOVER_CARD_BRANDS.get(p["cardTransaction"]["cardType"], p["cardTransaction"]["cardType"])
            if "cardTransaction" in p
            else None
            for p in payments
        ],
        "refunds.amount": [r["amount"] for r in listed(order, "refunds")],
    }
