"""One transfer on the wire: its TID socket, its state machine, its bookkeeping."""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from bootd.proto.tftp.packets import MAX_REQUEST, TftpDecodeError
from bootd.proto.tftp.transfer import Outcome, Phase, ReadTransfer
from bootd.tftp.files import SharedFile
from bootd.udpgso import GsoSender

log = logging.getLogger("bootd.tftp")

# Read one byte past the largest valid datagram: longer ones are still seen as oversized.
RECV_SIZE = MAX_REQUEST + 1
# Every TID socket reads into this one buffer: the loop runs one handler at a time, and
# a datagram's bytes are copied out (or its ACK decoded) before the next read.
_SCRATCH = bytearray(RECV_SIZE)
_DATA = Phase.DATA

Address = tuple[str, int]


class SessionOwner(Protocol):
    """What a session reports to its service (metrics, timeline, unknown TIDs)."""

    sender: GsoSender

    def data_started(self, s: Session, now: float) -> None:
        """The first DATA went out (after the OACK was acknowledged, if any)."""
        ...

    def finished(self, s: Session, now: float) -> None:
        """The transfer is over; its outcome is set."""
        ...

    def malformed(self, reason: str) -> None:
        """A datagram was dropped as garbage."""
        ...

    def unknown_tid(self, sock: socket.socket, addr: Address, data: bytes) -> None:
        """A datagram reached a TID socket from someone other than its peer."""
        ...

    def read_failed(self, s: Session, exc: OSError, now: float) -> None:
        """Reading the file for this transfer failed."""
        ...

    def error_sent(self, code: int) -> None:
        """We sent an ERROR packet."""
        ...


class Session:
    """Adapter around ReadTransfer: guard size → feed bytes → send what it returns.

    With its own TID, `sock` is connected to the peer (the kernel routes once and filters
    by source) and `stranger` is an unconnected socket on the same port that catches
    datagrams from anyone else. In single-port mode both roles fall to the listening socket.
    """

    def __init__(
        self,
        sock: socket.socket,
        stranger: socket.socket | None,
        peer: Address,
        transfer: ReadTransfer,
        filename: str,
        mac: str | None,
        file: SharedFile | None,
        owner: SessionOwner,
    ) -> None:
        self.sock = sock
        self.stranger = stranger
        self.peer = peer
        # Where datagrams go: nowhere to name on a connected socket (our own TID).
        self._dest: Address | None = None if stranger is not None else peer
        self.transfer = transfer
        self.filename = filename
        self.mac = mac
        self.file = file
        self.owner = owner
        self.started_at = 0.0

    def start(self, now: float) -> None:
        """Send the OACK or the first window."""
        self.started_at = now
        out = self.transfer.start(now)
        self._send(out)
        self._after(Phase.OACK, out, now)

    def on_readable(self, now: float) -> None:
        """Our connected TID socket is readable: take one datagram (the poller calls again)."""
        buf = _SCRATCH
        try:
            n = self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ICMP port unreachable surfaces here: the client is gone; the timer ends it.
            return
        t = self.transfer
        if n == 4 and buf[1] == 4 and buf[0] == 0 and t.phase is _DATA:
            # An ACK mid-transfer, the one datagram of nearly every round trip: straight
            # to the state machine, no bytes object and no general checks.
            try:
                out = t.ack(buf[2] << 8 | buf[3], now)
            except OSError as exc:  # reading the file failed
                self.owner.read_failed(self, exc, now)
                return
            if out:
                if len(out) == 1 and self._dest is None:  # lockstep on our own TID
                    # Not contextlib.suppress: entering a context manager per block costs more.
                    try:  # noqa: SIM105
                        self.sock.send(out[0])
                    except OSError:
                        pass  # as in _send: the retransmit timer recovers or ends it
                else:
                    self._send(out)
            if t.phase is not _DATA:
                self._after(_DATA, out, now)
            return
        self.datagram(bytes(buf[:n]), now)

    def on_stranger_readable(self, now: float) -> None:
        """A datagram reached our TID port from someone other than the peer."""
        assert self.stranger is not None
        try:
            data, addr = self.stranger.recvfrom(RECV_SIZE)
        except OSError:
            return
        if addr == self.peer:  # only possible before the connected socket existed
            self.datagram(data, now)
        else:
            self.owner.unknown_tid(self.stranger, addr, data)

    def datagram(self, data: bytes, now: float) -> None:
        """A datagram from our peer."""
        if len(data) > MAX_REQUEST:
            self.owner.malformed("oversized")
            return
        t = self.transfer
        before = t.phase
        try:
            out = t.receive(data, now)
        except TftpDecodeError as exc:
            self.owner.malformed(exc.reason)
            return
        except OSError as exc:  # reading the file failed
            self.owner.read_failed(self, exc, now)
            return
        if out:
            self._send(out)
        if before is not _DATA or t.phase is not _DATA:
            self._after(before, out, now)

    def on_timeout(self, now: float) -> None:
        """Deadline passed: let the state machine retransmit or give up."""
        before = self.transfer.phase
        out = self.transfer.on_timeout(now)
        self._send(out)
        self._after(before, out, now)

    def fail(self, now: float) -> None:
        """Reading the file failed (EIO, a vanished NFS mount): end this transfer only."""
        before = self.transfer.phase
        out = self.transfer.fail()
        self._send(out)
        self._after(before, out, now)

    def _send(self, datagrams: list[bytes]) -> None:
        if len(datagrams) == 1:
            # Lockstep (windowsize 1) is the hot path: one datagram, straight out.
            try:
                if self._dest is None:
                    self.sock.send(datagrams[0])
                else:
                    self.sock.sendto(datagrams[0], self._dest)
            except OSError:
                # Buffer full or peer unreachable: the retransmit timer recovers or ends it.
                pass
        elif datagrams:
            # A window: full blocks, the file's short last block maybe at its end.
            self.owner.sender.send(self.sock, datagrams, self._dest, equal=True)

    def _after(self, before: Phase, sent: list[bytes], now: float) -> None:
        # Off the hot path: only when the phase changed or is not DATA. An ERROR the
        # state machine sends always ends the transfer, so it is counted here.
        t = self.transfer
        if sent and sent[-1][1] == 5:
            self.owner.error_sent(sent[-1][3])
        if before is Phase.OACK and t.phase is not Phase.OACK and t.outcome is None:
            self.owner.data_started(self, now)
        if t.done:
            self.owner.finished(self, now)

    def close(self) -> None:
        """Release the sockets (our own TID only)."""
        if self.stranger is not None:
            self.sock.close()
            self.stranger.close()


def outcome_label(outcome: Outcome | None) -> str:
    """tftp_transfers{result} label."""
    return outcome.value if outcome is not None else "shutdown"
