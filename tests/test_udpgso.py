"""GsoSender: equal-size runs as one UDP GSO send, the per-datagram fallback, partial sends."""

from __future__ import annotations

import errno
import socket

import pytest

from bootd.udpgso import SEGMENT_SIZES_KEPT, GsoSender


class FakeSock:
    def __init__(self, refuse_gso: bool = False, full_after: int | None = None) -> None:
        self.sent: list[tuple[bytes, int | None]] = []
        self.refuse_gso = refuse_gso
        self.full_after = full_after

    def _take(self, data: bytes, seg: int | None) -> None:
        if self.full_after is not None and len(self.sent) >= self.full_after:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.sent.append((data, seg))

    def sendto(self, d: bytes, peer: object) -> None:
        self._take(d, None)

    def sendmsg(self, bufs: list[bytes], anc: list[tuple[int, int, bytes]], *a: object) -> None:
        if self.refuse_gso:
            raise OSError(errno.EIO, "no GSO here")
        self._take(bufs[0], int.from_bytes(anc[0][2], "little"))


def test_equal_runs_go_out_together() -> None:
    s, w = FakeSock(), GsoSender()
    grams = [b"s" * 10, b"a" * 100, b"b" * 100, b"c" * 40, b"d" * 100]
    assert w.send(s, grams, ("x", 1)) == 5  # type: ignore[arg-type]
    # A shorter datagram may end a run, a longer one never joins it.
    assert s.sent == [
        (b"s" * 10, None),
        (b"a" * 100 + b"b" * 100 + b"c" * 40, 100),
        (b"d" * 100, None),
    ]
    s.sent.clear()
    assert w.send(s, [b"x" * 1472] * 100, ("x", 1)) == 100  # type: ignore[arg-type]
    assert [len(d) // 1472 for d, _ in s.sent] == [44, 44, 12]  # 64 KB per send at most
    s.sent.clear()
    assert w.send(s, [b"y" * 300] * 100, ("x", 1)) == 100  # type: ignore[arg-type]
    assert [len(d) // 300 for d, _ in s.sent] == [64, 36]  # the kernel's segment limit


def test_a_window_promised_equal_goes_out_whole_without_measuring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`equal` (a TFTP window: full blocks, a short last one) skips measuring the run;
    past the kernel's limits the datagrams are measured and split as usual."""
    s, w = FakeSock(), GsoSender()
    window = [b"a" * 512] * 15 + [b"b" * 100]
    measure = w._run_end

    def no_measuring(datagrams: list[bytes], i: int) -> int:
        raise AssertionError("measured a window promised equal")

    monkeypatch.setattr(w, "_run_end", no_measuring)
    assert w.send(s, window, None, equal=True) == 16  # type: ignore[arg-type]
    assert s.sent == [(b"a" * 512 * 15 + b"b" * 100, 512)]
    monkeypatch.setattr(w, "_run_end", measure)
    s.sent.clear()
    assert w.send(s, [b"x" * 1472] * 100, None, equal=True) == 100  # type: ignore[arg-type]
    assert [len(d) // 1472 for d, _ in s.sent] == [44, 44, 12]  # 64 KB per send at most
    s.sent.clear()
    assert w.send(s, [b"y" * 300] * 100, None, equal=True) == 100  # type: ignore[arg-type]
    assert [len(d) // 300 for d, _ in s.sent] == [64, 36]  # the kernel's segment limit


def test_the_segment_messages_kept_are_bounded() -> None:
    s, w = FakeSock(), GsoSender()
    for size in range(1, 1000):
        assert w.send(s, [b"z" * size] * 2, None) == 2  # type: ignore[arg-type]
    assert 0 < len(w._segment) <= SEGMENT_SIZES_KEPT
    assert all(seg == size for (d, seg) in s.sent for size in [len(d) // 2])


def test_refused_gso_falls_back_for_good() -> None:
    s, w = FakeSock(refuse_gso=True), GsoSender()
    assert w.send(s, [b"a" * 50] * 3, ("x", 1)) == 3  # type: ignore[arg-type]
    assert s.sent == [(b"a" * 50, None)] * 3 and not w.gso and w.last_error is None


def test_a_full_socket_stops_the_send_and_says_how_far_it_got() -> None:
    s, w = FakeSock(full_after=2), GsoSender(gso=False)
    assert w.send(s, [b"a", b"b", b"c", b"d"], ("x", 1)) == 2  # type: ignore[arg-type]
    assert isinstance(w.last_error, BlockingIOError)
    assert w.send(s, [], ("x", 1)) == 0 and w.last_error is None  # type: ignore[arg-type]


def test_the_kernel_splits_a_gso_send_into_the_datagrams() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        grams = [bytes([i]) * 300 for i in range(16)] + [b"tail"]
        w = GsoSender()
        assert w.send(tx, grams, rx.getsockname()) == 17
        assert [rx.recv(2048) for _ in grams] == grams
        assert w.gso  # the 16 equal ones went out as one send, not through the fallback


def test_a_segment_too_big_for_the_path_loses_gso_only_for_that_size() -> None:
    class MtuSock(FakeSock):
        def sendmsg(self, bufs: list[bytes], anc: list[tuple[int, int, bytes]], *a: object) -> None:
            if int.from_bytes(anc[0][2], "little") > 1472:  # the device's MTU is 1500
                raise OSError(errno.EINVAL, "segment larger than the MTU")
            super().sendmsg(bufs, anc, *a)

    s, w = MtuSock(), GsoSender()
    assert w.send(s, [b"j" * 4000] * 3, ("x", 1)) == 3  # type: ignore[arg-type]
    assert s.sent == [(b"j" * 4000, None)] * 3 and w.gso and w.max_segment == 3999
    s.sent.clear()
    assert w.send(s, [b"s" * 300] * 3, ("x", 1)) == 3  # type: ignore[arg-type]
    assert s.sent == [(b"s" * 900, 300)]  # small segments still go out together
