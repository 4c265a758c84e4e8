"""Option negotiation (RFC 2347) for blksize, timeout, tsize and windowsize."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_BLKSIZE = 512  # RFC 1350
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464  # RFC 2348 §2
MAX_WINDOWSIZE = 65535  # RFC 7440 §3


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server is willing to grant, from tftp.* config."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Parameters of one transfer and the options to put in the OACK (empty: no OACK)."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    granted: dict[str, str] = field(default_factory=dict)


def _int(value: str) -> int | None:
    v = value.strip()
    return int(v) if v.isdigit() and len(v) <= 10 else None


def negotiate(options: Mapping[str, str], limits: Limits, tsize: int | None) -> Negotiated:
    """Grant what the client asked for within limits; ungranted options stay out of the OACK."""
    granted: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.timeout
    for name, value in options.items():
        n = _int(value)
        if name == "blksize" and n is not None and n >= MIN_BLKSIZE:
            # RFC 2348 §2: the server may answer with a smaller value; never larger.
            blksize = min(n, MAX_BLKSIZE, limits.max_blksize)
            granted[name] = str(blksize)
        elif name == "windowsize" and n is not None and 1 <= n <= MAX_WINDOWSIZE:
            # RFC 7440 §4: the server may answer with a smaller window.
            windowsize = min(n, limits.max_windowsize)
            granted[name] = str(windowsize)
        elif name == "timeout" and n is not None and 1 <= n <= 255:
            # RFC 2349 §2: the server must use the requested value or not grant it.
            timeout = float(n)
            granted[name] = str(n)
        elif name == "tsize" and n is not None and tsize is not None:
            # RFC 2349 §4: in a RRQ the client sends 0 and the server answers the size.
            granted[name] = str(tsize)
    return Negotiated(blksize, windowsize, timeout, granted)
