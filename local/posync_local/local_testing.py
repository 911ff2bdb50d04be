"""Test helpers that ship with the local runtime: capturing every log line of the process.

``LogCapture`` is what the integration fixture ``captured_logs`` yields; import it for
type hints (``def test_x(captured_logs: LogCapture)``) and use ``find(secrets)`` to
check that no token, code or key reached a log line.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable

_STANDARD_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogCapture(logging.Handler):
    """Keeps every record as text: its own handler's format (Powertools JSON included) plus extras."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._lines: list[str] = []
        self._guard = threading.Lock()
        self._attached: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        # Powertools puts a SuppressFilter on every root handler that drops any logger whose
        # name contains the service name ("posync", hence also "posync_local.*"): keep them all.
        return True

    def _formatter_for(self, name: str) -> logging.Formatter | None:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            for h in logger.handlers:
                if h is not self and h.formatter is not None and not isinstance(h, LogCapture):
                    return h.formatter
            logger = logger.parent
        return None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self._formatter_for(record.name)
            text = formatter.format(record) if formatter is not None else logging.Formatter().format(record)
            extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_ATTRS}
            if extras:
                text += " " + json.dumps(extras, default=repr)
        except Exception:  # noqa: BLE001 - a log line that cannot be formatted is still kept, raw
            text = f"{record.name} {record.levelname} {record.msg!r} {record.args!r}"
        with self._guard:
            self._lines.append(text)

    def attach(self) -> None:
        """On the root logger and on every logger that does not propagate to it."""
        root = logging.getLogger()
        if self not in root.handlers:
            root.addHandler(self)
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger) and not logger.propagate and name not in self._attached:
                logger.addHandler(self)
                self._attached.add(name)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self)
        for name in self._attached:
            logging.getLogger(name).removeHandler(self)
        self._attached.clear()

    @property
    def text(self) -> str:
        with self._guard:
            return "\n".join(self._lines)

    def mark(self) -> int:
        with self._guard:
            return len(self._lines)

    def since(self, mark: int) -> str:
        with self._guard:
            return "\n".join(self._lines[mark:])

    def find(self, needles: Iterable[str], since: int = 0) -> list[str]:
        """The needles (e.g. tokens, secrets) that appear in the captured text."""
        text = self.since(since)
        return [n for n in needles if n and n in text]
