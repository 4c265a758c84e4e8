"""A token bucket: `rate` tokens a second, at most `burst` saved up; the caller brings the clock."""

from __future__ import annotations


class TokenBucket:
    """Full at first; `take` refills for the time since the last call, then spends."""

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float, want: int = 1) -> int:
        """Spend up to `want` whole tokens; returns how many were granted."""
        tokens = self._tokens + (now - self._at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._at = now
        n = min(int(tokens), want)
        self._tokens = tokens - n
        return n

    def seconds_until(self, level: float) -> float:
        """How long from the last `take` until the bucket holds `level` tokens (0 if it does)."""
        return max(0.0, (level - self._tokens) / self.rate)
