"""Local Clover and Poynt sandboxes: real HTTP servers that speak the providers' OAuth and orders APIs.

    from posync_local.sandbox import CloverSandbox, PoyntSandbox, SandboxKnobs

    with CloverSandbox(port=0, knobs=SandboxKnobs(latency_ms=20), seed=7) as clover:
        mid = clover.add_merchant(orders=500, currency="CAD")
        clover.url, clover.client_id, clover.client_secret   # point POSYNC_CLOVER_*_BASE at clover.url

Modules: ``server`` (knobs, stats, rate limiter, threaded HTTP server), ``orderbook`` (the
per-merchant index and JSON fragment cache), ``data`` (seeded merchants and orders, and the rules
their totals follow), ``merchants`` (tokens, codes, order management shared by both), ``clover``,
``poynt`` and ``keys``. Each module's docstring states the behaviour it picked where the
providers' docs are silent. Nothing in the ``posync`` Lambda layer imports this package.
"""

from posync_local.sandbox.clover import CloverSandbox
from posync_local.sandbox.poynt import PoyntSandbox
from posync_local.sandbox.server import SandboxKnobs, SandboxStats

__all__ = ["CloverSandbox", "PoyntSandbox", "SandboxKnobs", "SandboxStats"]
