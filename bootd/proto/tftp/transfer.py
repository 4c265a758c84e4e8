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


class Blocks(Protocol):
    """Numbered DATA payloads; `last` is the final block index once known."""

    last: int | None

    def packet(self, index: int) -> bytes:
        """DATA datagram of block `index` (1-based)."""
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


class ReadTransfer:
    """Serve one file: OACK, windows of DATA (RFC 7440), retransmit only on timeout."""

    def __init__(self, blocks: Blocks, params: Negotiated, retries: int) -> None:
        self.params = params
        self._blocks = blocks
        self._retries = retries
        self._tries = 0  # consecutive timeouts without progress
        self._acked = 0  # highest block index acknowledged (unbounded: no 16-bit wrap)
        self._sent = 0  # highest block index ever sent
        self._window_end = 0  # last block index of the window in flight
        self._oack = encode(OptionAck(params.granted)) if params.granted else b""
        self.phase = Phase.OACK if self._oack else Phase.DATA
        self.outcome: Outcome | None = None
        self.deadline: float | None = None
        self.bytes_sent = 0  # payload bytes, first transmissions only
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
        return self._send_window(self._acked + 1)

    def _send_window(self, first: int) -> list[bytes]:
        last = self._blocks.last
        end = first + self.params.windowsize - 1
        out: list[bytes] = []
        i = first
        while i <= end and (last is None or i <= last):
            pkt = self._blocks.packet(i)
            out.append(pkt)
            if i > self._sent:
                self._sent = i
                self.bytes_sent += len(pkt) - 4
            else:
                self.retransmits += 1
            last = self._blocks.last
            i += 1
        self._window_end = i - 1
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
        if self.done:
            return []
        # Fast path for the common case: a well-formed ACK.
        if len(datagram) == 4 and datagram[0] == 0 and datagram[1] == 4:
            return self._on_ack(datagram[2] << 8 | datagram[3], now)
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
        if self.phase is Phase.OACK:
            if wire_block != 0:
                return []
            self.phase = Phase.DATA
            self._tries = 0
            self.deadline = now + self.params.timeout
            return self._send_window(1)
        # Map the 16-bit block number onto the unbounded index, forward from the last
        # ACK: rollover past 65535 then needs no special case.
        ahead = (wire_block - self._acked) & 0xFFFF
        if ahead == 0 or self._acked + ahead > self._window_end:
            # Duplicate or stale ACK: never answer it with data (Sorcerer's Apprentice,
            # RFC 1123 §4.2.3.1); only the timer retransmits.
            return []
        self._acked += ahead
        self._blocks.release(self._acked)
        self._tries = 0
        if self._blocks.last is not None and self._acked >= self._blocks.last:
            self._finish(Outcome.OK)
            return []
        self.deadline = now + self.params.timeout
        # RFC 7440 §4: an ACK inside the window means blocks after it were lost;
        # the next window starts right after the acknowledged block either way.
        return self._send_window(self._acked + 1)

    def on_timeout(self, now: float) -> list[bytes]:
        """The deadline passed: resend the OACK or the window, or give up after `retries`."""
        if self.done:
            return []
        self._tries += 1
        if self._tries > self._retries:
            self._finish(Outcome.TIMEOUT)
            return []
        self.deadline = now + self.params.timeout
        if self.phase is Phase.OACK:
            self.retransmits += 1
            return [self._oack]
        return self._send_window(self._acked + 1)
