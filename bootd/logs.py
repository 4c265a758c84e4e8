"""Logging setup (text or JSON lines) and a rate limiter for repeated warnings."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `mac` and other extras become fields."""

    _SKIP = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in self._SKIP:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """'LEVEL logger: message [mac=…]'."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        mac = getattr(record, "mac", None)
        if mac and mac not in line:
            line += f" mac={mac}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Send bootd's logs to stderr (journald adds the timestamps)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("bootd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class RateLimitedLog:
    """Log a given key at most once per `interval` seconds; counts what it suppressed."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 1024
    ) -> None:
        self._log = logger
        self._interval = interval
        # Bounded: hostile input could otherwise mint unlimited keys.
        self._max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, *args: object, **extra: object) -> None:
        """Warn now, or count it and mention the count with the next one."""
        now = time.monotonic()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) >= self._max_keys and key not in self._last:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        if suppressed:
            msg += f" (and {suppressed} more like it suppressed)"
        self._log.warning(msg, *args, extra=extra or None)
