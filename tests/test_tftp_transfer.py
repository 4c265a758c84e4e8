"""The read-transfer state machine with a fake clock and a lossy in-memory link."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from bootd.proto.tftp.blocks import MemorySource, NetasciiBlocks, OctetBlocks
from bootd.proto.tftp.options import Limits, Negotiated, negotiate
from bootd.proto.tftp.packets import Data, OptionAck, decode, encode_ack, encode_error
from bootd.proto.tftp.transfer import Outcome, Phase, ReadTransfer


def make(data: bytes, opts: dict[str, str], retries: int = 5, **lim: int) -> ReadTransfer:
    params = negotiate(opts, Limits(**lim), tsize=len(data))  # type: ignore[arg-type]
    return ReadTransfer(OctetBlocks(MemorySource(data), params.blksize), params, retries)


def blocks_of(out: list[bytes]) -> list[int]:
    return [p.block for p in map(decode, out) if isinstance(p, Data)]


@dataclass
class LossyClient:
    """An RFC 7440 receiver; the link drops each datagram with probability `loss`."""

    blksize: int
    windowsize: int
    rng: random.Random
    loss: float
    timeout: float = 0.7
    got: bytearray = field(default_factory=bytearray)
    expected: int = 1
    in_window: int = 0
    finished: bool = False

    def on_data(self, pkt: Data) -> list[bytes]:
        if pkt.block != self.expected & 0xFFFF:
            self.in_window = 0
            return [encode_ack(self.expected - 1)]
        self.got += pkt.payload
        self.expected += 1
        self.in_window += 1
        if len(pkt.payload) < self.blksize:
            self.finished = True
            return [encode_ack(pkt.block)]
        if self.in_window >= self.windowsize:
            self.in_window = 0
            return [encode_ack(pkt.block)]
        return []


def run_link(t: ReadTransfer, client: LossyClient, max_time: float = 10_000.0) -> float:
    """Deliver datagrams both ways with 1 ms latency and random loss; returns end time."""
    now = 0.0
    events: list[tuple[float, int, str, bytes]] = []
    seq = 0

    def send(direction: str, pkts: list[bytes]) -> None:
        nonlocal seq
        for p in pkts:
            seq += 1
            if client.rng.random() >= client.loss:
                heapq.heappush(events, (now + 0.001, seq, direction, p))

    send("to_client", t.start(now))
    last_client_rx = 0.0
    last_ack = encode_ack(0)
    while not t.done and now < max_time:
        candidates = [t.deadline or max_time]
        if events:
            candidates.append(events[0][0])
        if not client.finished:
            candidates.append(last_client_rx + client.timeout)
        now = min(candidates)
        if events and events[0][0] == now:
            _, _, direction, p = heapq.heappop(events)
            if direction == "to_server":
                send("to_client", t.receive(p, now))
                continue
            last_client_rx = now
            pkt = decode(p)
            if isinstance(pkt, OptionAck):
                send("to_server", [encode_ack(0)])
            elif isinstance(pkt, Data):
                acks = client.on_data(pkt)
                if acks:
                    last_ack = acks[-1]
                send("to_server", acks)
        elif t.deadline is not None and now >= t.deadline:
            send("to_client", t.on_timeout(now))
        else:
            # Receiver timeout: resend the last ACK (the server must not treat it as new).
            last_client_rx = now
            send("to_server", [last_ack])
    return now


def test_plain_rrq_no_oack_sends_data_1() -> None:
    t = make(b"x" * 1000, {})
    out = t.start(0.0)
    assert t.phase is Phase.DATA and blocks_of(out) == [1]
    assert blocks_of(t.receive(encode_ack(1), 0.1)) == [2]
    assert t.receive(encode_ack(2), 0.2) == [] and t.outcome is Outcome.OK
    assert t.bytes_sent == 1000 and t.retransmits == 0


def test_exact_multiple_ends_with_empty_block() -> None:
    t = make(b"y" * 1024, {})
    t.start(0)
    t.receive(encode_ack(1), 0)
    out = t.receive(encode_ack(2), 0)
    assert decode(out[0]) == Data(3, b"")
    t.receive(encode_ack(3), 0)
    assert t.outcome is Outcome.OK


def test_duplicate_ack_never_triggers_data() -> None:
    t = make(b"z" * 5000, {})
    t.start(0)
    assert blocks_of(t.receive(encode_ack(1), 0.1)) == [2]
    # Sorcerer's Apprentice: the delayed duplicate of ACK 1 must not resend block 2.
    assert t.receive(encode_ack(1), 0.2) == []
    assert t.receive(encode_ack(0), 0.2) == []
    assert t.retransmits == 0
    # Only the timer retransmits, and only the unacknowledged block.
    assert t.deadline == pytest.approx(1.1)
    assert blocks_of(t.on_timeout(1.1)) == [2] and t.retransmits == 1


def test_oack_then_window_and_partial_ack() -> None:
    t = make(bytes(range(256)) * 40, {"blksize": "100", "windowsize": "8", "tsize": "0"})
    out = t.start(0)
    assert decode(out[0]) == OptionAck({"blksize": "100", "windowsize": "8", "tsize": "10240"})
    assert t.receive(encode_ack(5), 0.1) == []  # not ACK 0: ignored in OACK phase
    assert blocks_of(t.receive(encode_ack(0), 0.1)) == list(range(1, 9))
    # Client saw 1..3 then a gap: it ACKs 3 and the window restarts at 4.
    assert blocks_of(t.receive(encode_ack(3), 0.2)) == list(range(4, 12))
    assert t.retransmits == 5


def test_retries_are_bounded_with_exponential_backoff() -> None:
    t = make(b"q" * 3000, {}, retries=3)
    t.start(0)
    gaps = []
    for _ in range(3):
        now = t.deadline
        assert now is not None
        assert blocks_of(t.on_timeout(now)) == [1]
        assert t.deadline is not None
        gaps.append(t.deadline - now)
    assert gaps == [2.0, 4.0, 8.0]
    assert t.on_timeout(t.deadline) == [] and t.outcome is Outcome.TIMEOUT and t.deadline is None
    # Karn: an ACK for a resent block keeps the backoff; a clean round trip resets it.
    t2 = make(b"q" * 3000, {})
    t2.start(0)
    t2.on_timeout(1.0)
    t2.receive(encode_ack(1), 1.5)
    assert t2.deadline == pytest.approx(3.5)
    t2.receive(encode_ack(2), 1.6)
    assert t2.deadline == pytest.approx(2.6)


def test_no_wait_for_an_ack_exceeds_eight_timeouts() -> None:
    """Slow round trips raise the base timeout; a backoff on top must not pause for a minute."""
    t = make(b"q" * 30000, {})
    t.start(0)
    now = 0.0
    for block in range(1, 6):  # round trips of 5 s: base timeout 2 x SRTT, capped at 8 s
        now += 5.0
        t.receive(encode_ack(block), now)
    assert t.deadline == pytest.approx(now + 8.0)
    for _ in range(3):  # backing off from there stays at 8 s
        now = t.deadline
        assert blocks_of(t.on_timeout(now)) == [6]
        assert t.deadline == pytest.approx(now + 8.0)


def test_tsize_probe_then_error_8_is_a_probe() -> None:
    t = make(b"e" * 3000, {"tsize": "0", "blksize": "1468"})
    t.start(0)
    assert t.receive(encode_error(8, "User aborted the transfer"), 0.01) == []
    assert t.outcome is Outcome.PROBE
    t2 = make(b"e" * 3000, {})
    t2.start(0)
    t2.receive(encode_error(0, "disk full"), 0.01)
    assert t2.outcome is Outcome.ABORTED and t2.peer_error == "0 disk full"


def test_illegal_opcode_mid_transfer_gets_error_4() -> None:
    t = make(b"e" * 3000, {})
    t.start(0)
    out = t.receive(b"\x00\x03\x00\x01data", 0.1)
    assert decode(out[0]).code == 4 and t.outcome is Outcome.ILLEGAL  # type: ignore[union-attr]


def test_rollover_past_65535_blocks() -> None:
    data = bytes(random.Random(1).randbytes(70_000 * 8 + 3))
    t = make(data, {"blksize": "8", "windowsize": "16"}, max_blksize=1468)
    client = LossyClient(8, 16, random.Random(2), loss=0.0)
    run_link(t, client)
    assert t.outcome is Outcome.OK and bytes(client.got) == data


@pytest.mark.parametrize(("windowsize", "loss", "seed"), [(1, 0.1, 3), (16, 0.1, 4), (64, 0.05, 5)])
def test_lossy_link_completes_correctly(windowsize: int, loss: float, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(300_000)
    t = make(data, {"blksize": "512", "windowsize": str(windowsize)}, retries=50)
    client = LossyClient(512, windowsize, rng, loss=loss)
    run_link(t, client)
    assert t.outcome is Outcome.OK and bytes(client.got) == data
    assert t.retransmits > 0 and t.bytes_sent == len(data)


def test_netascii_conversion_across_block_boundaries() -> None:
    text = b"line one\nline\rtwo\n" * 50 + b"\n"
    expected = text.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    for blksize in (8, 9, 17, 512):
        params = Negotiated(blksize=blksize, windowsize=4)
        t = ReadTransfer(NetasciiBlocks(MemorySource(text), blksize), params, retries=50)
        client = LossyClient(blksize, 4, random.Random(blksize), loss=0.1)
        run_link(t, client)
        assert t.outcome is Outcome.OK and bytes(client.got) == expected


def test_retransmit_timeout_adapts_to_a_slow_client() -> None:
    t = make(b"r" * 512 * 40, {"windowsize": "4"})
    now = 0.0
    t.start(now)
    t.receive(encode_ack(0), now)  # the OACK
    for block in (4, 8, 12):
        now += 0.9  # each window takes 0.9 s to be acknowledged, no loss
        t.receive(encode_ack(block), now)
    assert t.retransmits == 0
    # 2 x smoothed RTT (0.9 s) beats the 1 s configured timeout: no spurious resend.
    assert t.deadline is not None and t.deadline - now == pytest.approx(1.8)
