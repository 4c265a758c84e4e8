"""The TFTP service: a listening socket on tftp.port, one TID socket per transfer."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
from collections.abc import Callable

from bootd.config import Config
from bootd.context import Context, StartupError
from bootd.logs import RateLimitedLog
from bootd.proto.tftp.blocks import ByteSource, MemorySource, NetasciiBlocks, OctetBlocks
from bootd.proto.tftp.options import Limits, negotiate
from bootd.proto.tftp.packets import (
    MAX_REQUEST,
    Error,
    ErrorCode,
    Opcode,
    Request,
    TftpDecodeError,
    decode,
    encode_error,
)
from bootd.proto.tftp.transfer import Outcome, ReadTransfer
from bootd.tftp.files import FileCache, Generated, SharedFile, ipxe_chain_script
from bootd.tftp.jail import Refused, clean
from bootd.tftp.session import Address, Session
from bootd.tftp.tidsock import path_blksize, raise_fd_limit, tid_pair, tid_socket
from bootd.udpgso import GsoSender

log = logging.getLogger("bootd.tftp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python 3.11 lacks the name
# Retransmit timers are checked this often; far below the 1 s minimum TFTP timeout.
TICK = 0.05
# A storm's RRQs (and, in single-port mode, every ACK) land on one socket.
LISTEN_RCVBUF = 4 << 20
# Datagrams read from the listening socket per wakeup, so it cannot starve transfers.
DRAIN_BATCH = 64
# With this many transfers in flight, a wakeup that found fewer than COALESCE_BATCH ready
# TIDs pauses the TID poll for COALESCE_DELAY so that ACKs gather: a storm then costs one
# wakeup per batch, not one per ACK or two. Every transfer still has its window in flight
# and a storm's round trip is tens of ms, so 1 ms more is noise; a lone transfer never waits.
COALESCE_TRANSFERS = 64
COALESCE_BATCH = 16
COALESCE_DELAY = 0.001


class TftpService:
    """Read-only TFTP for iPXE binaries and generated per-client iPXE scripts."""

    name = "tftp"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.tftp
        self.buffer = bytearray(65536)
        self.sender = GsoSender()
        self._files = FileCache()
        # Transfers in flight by client address. Bounded by tftp.max_transfers, checked
        # before every insert: that is what keeps sockets and timers finite in a storm.
        self._sessions: dict[Address, Session] = {}
        # Requests whose file is being checked in the worker thread (counted as in flight).
        self._opening: dict[Address, asyncio.Task[None]] = {}
        self._sock: socket.socket | None = None
        self._port = self.cfg.port
        self._single_port = self.cfg.single_port
        self._sweeper: asyncio.Task[None] | None = None
        # TID sockets live in their own epoll set, itself watched by the event loop: one
        # loop wakeup then serves every ready transfer without a handle per socket.
        self._tids = select.epoll()
        # TID socket fd → its session's handler (connected socket, or the stranger one).
        self._by_fd: dict[int, Callable[[float], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resume: asyncio.TimerHandle | None = None  # pending end of a coalescing pause
        self._warn = RateLimitedLog(log)
        self._stopping = False

    def now(self) -> float:
        """Monotonic clock for retransmit deadlines."""
        assert self._loop is not None
        return self._loop.time()

    async def start(self) -> None:
        """Bind tftp.port on all addresses; a busy port becomes a one-line StartupError."""
        self._loop = asyncio.get_running_loop()
        raise_fd_limit(3 * self.cfg.max_transfers + 256)  # two sockets per transfer
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTEN_RCVBUF)
        try:
            sock.bind(("0.0.0.0", self._port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"tftp: UDP port {self._port} is in use — is dnsmasq or tftpd-hpa running? "
                    "stop it or set tftp.port"
                ) from None
            if exc.errno == errno.EACCES:
                raise StartupError(
                    f"tftp: no permission to bind UDP port {self._port} — run as root, grant "
                    "CAP_NET_BIND_SERVICE, or set tftp.port above 1023"
                ) from None
            raise StartupError(f"tftp: cannot bind UDP port {self._port}: {exc}") from None
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_listen_readable)
        self._loop.add_reader(self._tids.fileno(), self._on_tids_readable)
        self._sweeper = self._loop.create_task(self._sweep())

    def listening(self) -> list[str]:
        """Bound address."""
        mode = " (single port)" if self._single_port else ""
        return [f"tftp://0.0.0.0:{self._port}{mode}"]

    def reload(self, config: Config) -> None:
        """New limits and root apply to new requests; transfers in flight keep theirs."""
        new = config.tftp
        if (new.port, new.single_port) != (self._port, self._single_port):
            log.warning("reload: tftp.port and tftp.single_port take effect only after a restart")
        self.cfg = new

    async def stop(self, grace: float) -> None:
        """Stop accepting requests; let transfers in flight finish within `grace` seconds."""
        self._stopping = True
        for task in self._opening.values():
            task.cancel()
        # Single-port transfers still need the listening socket for their ACKs.
        if self._sock is not None and self._loop is not None and not self._single_port:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        deadline = self.now() + grace if self._loop else 0.0
        while self._sessions and self.now() < deadline:
            await asyncio.sleep(TICK)
        for s in list(self._sessions.values()):
            self.finished(s, self.now())
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._loop is not None:
            self._loop.remove_reader(self._tids.fileno())
        self._tids.close()
        self._files.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self.now()
            for s in list(self._sessions.values()):
                d = s.transfer.deadline
                if d is not None and d <= now:
                    try:
                        s.on_timeout(now)
                    except OSError as exc:
                        self.read_failed(s, exc, now)

    def read_failed(self, s: Session, exc: OSError, now: float) -> None:
        """Reading the file failed: warn (rate-limited) and end this transfer with error 0."""
        self._warn.warning(
            f"read-{s.filename}", "tftp: cannot read %s: %s; ending its transfers", s.filename, exc
        )
        s.fail(now)

    def _on_tids_readable(self) -> None:
        # Every ready TID in one wakeup; a session that ended earlier in the batch is gone
        # from the table, so its stale event is skipped.
        now, by_fd = self.now(), self._by_fd
        events = self._tids.poll(0, len(by_fd) or 1)
        for fd, _ in events:
            handler = by_fd.get(fd)
            if handler is not None:
                handler(now)
        if len(events) < COALESCE_BATCH and len(self._sessions) >= COALESCE_TRANSFERS:
            assert self._loop is not None
            self._loop.remove_reader(self._tids.fileno())
            self._resume = self._loop.call_later(COALESCE_DELAY, self._resume_tids)

    def _resume_tids(self) -> None:
        assert self._loop is not None
        self._resume = None
        self._loop.add_reader(self._tids.fileno(), self._on_tids_readable)

    def _on_listen_readable(self) -> None:
        assert self._sock is not None
        sock, buf, now = self._sock, self.buffer, self.now()
        for _ in range(DRAIN_BATCH):
            try:
                n, anc, flags, addr = sock.recvmsg_into([buf], 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if flags & socket.MSG_TRUNC:
                self.malformed("oversized")
                continue
            local_ip = "0.0.0.0"
            for level, kind, data in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                    # struct in_pktinfo: ifindex, ipi_spec_dst (our address), ipi_addr
                    local_ip = socket.inet_ntoa(data[4:8])
            self._on_listen_datagram(bytes(buf[:n]), addr, local_ip, now)

    def _on_listen_datagram(self, data: bytes, addr: Address, local_ip: str, now: float) -> None:
        if self._single_port and (s := self._sessions.get(addr)) is not None:
            s.datagram(data, now)
            return
        if len(data) > MAX_REQUEST:
            self.malformed("oversized")
            return
        try:
            pkt = decode(data)
        except TftpDecodeError as exc:
            self.malformed(exc.reason)
            self._send_error(local_ip, addr, ErrorCode.ILLEGAL_OPERATION, "malformed request")
            return
        if isinstance(pkt, Request):
            self._on_request(pkt, addr, local_ip, now)
        elif isinstance(pkt, Error):
            self.malformed("unknown_tid")  # never answer an ERROR with an ERROR
        else:
            assert self._sock is not None
            self.unknown_tid(self._sock, addr, data)

    def _on_request(self, req: Request, addr: Address, local_ip: str, now: float) -> None:
        cfg = self.cfg
        if addr in self._sessions or addr in self._opening or self._stopping:
            return  # a retransmitted RRQ: the transfer's own timer (or its check) answers it
        try:
            if req.opcode is Opcode.WRQ:
                raise Refused(ErrorCode.ACCESS_VIOLATION, "read-only server", "write")
            if req.mode not in ("octet", "netascii"):
                raise Refused(ErrorCode.ILLEGAL_OPERATION, f"mode {req.mode} unsupported", "mode")
            busy = len(self._sessions) + len(self._opening)
            if busy >= cfg.max_transfers:
                self._warn.warning(
                    "busy",
                    "tftp: %d transfers in flight (tftp.max_transfers); refusing %s from %s",
                    busy,
                    req.filename,
                    addr[0],
                )
                raise Refused(ErrorCode.NOT_DEFINED, "server busy, try again", "busy")
            name = clean(req.filename)
            found = self._files.fresh(cfg.root, name)
        except Refused as r:
            self._refuse(r, req, addr, local_ip)
            return
        if found is not None:  # checked less than a second ago: no system call needed
            self._start(req, addr, local_ip, found, now)
            return
        assert self._loop is not None
        self._opening[addr] = self._loop.create_task(
            self._check_then_start(req, name, addr, local_ip)
        )

    async def _check_then_start(
        self, req: Request, name: str, addr: Address, local_ip: str
    ) -> None:
        """Resolve and open the file off the loop (it may sit on NFS), then start the transfer."""
        try:
            found = await self._files.check(self.cfg.root, name)
        except Refused as r:
            self._refuse(r, req, addr, local_ip)
            return
        except Exception:  # a bug must cost this request, not the service
            log.exception("tftp: internal error opening %r for %s", req.filename, addr[0])
            self._refuse(
                Refused(ErrorCode.NOT_DEFINED, "internal error", "error"), req, addr, local_ip
            )
            return
        finally:
            self._opening.pop(addr, None)
        if not self._stopping:
            self._start(req, addr, local_ip, found, self.now())

    def _start(
        self,
        req: Request,
        addr: Address,
        local_ip: str,
        found: SharedFile | Generated,
        now: float,
    ) -> None:
        cfg = self.cfg
        mac = self.ctx.mac_for_ip(addr[0])
        source: ByteSource
        file: SharedFile | None
        if isinstance(found, Generated):
            source, file = MemorySource(ipxe_chain_script(self.ctx.config.http_base_url, mac)), None
        else:
            source = file = self._files.acquire(found)
        try:
            sock, stranger = (self._sock, None) if self._single_port else tid_pair(local_ip, addr)
        except OSError as exc:
            if file is not None:
                self._files.release(file)
            self._warn.warning("socket", "tftp: cannot open a transfer socket: %s", exc)
            self._refuse(Refused(ErrorCode.NOT_DEFINED, "server busy", "busy"), req, addr, local_ip)
            return
        assert sock is not None
        netascii = req.mode == "netascii"
        max_blksize = cfg.max_blksize
        if max_blksize == "auto":
            max_blksize = path_blksize(sock if stranger is not None else None, addr)
        limits = Limits(max_blksize, cfg.max_windowsize, cfg.timeout, cfg.retries)
        params = negotiate(req.options, limits, None if netascii else source.size)
        blocks: NetasciiBlocks | OctetBlocks
        if netascii:
            blocks = NetasciiBlocks(source, params.blksize)
        else:
            shared = file.packets(params.blksize) if file is not None else None
            blocks = OctetBlocks(source, params.blksize, shared)
        transfer = ReadTransfer(blocks, params, cfg.retries)
        s = Session(sock, stranger, addr, transfer, req.filename, mac, file, self)
        self._sessions[addr] = s
        if stranger is not None:
            for fd, handler in (
                (sock.fileno(), s.on_readable),
                (stranger.fileno(), s.on_stranger_readable),
            ):
                self._by_fd[fd] = handler
                self._tids.register(fd, select.EPOLLIN)
        self.ctx.metrics.tftp_active.set(len(self._sessions))
        try:
            s.start(now)
        except OSError as exc:
            self.read_failed(s, exc, now)

    def _refuse(self, r: Refused, req: Request, addr: Address, local_ip: str) -> None:
        self.ctx.metrics.tftp_transfers.labels(r.reason).inc()
        if r.reason not in ("not_found", "busy"):
            self._warn.warning(
                f"refused-{r.reason}",
                "tftp: refused %s %r from %s: %s",
                req.opcode.name,
                req.filename,
                addr[0],
                r.message,
            )
        else:
            log.info("tftp: %r for %s: %s", req.filename, addr[0], r.message)
        self._send_error(local_ip, addr, r.code, r.message)

    def _send_error(self, local_ip: str, addr: Address, code: int, message: str) -> None:
        pkt = encode_error(code, message)
        try:
            if self._single_port and self._sock is not None:
                self._sock.sendto(pkt, addr)
            else:
                with tid_socket(local_ip) as s:
                    s.sendto(pkt, addr)
        except OSError as exc:
            log.debug("tftp: cannot send error to %s: %s", addr[0], exc)
            return
        self.error_sent(code)

    # SessionOwner: what sessions report back.

    def data_started(self, s: Session, now: float) -> None:
        """Timeline: the NBP download began."""
        if s.mac is not None:
            self.ctx.timeline.record(s.mac, "tftp", "start", self.ctx.clock(), detail=s.filename)

    def finished(self, s: Session, now: float) -> None:
        """Close the TID, release the file, count the outcome."""
        if self._sessions.pop(s.peer, None) is None:
            return
        if s.stranger is not None:
            for fd in (s.sock.fileno(), s.stranger.fileno()):
                self._tids.unregister(fd)
                del self._by_fd[fd]
        s.close()
        if s.file is not None:
            self._files.release(s.file)
        m, t = self.ctx.metrics, s.transfer
        m.tftp_active.set(len(self._sessions))
        m.tftp_bytes.inc(t.bytes_sent)
        m.tftp_retransmits.inc(t.retransmits)
        outcome = t.outcome
        m.tftp_transfers.labels(outcome.value if outcome else "shutdown").inc()
        extra = {"mac": s.mac} if s.mac else None
        if outcome is Outcome.OK:
            if s.mac is not None:
                self.ctx.timeline.record(
                    s.mac, "tftp", "end", self.ctx.clock(), t.bytes_sent, detail=s.filename
                )
            log.debug(
                "tftp: sent %s to %s, %d bytes in %.2f s",
                s.filename,
                s.peer[0],
                t.bytes_sent,
                now - s.started_at,
            )
        elif outcome is Outcome.PROBE:
            log.debug("tftp: %s read the size of %s", s.peer[0], s.filename)  # UEFI does this
        elif outcome is Outcome.ABORTED:
            log.info("tftp: %s aborted %s: %s", s.peer[0], s.filename, t.peer_error, extra=extra)
        else:
            label = outcome.value if outcome else "shutdown"
            self._warn.warning(
                f"end-{label}", "tftp: %s to %s ended: %s", s.filename, s.peer[0], label
            )

    def malformed(self, reason: str) -> None:
        """Count and (rate-limited) log a dropped datagram."""
        self.ctx.metrics.malformed.labels("tftp", reason).inc()
        self._warn.warning(f"malformed-{reason}", "tftp: dropped malformed datagram: %s", reason)

    def unknown_tid(self, sock: socket.socket, addr: Address, data: bytes) -> None:
        """RFC 1350 §4: answer a stranger with error 5 and carry on with the transfer."""
        self.ctx.metrics.malformed.labels("tftp", "unknown_tid").inc()
        if len(data) >= 2 and data[0] << 8 | data[1] == Opcode.ERROR:
            return
        with contextlib.suppress(OSError):
            sock.sendto(encode_error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"), addr)
            self.error_sent(ErrorCode.UNKNOWN_TID)

    def error_sent(self, code: int) -> None:
        """Count an ERROR packet we sent."""
        self.ctx.metrics.tftp_errors.labels(str(code)).inc()
