"""RFC 9110 conditional and single-range evaluation for static files; pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class FilePlan:
    """What to answer: status, which bytes (start, length) and the headers to send."""

    status: int
    start: int = 0
    length: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def make_etag(size: int, mtime_ns: int) -> str:
    """A strong validator that changes whenever the file is replaced or rewritten."""
    return f'"{mtime_ns:x}-{size:x}"'


def _http_date(text: str) -> int | None:
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _etag_list(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _weak_eq(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One byte range → (start, length); None: ignore the header; 'unsatisfiable' → 416."""
    m = _RANGE.match(header.replace(" ", ""))
    if m is None:
        return None  # multiple ranges or bad syntax: RFC 9110 §14.2 lets us send the whole file
    first, last = m.group(1), m.group(2)
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), min(suffix, size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # RFC 9110 §14.1.1: invalid range-spec, so the header is ignored
    if start >= size:
        return "unsatisfiable"
    return start, end - start + 1


def plan_file_response(
    method: str, headers: Mapping[str, str], size: int, mtime_ns: int
) -> FilePlan:
    """RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match, IMS, then Range."""
    etag = make_etag(size, mtime_ns)
    mtime = mtime_ns // 1_000_000_000
    base = {
        "ETag": etag,
        "Last-Modified": formatdate(mtime, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    if_match = headers.get("If-Match")
    if if_match is not None:
        tags = _etag_list(if_match)
        if "*" not in tags and etag not in tags:
            return FilePlan(412, headers=base)
    else:
        ius = headers.get("If-Unmodified-Since")
        when = _http_date(ius) if ius else None
        if when is not None and mtime > when:
            return FilePlan(412, headers=base)
    inm = headers.get("If-None-Match")
    if inm is not None:
        tags = _etag_list(inm)
        if "*" in tags or any(_weak_eq(t, etag) for t in tags):
            if method in ("GET", "HEAD"):
                return FilePlan(304, headers=base)
            return FilePlan(412, headers=base)
    elif method in ("GET", "HEAD"):
        ims = headers.get("If-Modified-Since")
        when = _http_date(ims) if ims else None
        if when is not None and mtime <= when:
            return FilePlan(304, headers=base)
    rng = headers.get("Range")
    if (
        rng is not None
        and method == "GET"
        and _if_range_holds(headers.get("If-Range"), etag, mtime)
    ):
        r = parse_range(rng, size)
        if r == "unsatisfiable":
            return FilePlan(416, headers={**base, "Content-Range": f"bytes */{size}"})
        if isinstance(r, tuple):
            start, length = r
            cr = f"bytes {start}-{start + length - 1}/{size}"
            return FilePlan(206, start, length, {**base, "Content-Range": cr})
    return FilePlan(200, 0, size, base)


def _if_range_holds(if_range: str | None, etag: str, mtime: int) -> bool:
    """RFC 9110 §13.1.5: a strong ETag must match exactly, a date must equal Last-Modified."""
    if if_range is None:
        return True
    v = if_range.strip()
    if v.startswith(('"', "W/")):
        return v == etag
    return _http_date(v) == mtime
