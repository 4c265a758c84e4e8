"""Per-boot tokens for /cloud-init-secure/: HMAC-SHA256 over (MAC, issue time); no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
from enum import Enum

# Tokens are minted and checked by this server only; a token stamped later than
# this ahead of our clock means the clock went backwards or the token is forged.
MAX_FUTURE_SKEW_MS = 5_000
# Longest token text we even try to parse: bounds work done on hostile input.
MAX_TOKEN_LEN = 128


class Verdict(Enum):
    """Outcome of checking a token; anything but OK is a 403."""

    OK = "ok"
    MISSING = "missing"
    MALFORMED = "malformed"
    WRONG_NODE = "wrong-node"  # HMAC mismatch: forged, or another node's token
    EXPIRED = "expired"
    REPLAYED = "replayed"  # issued before the node phoned home for that boot


def _mac_bytes(mac: str, issued_ms: int) -> bytes:
    return f"bootd-ci-v1|{mac}|{issued_ms}".encode()


class TokenIssuer:
    """Mints and checks tokens with one server key; satisfies context.BootTokenIssuer."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the token key must be at least 16 bytes")
        self._key = key

    def _sign(self, mac: str, issued_ms: int) -> str:
        digest = hmac.new(self._key, _mac_bytes(mac, issued_ms), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, mac: str, now: float) -> str:
        """A token for this node's current boot: '<issued ms, base 36>.<HMAC, base64url>'."""
        issued_ms = int(now * 1000)
        return f"{_base36(issued_ms)}.{self._sign(mac, issued_ms)}"

    def verify(
        self,
        token: str | None,
        mac: str,
        now: float,
        ttl: float,
        phoned_home_at: float | None,
    ) -> Verdict:
        """Check a presented token against the node at the request's source address."""
        if not token:
            return Verdict.MISSING
        issued_ms = issued_at_ms(token)
        if issued_ms is None:
            return Verdict.MALFORMED
        sig = token.partition(".")[2]
        # Constant-time compare: timing must not reveal how much of the HMAC matched.
        if not hmac.compare_digest(sig.encode(), self._sign(mac, issued_ms).encode()):
            return Verdict.WRONG_NODE
        now_ms = int(now * 1000)
        if issued_ms > now_ms + MAX_FUTURE_SKEW_MS or now_ms - issued_ms > int(ttl * 1000):
            return Verdict.EXPIRED
        if phoned_home_at is not None and issued_ms <= int(phoned_home_at * 1000):
            return Verdict.REPLAYED
        return Verdict.OK


def issued_at_ms(token: str) -> int | None:
    """The issue time stamped in a token, or None if it is not one of ours."""
    if len(token) > MAX_TOKEN_LEN or token.count(".") != 1:
        return None
    stamp, _, sig = token.partition(".")
    if not stamp or not sig or not stamp.isalnum() or not stamp.isascii():
        return None
    try:
        return int(stamp, 36)
    except ValueError:
        return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
