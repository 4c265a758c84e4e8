"""One transfer on the wire: its TID socket, its state machine, its bookkeeping."""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from bootd.proto.tftp.packets import MAX_REQUEST, TftpDecodeError
from bootd.proto.tftp.transfer import Outcome, Phase, ReadTransfer
from bootd.tftp.files import SharedFile
from bootd.tftp.sender import WindowSender

log = logging.getLogger("bootd.tftp")

# Read one byte past the largest valid datagram: longer ones are still seen as oversized.
RECV_SIZE = MAX_REQUEST + 1
_DATA = Phase.DATA

Address = tuple[str, int]


class SessionOwner(Protocol):
    """What a session reports to its service (metrics, timeline, unknown TIDs)."""

    sender: WindowSender

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

    def error_sent(self, code: int) -> None:
        """We sent an ERROR packet."""
        ...


class Session:
    """Adapter around ReadTransfer: guard size → feed bytes → send what it returns."""

    def __init__(
        self,
        sock: socket.socket,
        own_socket: bool,
        peer: Address,
        transfer: ReadTransfer,
        filename: str,
        mac: str | None,
        file: SharedFile | None,
        owner: SessionOwner,
    ) -> None:
        self.sock = sock
        self.own_socket = own_socket
        self.peer = peer
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
        """Our TID socket is readable: take one datagram (the poller calls again if more)."""
        try:
            data, addr = self.sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ICMP port unreachable surfaces here: the client is gone; the timer ends it.
            return
        if addr != self.peer:
            self.owner.unknown_tid(self.sock, addr, data)
            return
        self.datagram(data, now)

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
        if out:
            if len(out) == 1:
                # Lockstep (windowsize 1) is the hot path: one datagram, straight out.
                try:  # noqa: SIM105 (contextlib.suppress costs a context manager per packet)
                    self.sock.sendto(out[0], self.peer)
                except OSError:
                    # Buffer full or peer unreachable: the retransmit timer recovers or ends it.
                    pass
            else:
                self.owner.sender.send(self.sock, out, self.peer)
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
        if len(datagrams) > 1:
            self.owner.sender.send(self.sock, datagrams, self.peer)
        elif datagrams:
            try:  # noqa: SIM105
                self.sock.sendto(datagrams[0], self.peer)
            except OSError:
                pass

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
        """Release the socket (our own TID only)."""
        if self.own_socket:
            self.sock.close()


def outcome_label(outcome: Outcome | None) -> str:
    """tftp_transfers{result} label."""
    return outcome.value if outcome is not None else "shutdown"
