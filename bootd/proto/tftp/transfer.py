"""One read transfer (RRQ) as a sans-I/O state machine: bytes and `now` in, datagrams out."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from bootd.proto.tftp.options import Negotiated
from bootd.proto.tftp.packets import (
    Ack,
    Error,
    ErrorCode,
    OptionAck,
    decode,
    encode,
    encode_error,
)

# Retransmit timeouts double up to this multiple of the negotiated timeout, and no wait
# for an ACK, however slow the round trips were, is longer: clients give up on silence
# too (a storm's round trip of 4 s times a backoff of 8 would be a 64 s pause).
MAX_BACKOFF = 8.0


class Blocks(Protocol):
    """Numbered DATA payloads; `last` is the final block index once known."""

    last: int | None

    def packet(self, index: int) -> bytes:
        """DATA datagram of block `index` (1-based)."""
        ...

    def packets(self, first: int, end: int) -> list[bytes]:
        """DATA datagrams of blocks first..end (a window)."""
        ...

    def release(self, upto: int) -> None:
        """Blocks ≤ upto are acknowledged."""
        ...


class Phase(Enum):
    """Where the transfer is."""

    OACK = "oack"  # OACK sent, waiting for ACK 0
    DATA = "data"
    DONE = "done"


class Outcome(Enum):
    """How a finished transfer ended (the tftp_transfers{result} label)."""

    OK = "ok"
    PROBE = "probe"  # client read the OACK (tsize) and aborted: UEFI does this first
    ABORTED = "aborted"  # client sent an ERROR mid-transfer
    TIMEOUT = "timeout"
    ILLEGAL = "illegal"  # client sent something other than ACK/ERROR
    ERROR = "error"  # the server could not go on (the file became unreadable)


_DATA = Phase.DATA


class ReadTransfer:
    """Serve one file: OACK, windows of DATA (RFC 7440), retransmit only on timeout."""

    def __init__(self, blocks: Blocks, params: Negotiated, retries: int) -> None:
        self.params = params
        self._blocks = blocks
        self._retries = retries
        self._tries = 0  # consecutive timeouts without progress
        self._backoff = 1.0
        # Smoothed round trip of whole windows (RFC 6298 style, Karn's rule: windows that
        # carried a retransmission give no sample), so a slow client is not flooded.
        self._srtt: float | None = None
        self._window_sent_at: float | None = None
        self._acked = 0  # highest block index acknowledged (unbounded: no 16-bit wrap)
        self._sent = 0  # highest block index ever sent
        self._window_end = 0  # last block index of the window in flight
        self._ws = params.windowsize
        self._timeout = params.timeout
        self._rto_base = params.timeout  # before backoff; follows _srtt
        self._max_wait = params.timeout * MAX_BACKOFF
        self._oack = encode(OptionAck(params.granted)) if params.granted else b""
        self.phase = Phase.OACK if self._oack else Phase.DATA
        self.outcome: Outcome | None = None
        self.deadline: float | None = None
        self._tail = 0  # payload length of the last block, once sent
        self.retransmits = 0  # blocks sent again after a timeout
        self.peer_error: str = ""

    @property
    def done(self) -> bool:
        """Finished, one way or another."""
        return self.phase is Phase.DONE

    def start(self, now: float) -> list[bytes]:
        """First datagrams: the OACK, or the first window when no option was granted."""
        self.deadline = now + self.params.timeout
        if self.phase is Phase.OACK:
            return [self._oack]
        return self._send_window(self._acked + 1, now)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes sent, first transmissions only (every block but the last is full)."""
        sent = self._sent
        if sent and sent == self._blocks.last:
            return (sent - 1) * self.params.blksize + self._tail
        return sent * self.params.blksize

    def _send_window(self, first: int, now: float | None = None) -> list[bytes]:
        blocks = self._blocks
        last = blocks.last
        end = first + self._ws - 1
        if last is None:
            return self._send_window_unbounded(first, end, now)
        # The block count is known (octet, or netascii past its end): no per-block checks.
        if end > last:
            end = last
        out = [blocks.packet(first)] if first == end else blocks.packets(first, end)
        sent = self._sent
        if first <= sent:
            self.retransmits += min(end, sent) - first + 1
            self._window_sent_at = None  # Karn: no RTT sample from a resent window
        else:
            self._window_sent_at = now
        if end > sent:
            self._sent = end
            if end == last:
                self._tail = len(out[-1]) - 4
        self._window_end = end
        return out

    def _send_window_unbounded(self, first: int, end: int, now: float | None) -> list[bytes]:
        # Netascii before its end is found: `last` appears only once the short block is made.
        out: list[bytes] = []
        blocks = self._blocks
        resent = False
        i = first
        while i <= end:
            pkt = blocks.packet(i)
            out.append(pkt)
            if i > self._sent:
                self._sent = i
            else:
                self.retransmits += 1
                resent = True
            if blocks.last is not None:  # this was the short, final block
                self._tail = len(pkt) - 4
                break
            i += 1
        self._window_end = first + len(out) - 1
        self._window_sent_at = None if resent else now
        return out

    def fail(self) -> list[bytes]:
        """The server cannot continue: end the transfer and tell the client (error 0)."""
        if self.done:
            return []
        self._finish(Outcome.ERROR)
        return [encode_error(ErrorCode.NOT_DEFINED, "server error reading the file")]

    def _finish(self, outcome: Outcome) -> None:
        self.phase = Phase.DONE
        self.outcome = outcome
        self.deadline = None

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        """A datagram from the peer's TID; raises TftpDecodeError if it is garbage."""
        # Fast path for the common case: a well-formed ACK mid-transfer.
        if len(datagram) == 4 and datagram[1] == 4 and datagram[0] == 0 and self.phase is _DATA:
            return self.ack(datagram[2] << 8 | datagram[3], now)
        if self.phase is Phase.DONE:
            return []
        pkt = decode(datagram)
        if isinstance(pkt, Ack):
            return self._on_ack(pkt.block, now)
        if isinstance(pkt, Error):
            self.peer_error = f"{pkt.code} {pkt.message}".strip()
            probe = self.phase is Phase.OACK and (
                pkt.code == ErrorCode.OPTION_REFUSED or "tsize" in self.params.granted
            )
            self._finish(Outcome.PROBE if probe else Outcome.ABORTED)
            return []
        self._finish(Outcome.ILLEGAL)
        return [encode_error(ErrorCode.ILLEGAL_OPERATION, "only ACK or ERROR expected")]

    def _on_ack(self, wire_block: int, now: float) -> list[bytes]:
        if self.phase is not Phase.OACK:
            return self.ack(wire_block, now)
        if wire_block != 0:
            return []
        self.phase = Phase.DATA
        self._tries = 0
        self._backoff = 1.0
        self.deadline = now + self._rto_base
        return self._send_window(1, now)

    def ack(self, wire_block: int, now: float) -> list[bytes]:
        """ACK of `wire_block` while in the DATA phase: what `receive` does with a
        well-formed ACK, for an adapter that has already checked the 4 bytes."""
        # Map the 16-bit block number onto the unbounded index, forward from the last
        # ACK: rollover past 65535 then needs no special case.
        acked = self._acked
        ahead = (wire_block - acked) & 0xFFFF
        end = self._window_end
        acked += ahead
        if ahead == 0 or acked > end:
            # Duplicate or stale ACK: never answer it with data (Sorcerer's Apprentice,
            # RFC 1123 §4.2.3.1); only the timer retransmits.
            return []
        if acked == end and (sent_at := self._window_sent_at) is not None:
            # Smoothed window round trip (RFC 6298 weights); the timeout before backoff
            # is 2 x SRTT within [timeout, 8 x timeout].
            rtt = now - sent_at
            srtt = self._srtt
            srtt = self._srtt = rtt if srtt is None else 0.875 * srtt + 0.125 * rtt
            base, r = self._timeout, srtt + srtt
            self._rto_base = base if r <= base else min(r, base * MAX_BACKOFF)
            # Karn: keep the backed-off timeout until a window without retransmissions
            # comes back, or a storm never learns its real round trip.
            self._backoff = 1.0
        self._acked = acked
        blocks = self._blocks
        blocks.release(acked)
        self._tries = 0
        last = blocks.last
        if last is not None and acked >= last:
            self._finish(Outcome.OK)
            return []
        wait = self._rto_base * self._backoff
        self.deadline = now + (wait if wait < self._max_wait else self._max_wait)
        nxt = acked + 1
        if self._ws == 1 and nxt > self._sent and last is not None:
            # Lockstep, a block never sent before: nearly every ACK of a firmware client.
            # What _send_window does for it, without the cases a window needs.
            pkt = blocks.packet(nxt)
            self._window_sent_at = now
            self._sent = self._window_end = nxt
            if nxt == last:
                self._tail = len(pkt) - 4
            return [pkt]
        # RFC 7440 §4: an ACK inside the window means blocks after it were lost;
        # the next window starts right after the acknowledged block either way.
        return self._send_window(nxt, now)

    def on_timeout(self, now: float) -> list[bytes]:
        """The deadline passed: resend the OACK or the window, or give up after `retries`."""
        if self.done:
            return []
        self._tries += 1
        if self._tries > self._retries:
            self._finish(Outcome.TIMEOUT)
            return []
        # RFC 1123 §4.2.3.2: back off exponentially, or a slow client in a storm gets
        # its windows again and again and the whole link collapses.
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self.deadline = now + min(self._rto_base * self._backoff, self._max_wait)
        if self.phase is Phase.OACK:
            self.retransmits += 1
            return [self._oack]
        return self._send_window(self._acked + 1, now)
