"""The Clover sandbox in a child process, driven over a pipe.

The sandbox is the provider: in the benchmark it must not share the measured process's
interpreter lock (rendering 1,000-order pages costs real CPU). :class:`SandboxProcess`
starts ``posync_local.sandbox.CloverSandbox`` in a ``spawn`` child on 127.0.0.1 (a free
port), then forwards a few commands to it: add merchants, create orders, set knobs, read
the ground truth (order ids and modified times), read the request counters.

Access tokens come from the sandbox's own OAuth code flow over HTTP (consent
auto-approved), as posync would get them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

LIST_ROUTE = "GET /v3/merchants/{mId}/orders"
BY_ID_ROUTE = "GET /v3/merchants/{mId}/orders/{orderId}"
NESTED_LISTS = {
    "lineItems": "line_items",
    "payments": "payments",
    "refunds": "refunds",
    "discounts": "discounts",
}
NESTED_ROUTES = tuple(f"{BY_ID_ROUTE}/{path}" for path in NESTED_LISTS.values())
NESTED_CUT = 100  # Clover cuts expanded nested lists at 100 items
# A complete Clover order needs nine expansions (discounts, serviceCharge, credits;
# payments.tender, payments.cardTransaction, refunds; lineItems.modifications,
# lineItems.discounts, lineItems.taxRates: dotted paths count) and one call expands at most
# three: three list reads per page (CLV-EXPAND-5).
LIST_READS_PER_PAGE = 3
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the child


def _nested_needed(sb: Any, merchant_id: str, only: set[str] | None) -> list[str]:
    """Ids of the merchant's orders with a nested list (line items, payments, refunds, order
    discounts) that reaches Clover's cut of 100: each costs one more request.

    The sandbox renders an order from one of a pool of templates (``seq % TEMPLATE_POOL``);
    the list sizes depend on the template only, so one full render per template used tells.
    """
    from posync_local.sandbox.data import TEMPLATE_POOL

    m = sb.merchant(merchant_id)
    big_by_template: dict[int, bool] = {}
    out: list[str] = []
    for st in m.book.states():
        if only is not None and st.id not in only:
            continue
        tidx = st.seq % TEMPLATE_POOL
        big = big_by_template.get(tidx)
        if big is None:
            full = m.factory.full(st)
            big = any(len((full.get(name) or {}).get("elements", [])) >= NESTED_CUT for name in NESTED_LISTS)
            big_by_template[tidx] = big
        if big:
            out.append(st.id)
    return out


def _serve(seed: int, anchor_ms: int | None, knobs: dict[str, Any]) -> None:
    """The child's loop: one JSON command per stdin line, one JSON reply per stdout line."""
    from posync_local.sandbox import CloverSandbox, SandboxKnobs

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write on the reply channel
    sb = CloverSandbox(port=0, knobs=SandboxKnobs(**knobs), seed=seed, anchor_ms=anchor_ms).start()

    def add_merchants(n: int, orders: int, days: int) -> list[str]:
        return [sb.add_merchant(orders=orders, days=days) for _ in range(n)]

    def truth(merchant_id: str) -> list[tuple[str, int]]:
        return [(st.id, st.modified_ms) for st in sb.merchant(merchant_id).book.states()]

    def set_knobs(values: dict[str, Any]) -> None:
        for name, value in values.items():
            if not hasattr(sb.knobs, name) or name.startswith("_"):
                raise AttributeError(f"no sandbox knob {name!r}")
            setattr(sb.knobs, name, value)
        sb.limiter.reset()

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    def refund_some(merchant_id: str, n: int, amount: int) -> list[str]:
        """Refund ``n`` paid orders later (``refund_later``: modifiedTime moves per the knob)."""
        picked: list[str] = []
        for oid in sorted(sb.order_ids(merchant_id)):
            if len(picked) >= n:
                break
            full = sb.order(merchant_id, oid)
            if full.get("paymentState") == "PAID" and not (full.get("refunds") or {}).get("elements"):
                sb.refund_later(merchant_id, oid, amount)
                picked.append(oid)
        return picked

    def delete_some(merchant_id: str, n: int) -> list[str]:
        ids = sorted(sb.order_ids(merchant_id), reverse=True)[:n]
        sb.delete_orders(merchant_id, ids)
        return ids

    commands: dict[str, Callable[..., Any]] = {
        "add_merchants": add_merchants,
        "create_orders": sb.create_orders,
        "modify_orders": sb.modify_orders,
        "truth": truth,
        "nested_needed": lambda mid, only=None: _nested_needed(sb, mid, None if only is None else set(only)),
        "set_knobs": set_knobs,
        "stats": sb.stats.snapshot,
        "reset_stats": sb.stats.reset,
        "cpu_s": cpu,
        "refund_some": refund_some,
        "delete_some": delete_some,
    }

    def reply(status: str, value: Any) -> None:
        out.write(json.dumps([status, value], separators=(",", ":")) + "\n")
        out.flush()

    reply(
        "ok",
        {
            "url": sb.url,
            "client_id": sb.client_id,
            "client_secret": sb.client_secret,
            "webhook_auth_code": sb.webhook_auth_code,
        },
    )
    try:
        for line in sys.stdin:
            name, args, kwargs = json.loads(line)
            if name == "stop":
                reply("ok", None)
                return
            try:
                reply("ok", commands[name](*args, **kwargs))
            except Exception as exc:
                reply("error", f"{type(exc).__name__}: {exc}")
    finally:
        sb.stop()


# --------------------------------------------------------------------------- the parent


