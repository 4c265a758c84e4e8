"""The base of every codec's decode error: a message, and a short `reason` for metrics."""

from __future__ import annotations


class DecodeError(ValueError):
    """Malformed input; `reason` is a short metric label. Each codec raises its own subclass."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
