"""Clover sandbox profiles: one reading of Clover's behaviour per point the record leaves open.

The sandbox behaves as Clover documents by default (:data:`DEFAULT`); each other preset
changes one point where the public record is silent or its sources disagree, so that a
test run under every preset (``tests/conftest.py``: the ``clover_profile`` fixture) shows
posync right under each reading. A profile is a setting of one sandbox
(``CloverSandbox(profile=...)``, or ``POSYNC_SANDBOX_CLOVER_PROFILE`` for a whole run),
fixed while it serves; the register (``docs/provider-contracts.md``) names the knob of
each row.

Fields (add a field per new open point, and a preset that changes only it):

- ``unexpanded``: what a collection not named in ``expand`` looks like: ``"absent"`` (the
  key is missing: Clover's own list example, CLV-EXPAND-1) or ``"href"`` (``{"href": ...}``,
  as other doc pages and posync's first sandbox showed).
- ``card_transaction``: a payment's ``cardTransaction`` without ``payments.cardTransaction``:
  ``"absent"`` (explicit, CLV-EXPAND-4) or ``"inline"`` (always sent with the payment).
- ``tender``: a payment's ``tender`` without ``payments.tender``: ``"ref"`` (``{id}`` only,
  CLV-EXPAND-3) or ``"inline"`` (the whole tender: id, label, labelKey).
- ``service_charge_basis``: what a percentage service charge applies to:
  ``"discounted"`` (line nets after line and order discounts, before tax: Clover's "service
  charges are not taxed but are calculated after discounts") or ``"line_discounted"``
  (after line discounts only: the formula on the same page names only those), CLV-SC-2.
- ``payment_service_charge``: whether each payment carries its ``serviceCharge`` amount
  (``{id, name, amount}``), CLV-SC-3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

PROFILE_ENV = "POSYNC_SANDBOX_CLOVER_PROFILE"


@dataclass(frozen=True)
class CloverProfile:
    name: str = "documented"
    unexpanded: Literal["absent", "href"] = "absent"
    card_transaction: Literal["absent", "inline"] = "absent"
    tender: Literal["ref", "inline"] = "ref"
    service_charge_basis: Literal["discounted", "line_discounted"] = "discounted"
    payment_service_charge: bool = True


DEFAULT = CloverProfile()

PRESETS: dict[str, CloverProfile] = {
    p.name: p
    for p in (
        DEFAULT,
        replace(DEFAULT, name="href-unexpanded", unexpanded="href"),
        replace(DEFAULT, name="card-inline", card_transaction="inline"),
        replace(DEFAULT, name="tender-inline", tender="inline"),
        replace(
            DEFAULT,
            name="service-charge-line-basis",
            service_charge_basis="line_discounted",
            payment_service_charge=False,
        ),
    )
}


def profile_named(name: str | None) -> CloverProfile:
    """A preset by name (None or empty: the environment's choice, else the default)."""
    chosen = name or os.environ.get(PROFILE_ENV) or DEFAULT.name
    try:
        return PRESETS[chosen]
    except KeyError:
        raise ValueError(f"unknown Clover sandbox profile {chosen!r}: one of {sorted(PRESETS)}") from None
