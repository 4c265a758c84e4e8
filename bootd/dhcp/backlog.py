"""Requests read off the socket but not handled yet, and the order they are handled in.

Under overload a FIFO socket queue wastes the server's work: it answers requests in
arrival order until their clients have given up, and when the queue overflows the
kernel drops REQUESTs as readily as DISCOVERs, each lost REQUEST throwing away the
DISCOVER and OFFER already spent on its exchange. The service therefore drains its
socket into this backlog and hands requests out in another order:

- exchanges in progress first (REQUEST, and everything else that is not a DISCOVER),
  oldest first, but with at least a quarter of each batch left to DISCOVERs while any
  wait, so that a flood of REQUESTs cannot keep new machines from booting;
- new DISCOVERs newest first: the newest one's client is the likeliest still waiting,
  and an answer it gets now leads to a REQUEST that is handled ahead of the queue;
- anything that waited longer than `stale_after` is dropped, and when the backlog is
  full the oldest DISCOVER makes room (as Kea's packet ring drops its oldest).

Sans-I/O: the caller passes the arrival times and the clock.
"""

from __future__ import annotations

from collections import deque

from bootd.proto.dhcp.packet import HEADER_LEN, MAGIC

# data, source address, local port, arrival time (wall clock, the kernel's SO_TIMESTAMP)
Request = tuple[bytes, tuple[str, int], int, float]

_TYPE_AT = HEADER_LEN + len(MAGIC)  # option 53 is the first option of nearly every client
_DISCOVER_HEAD = MAGIC + bytes((53, 1, 1))


def is_discover(data: bytes) -> bool:
    """A DHCPDISCOVER whose first option is the message type (a cheap look, no decode).

    Anything else, a DISCOVER with its option 53 further on included, counts as an
    exchange in progress: that errs on the side of handling it early.
    """
    return data[HEADER_LEN : _TYPE_AT + 3] == _DISCOVER_HEAD


class Backlog:
    """Two queues: exchanges in progress (FIFO) and new DISCOVERs (LIFO)."""

    def __init__(self, stale_after: float, limit: int, discover_share: float = 0.25) -> None:
        self.stale_after = stale_after
        self.limit = limit
        self.discover_share = discover_share
        self._ongoing: deque[Request] = deque()
        self._new: deque[Request] = deque()
        self.evicted = 0  # DISCOVERs dropped to make room, since the last take()

    def __len__(self) -> int:
        return len(self._ongoing) + len(self._new)

    def add(self, req: Request) -> None:
        """Queue a request; a full backlog drops its oldest DISCOVER (else its oldest request)."""
        if len(self._ongoing) + len(self._new) >= self.limit:
            (self._new or self._ongoing).popleft()
            self.evicted += 1
        if is_discover(req[0]):
            self._new.append(req)
        else:
            self._ongoing.append(req)

    def clear(self) -> None:
        """Forget everything (the service is stopping)."""
        self._ongoing.clear()
        self._new.clear()

    def take(self, n: int, now: float) -> tuple[list[Request], int]:
        """Up to n requests to handle now, and how many were dropped as stale."""
        horizon = now - self.stale_after
        ongoing, new = self._ongoing, self._new
        stale = 0
        # LIFO leaves the oldest DISCOVERs at the left end: they age out from there.
        while new and new[0][3] < horizon:
            new.popleft()
            stale += 1
        out: list[Request] = []
        keep_for_new = min(len(new), max(1, int(n * self.discover_share))) if new else 0
        while ongoing and len(out) < n - keep_for_new:
            req = ongoing.popleft()
            if req[3] < horizon:
                stale += 1
            else:
                out.append(req)
        while new and len(out) < n:
            out.append(new.pop())
        while ongoing and len(out) < n:
            req = ongoing.popleft()
            if req[3] < horizon:
                stale += 1
            else:
                out.append(req)
        return out, stale