class SandboxError(RuntimeError):
    """A command failed in the sandbox process."""


class SandboxProcess:
    """A Clover sandbox in a child process (use as a context manager, or ``start``/``stop``)."""

    def __init__(self, *, seed: int = 7, anchor_ms: int | None = None, **knobs: Any) -> None:
        self.seed = seed
        self.anchor_ms = anchor_ms
        self.knobs = knobs
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.client_id = ""
        self.client_secret = ""
        self.webhook_auth_code = ""
        self._http = requests.Session()

    def start(self) -> SandboxProcess:
        config = json.dumps({"seed": self.seed, "anchor_ms": self.anchor_ms, "knobs": self.knobs})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sandboxproc", config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        try:
            hello: dict[str, str] = self._read()
        except BaseException:
            self.stop()
            raise
        self.url = hello["url"]
        self.client_id = hello["client_id"]
        self.client_secret = hello["client_secret"]
        self.webhook_auth_code = hello["webhook_auth_code"]
        return self

    def _read(self) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise SandboxError(f"the sandbox process ended (exit code {self._proc.poll()})")
        status, value = json.loads(line)
        if status != "ok":
            raise SandboxError(str(value))
        return value

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.write(json.dumps(["stop", [], {}]) + "\n")
                    proc.stdin.flush()
                    proc.stdin.close()
                proc.wait(10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.terminate()  # our own child, by its handle
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        self._http.close()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._proc is None or self._proc.stdin is None:
            raise SandboxError("the sandbox process is not running")
        self._proc.stdin.write(json.dumps([name, args, kwargs], separators=(",", ":")) + "\n")
        self._proc.stdin.flush()
        return self._read()

    # ---- typed commands

    @property
    def app_credentials(self) -> dict[str, str]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "webhook_auth_code": self.webhook_auth_code,
        }

    def add_merchants(self, n: int, *, orders: int, days: int) -> list[str]:
        mids: list[str] = self.call("add_merchants", n, orders, days)
        return mids

    def add_merchant(self, *, orders: int, days: int) -> str:
        return self.add_merchants(1, orders=orders, days=days)[0]

    def create_orders(self, merchant_id: str, n: int) -> list[str]:
        ids: list[str] = self.call("create_orders", merchant_id, n)
        return ids

    def modify_orders(self, merchant_id: str, n: int) -> list[str]:
        ids: list[str] = self.call("modify_orders", merchant_id, n)
        return ids

    def truth(self, merchant_id: str) -> dict[str, int]:
        """Order id -> modified time (epoch ms) of every current order version."""
        return dict(self.call("truth", merchant_id))

    def nested_needed(self, merchant_id: str, only: Iterable[str] | None = None) -> set[str]:
        """Orders with a nested list that reaches Clover's cut (one more request each)."""
        ids: list[str] = self.call("nested_needed", merchant_id, None if only is None else sorted(only))
        return set(ids)

    def refund_some(self, merchant_id: str, n: int, amount: int) -> list[str]:
        ids: list[str] = self.call("refund_some", merchant_id, n, amount)
        return ids

    def delete_some(self, merchant_id: str, n: int) -> list[str]:
        ids: list[str] = self.call("delete_some", merchant_id, n)
        return ids

    def set_knobs(self, **values: Any) -> None:
        """Change knobs (``latency_ms``, ``per_token_rps``...); the rate windows start afresh."""
        self.call("set_knobs", values)

    def stats(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.call("stats")
        return snap

    def reset_stats(self) -> None:
        self.call("reset_stats")

    def cpu_s(self) -> float:
        """CPU seconds the sandbox process has used so far."""
        return float(self.call("cpu_s"))

    def requests_by_kind(self) -> dict[str, int]:
        """API requests seen so far: ``list`` pages, ``by_id`` order reads, ``nested`` list
        pages and their ``total``; 429s and 5xx sent."""
        snap = self.stats()
        req: dict[str, int] = snap["requests"]
        counts = {
            "list": int(req.get(LIST_ROUTE, 0)),
            "by_id": int(req.get(BY_ID_ROUTE, 0)),
            "nested": sum(int(req.get(r, 0)) for r in NESTED_ROUTES),
        }
        return {
            **counts,
            "total": sum(counts.values()),
            "rate_limited": int(snap["rate_limited"]),
            "server_errors": int(snap["server_errors"]),
        }

    # ---- OAuth

    def token(self, merchant_id: str) -> str:
        """An access token for the merchant through the code flow (consent auto-approved)."""
        r = self._http.get(
            f"{self.url}/oauth/v2/authorize",
            params={
                "client_id": self.client_id,
                "redirect_uri": "http://127.0.0.1/cb",
                "merchant_id": merchant_id,
            },
            allow_redirects=False,
            timeout=30,
        )
        location = r.headers.get("Location", "")
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        if r.status_code != 302 or not code:
            raise SandboxError(f"consent did not redirect with a code ({r.status_code}); is auto_approve on?")
        r = self._http.post(
            f"{self.url}/oauth/v2/token",
            json={"client_id": self.client_id, "client_secret": self.client_secret, "code": code},
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["access_token"])

    def tokens(self, merchant_ids: Iterable[str]) -> dict[str, str]:
        self.set_knobs(auto_approve=True)
        try:
            return {mid: self.token(mid) for mid in merchant_ids}
        finally:
            self.set_knobs(auto_approve=False)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


if __name__ == "__main__":
    _cfg = json.loads(sys.argv[1])
    _serve(int(_cfg["seed"]), _cfg.get("anchor_ms"), dict(_cfg.get("knobs") or {}))
