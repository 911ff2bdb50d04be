"""Following a sync from the command line: a live progress line, and where its numbers come from.

- :class:`LiveProgress` renders on stderr: on a terminal, one line redrawn ten times a
  second with a bar, orders and pages per second and the elapsed time; otherwise plain
  lines (the first page, then at most one a second), so logs and CI output stay readable.
- :class:`PageObserver` counts the pages the worker reads for one connection *as it reads
  them*, by wrapping the order sources of the worker's ``SyncService`` (the local stack
  runs the real worker in this process). The bar is the share of the run's time window
  already read (pages report their keyset position; see ``posync.sources``).
- :func:`quiet_functions` keeps the in-process handlers' JSON logs and metrics off stdout
  while they run (stdout is for the command's result), warnings still reach stderr.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from posync.domain import Connection
from posync.errors import InvalidInput
from posync.ratelimit import Deadline
from posync.sources import KeysetSource, Page, Plan, Prepare
from posync.sync import SyncService

BAR_WIDTH = 24
CLEAR_LINE = "\r\x1b[K"


@dataclass(frozen=True)
class Snapshot:
    orders: int
    pages: int
    fraction: float | None  # share of the run's window read, when known
    elapsed_s: float

    @property
    def percent(self) -> int | None:
        """Whole percent of the window read, rounded down (100 only once the run is done)."""
        return None if self.fraction is None else int(max(0.0, min(1.0, self.fraction)) * 100)

    @property
    def orders_per_s(self) -> float:
        return self.orders / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.elapsed_s if self.elapsed_s > 0 else 0.0


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def plain_line(label: str, s: Snapshot) -> str:
    window = f", {s.percent}% of the window" if s.percent is not None else ""
    return (
        f"{label}: {plural(s.orders, 'order')} ({s.orders_per_s:,.1f}/s), {plural(s.pages, 'page')} "
        f"({s.pages_per_s:,.1f}/s){window}, {s.elapsed_s:.1f} s"
    )


def bar(fraction: float | None, t: float, width: int = BAR_WIDTH) -> str:
    """``[=====>    ]`` for a known fraction; a bouncing ``<=>`` while it is unknown."""
    if fraction is None:
        span = max(1, width - 3)
        pos = int((math.sin(t * 2.5) + 1) / 2 * span)
        return "[" + " " * pos + "<=>" + " " * (width - 3 - pos) + "]"
    filled = int(max(0.0, min(1.0, fraction)) * width)
    head = ">" if 0 < filled < width else ""
    body = "=" * (filled - len(head)) + head
    return "[" + body.ljust(width) + "]"


def tty_line(label: str, s: Snapshot, t: float, columns: int) -> str:
    pct = f"{s.percent:3d}%" if s.percent is not None else "   …"
    line = (
        f"{label} {bar(s.fraction, t)} {pct}  {s.orders:,} orders {s.orders_per_s:,.0f}/s  "
        f"{s.pages:,} pages {s.pages_per_s:,.1f}/s  {s.elapsed_s:.1f} s"
    )
    return line[: max(20, columns - 1)]


class LiveProgress:
    """Counters fed from any thread, rendered on ``stream`` (see the module docstring)."""

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        interval_s: float = 1.0,
        refresh_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.tty = self._isatty(self.stream) if tty is None else tty
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._orders = 0
        self._pages = 0
        self._fraction: float | None = None
        self._started = clock()
        self._last_plain: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    @staticmethod
    def _isatty(stream: TextIO) -> bool:
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):
            return False

    # -- feeding

    def add(self, orders: int, pages: int, fraction: float | None = None) -> None:
        with self._lock:
            self._orders += orders
            self._pages += pages
            if fraction is not None:
                self._fraction = fraction
        self._maybe_plain()

    def set(self, orders: int, pages: int, fraction: float | None = None) -> None:
        """Absolute numbers (a poller reading checkpointed counts)."""
        with self._lock:
            changed = (orders, pages) != (self._orders, self._pages)
            self._orders, self._pages = orders, pages
            if fraction is not None:
                self._fraction = fraction
        if changed:
            self._maybe_plain()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._orders, self._pages, self._fraction, self._clock() - self._started)

    @property
    def orders(self) -> int:
        return self.snapshot().orders

    @property
    def pages(self) -> int:
        return self.snapshot().pages

    # -- rendering

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def _maybe_plain(self) -> None:
        if self.tty:
            return
        now = self._clock()
        with self._lock:
            due = self._last_plain is None or now - self._last_plain >= self.interval_s
            if due:
                self._last_plain = now
        if due:
            self._write(plain_line(self.label, self.snapshot()) + "\n")

    def _draw(self) -> None:
        columns = shutil.get_terminal_size((100, 24)).columns
        self._write(CLEAR_LINE + tty_line(self.label, self.snapshot(), self._clock(), columns))
        self._drawn = True

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._draw()

    def message(self, text: str) -> None:
        """A line of its own (the live line is redrawn after it)."""
        self._write((CLEAR_LINE if self.tty and self._drawn else "") + text + "\n")

    def start(self) -> LiveProgress:
        self._started = self._clock()
        if self.tty and self._thread is None:
            self._draw()
            self._thread = threading.Thread(target=self._run, name="posync-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> Snapshot:
        """Stop rendering; on a terminal the live line is cleared (the caller prints the result)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        if self.tty and self._drawn:
            self._write(CLEAR_LINE)
        return self.snapshot()

    def __enter__(self) -> LiveProgress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PageObserver:
    """Feeds :class:`LiveProgress` with one connection's pages while the worker reads them."""

    def __init__(self, conn_id: str, progress: LiveProgress) -> None:
        self.conn_id = conn_id
        self.progress = progress
        self.seen_pages = 0
        self._total_ms: int | None = None
        self._run_done = True

    def install(self, service: SyncService) -> Callable[[], None]:
        """Wrap ``service.sources``; returns the function that puts the original back."""
        original = service.sources

        def sources(conn: Connection, deadline: Deadline) -> KeysetSource:
            source = original(conn, deadline)
            if conn.connection_id == self.conn_id:
                self._wrap(source)
            return source

        service.sources = sources

        def undo() -> None:
            service.sources = original

        return undo

    def _wrap(self, source: KeysetSource) -> None:
        inner = source.pages

        def pages(
            plan: Plan, deadline: Deadline, prepare: Prepare | None = None
        ) -> Generator[Page, None, None]:
            self._begin(plan)
            gen = inner(plan, deadline, prepare)
            try:
                for page in gen:
                    self._page(source, page)
                    yield page
            finally:
                gen.close()

        source.pages = pages  # type: ignore[method-assign]

    def _begin(self, plan: Plan) -> None:
        # A continuation resumes the same run: keep the window of its first invocation.
        if self._run_done or self._total_ms is None:
            self._total_ms = sum(max(0, b - a) for a, b, _, _ in plan.slices)
            self._run_done = False

    def _fraction(self, source: KeysetSource, page: Page) -> float | None:
        if page.progress is None:
            self._run_done = True
            return 1.0
        total = self._total_ms
        if not total:
            return None
        try:
            remaining = sum(
                max(0, source.decode_time(s["to"]) - source.decode_time(s["from"]))
                for s in page.progress.get("slices", [])
            )
        except (InvalidInput, KeyError, TypeError, ValueError):
            return None
        # Never 100% before the last page: the window's end may hold the most orders.
        return max(0.0, min(0.999, 1 - remaining / total))

    def _page(self, source: KeysetSource, page: Page) -> None:
        try:
            fraction = self._fraction(source, page)
        except Exception:  # noqa: BLE001 - a progress display never breaks a sync
            fraction = None
        self.seen_pages += 1
        self.progress.add(len(page.orders), 1, fraction)


def worker_service(handler: Any) -> SyncService | None:
    """The ``SyncService`` a loaded worker handler module runs (``SERVICE``), if it has one."""
    module = sys.modules.get(str(getattr(handler, "__module__", "")))
    service = getattr(module, "SERVICE", None)
    return service if isinstance(service, SyncService) else None


@contextlib.contextmanager
def quiet_functions(stream: TextIO) -> Iterator[None]:
    """While in-process handlers run: no metrics output, their logs at WARNING and on ``stream``."""
    previous_metrics = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    log = logging.getLogger("posync")
    previous_level = log.level
    log.setLevel(logging.WARNING)
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.__stdout__):
            swapped.append((h, h.setStream(stream)))
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        for h, old in swapped:
            h.setStream(old)
        log.setLevel(previous_level)
        if previous_metrics is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = previous_metrics
