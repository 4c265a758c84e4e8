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

Address = tuple[str, int]


class SessionOwner(Protocol):
    """What a session reports to its service (metrics, timeline, unknown TIDs)."""

    buffer: bytearray
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

    def unknown_tid(self, sock: socket.socket, addr: Address, n: int) -> None:
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
        self._send(self.transfer.start(now))
        self._after(Phase.OACK, now)

    def on_readable(self, now: float) -> None:
        """Our TID socket is readable: take one datagram (the poller calls again if more)."""
        buf = self.owner.buffer
        try:
            n, addr = self.sock.recvfrom_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ICMP port unreachable surfaces here: the client is gone; the timer ends it.
            return
        if addr != self.peer:
            self.owner.unknown_tid(self.sock, addr, n)
            return
        self.datagram(bytes(buf[:n]), now)

    def datagram(self, data: bytes, now: float) -> None:
        """A datagram from our peer."""
        if len(data) > MAX_REQUEST:
            self.owner.malformed("oversized")
            return
        before = self.transfer.phase
        try:
            out = self.transfer.receive(data, now)
        except TftpDecodeError as exc:
            self.owner.malformed(exc.reason)
            return
        self._send(out)
        self._after(before, now)

    def on_timeout(self, now: float) -> None:
        """Deadline passed: let the state machine retransmit or give up."""
        self._send(self.transfer.on_timeout(now))
        self._after(self.transfer.phase, now)

    def fail(self, now: float) -> None:
        """Reading the file failed (EIO, a vanished NFS mount): end this transfer only."""
        self._send(self.transfer.fail())
        self._after(self.transfer.phase, now)

    def _send(self, datagrams: list[bytes]) -> None:
        if not datagrams:
            return
        if len(datagrams) > 1:
            self.owner.sender.send(self.sock, datagrams, self.peer)
        else:
            # Lockstep (windowsize 1) is the hot path: one datagram, straight out (and no
            # contextlib.suppress, which costs a context manager per packet).
            try:  # noqa: SIM105
                self.sock.sendto(datagrams[0], self.peer)
            except OSError:
                # Buffer full or peer unreachable: the retransmit timer recovers or ends it.
                pass
        last = datagrams[-1]
        if last[1] == 5:
            self.owner.error_sent(last[3])

    def _after(self, before: Phase, now: float) -> None:
        t = self.transfer
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
