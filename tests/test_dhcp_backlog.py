"""The DHCP backlog: exchanges in progress first, new DISCOVERs newest first, stale and
overflowing requests dropped and counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bootd.dhcp.backlog import Backlog, is_discover
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt


def wire(mt: MessageType, xid: int, first: int = Opt.MESSAGE_TYPE) -> bytes:
    opts = {first: b"x"} if first != Opt.MESSAGE_TYPE else {}
    opts[Opt.MESSAGE_TYPE] = bytes((mt,))
    return DhcpPacket(xid=xid, options=opts).encode()


def req(mt: MessageType, xid: int, at: float) -> tuple[bytes, tuple[str, int], int, float]:
    return (wire(mt, xid), ("0.0.0.0", 68), 67, at)


def xids(batch: list[tuple[bytes, tuple[str, int], int, float]]) -> list[int]:
    return [int.from_bytes(r[0][4:8], "big") for r in batch]


def test_discover_is_recognised_without_a_decode() -> None:
    assert is_discover(wire(MessageType.DISCOVER, 1))
    assert not is_discover(wire(MessageType.REQUEST, 1))
    # Option 53 further on: treated as an exchange in progress (handled early, never lost).
    assert not is_discover(wire(MessageType.DISCOVER, 1, first=Opt.CLIENT_ID))
    assert not is_discover(b"") and not is_discover(bytes(300))


def test_requests_go_first_and_discovers_newest_first() -> None:
    b = Backlog(stale_after=2.0, limit=100)
    for i in range(1, 9):
        b.add(req(MessageType.DISCOVER, i, 0.0))
    for i in range(101, 111):
        b.add(req(MessageType.REQUEST, i, 0.1))
    first, stale = b.take(8, 0.2)
    # A quarter of the batch stays for DISCOVERs while any wait: 6 REQUESTs, then 2.
    assert xids(first) == [101, 102, 103, 104, 105, 106, 8, 7] and stale == 0
    rest, _ = b.take(100, 0.2)
    assert xids(rest) == [107, 108, 109, 110, 6, 5, 4, 3, 2, 1]
    assert len(b) == 0


def test_without_discovers_waiting_a_batch_is_all_requests() -> None:
    b = Backlog(stale_after=2.0, limit=100)
    for i in range(1, 11):
        b.add(req(MessageType.REQUEST, i, 0.0))
    assert xids(b.take(8, 0.0)[0]) == list(range(1, 9))


def test_stale_requests_are_dropped_and_counted() -> None:
    b = Backlog(stale_after=2.0, limit=100)
    b.add(req(MessageType.DISCOVER, 1, 0.0))
    b.add(req(MessageType.REQUEST, 2, 0.0))
    b.add(req(MessageType.DISCOVER, 3, 1.5))
    b.add(req(MessageType.REQUEST, 4, 1.5))
    batch, stale = b.take(16, 2.5)
    assert xids(batch) == [4, 3] and stale == 2 and len(b) == 0


def test_a_full_backlog_drops_its_oldest_discover() -> None:
    b = Backlog(stale_after=2.0, limit=4)
    for i in range(1, 4):
        b.add(req(MessageType.DISCOVER, i, 0.0))
    b.add(req(MessageType.REQUEST, 10, 0.0))
    b.add(req(MessageType.REQUEST, 11, 0.0))  # full: DISCOVER 1 makes room
    assert b.evicted == 1 and len(b) == 4
    assert xids(b.take(16, 0.0)[0]) == [10, 11, 3, 2]
    full = Backlog(stale_after=2.0, limit=2)
    for i in range(1, 4):
        full.add(req(MessageType.REQUEST, i, 0.0))  # no DISCOVER to drop: the oldest goes
    assert full.evicted == 1 and xids(full.take(16, 0.0)[0]) == [2, 3]


@given(
    st.lists(
        st.tuples(st.sampled_from([MessageType.DISCOVER, MessageType.REQUEST]), st.floats(0, 5)),
        max_size=60,
    ),
    st.integers(1, 20),
)
def test_nothing_is_lost_or_duplicated(items: list[tuple[MessageType, float]], n: int) -> None:
    """Every request is handed out once, dropped as stale, or evicted: never twice, never lost."""
    b = Backlog(stale_after=2.0, limit=25)
    for i, (mt, at) in enumerate(sorted(items, key=lambda x: x[1])):
        b.add(req(mt, i, at))
    seen: list[int] = []
    dropped = 0
    while len(b):
        batch, stale = b.take(n, 5.0)
        seen += xids(batch)
        dropped += stale
    assert len(seen) == len(set(seen))
    assert len(seen) + dropped + b.evicted == len(items)
