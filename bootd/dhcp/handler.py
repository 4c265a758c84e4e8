"""Bytes in → reply out: decode, fold the stages, make the lease durable, pick the destination."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from prometheus_client import Counter

from bootd.context import Context
from bootd.dhcp.address import client_state
from bootd.dhcp.exchange import ZERO, Exchange, Stage, run_stages
from bootd.dhcp.offers import OfferMemo
from bootd.logs import RateLimitedLog
from bootd.proto.dhcp import (
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPNAK,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    decode,
)
from bootd.ratelimit import TokenBucket
from bootd.store.leases import Lease, LeaseTable

log = logging.getLogger("bootd.dhcp")

CLIENT_PORT = 68
SERVER_PORT = 67
BROADCAST = "255.255.255.255"
# ACKs waiting for their lease's commit. Each holds one encoded reply; past this
# many the disk is far behind and new REQUESTs are dropped (the client retries).
MAX_PENDING_COMMITS = 20000
# Durable ACKs leave through a token bucket: ACK_RATE a second, at most ACK_BURST back to
# back. A group commit releases hundreds of ACKs at once; sent in one go they overflow a
# receiver that takes them all on one socket (a relay agent, a switch's DHCP snooping,
# perfdhcp), and each lost ACK costs its client a retransmission (1-4 s). 20,000 a second
# delays the last of 640 ACKs by ~32 ms at most. The 640-client avalanche against
# perfdhcp at default socket buffers lost ACKs at perfdhcp's socket in 11 of 24 runs
# without the bucket, in 4 of 8 with bursts of 32, in none of 48 with bursts of 16 at
# 10,000-40,000 a second sent one by one. Since a burst's replies leave as one UDP GSO
# send (the service), a burst arrives all at once: at 40,000 a second 4 of 12 runs lost
# ACKs again; at 20,000 none of 36 did, and 33 of 36 finished inside perfdhcp's first
# check at 0.2 s.
ACK_RATE = 20000.0
ACK_BURST = 16
# Group commit under load, in the daemon: when a burst's leases went to the store
# less than BUSY ago, requests are streaming in, and the next bursts' leases are
# held on a timer of HOLD and handed over as one write. The timer runs when the loop
# gets to it: under load the socket adapter reads bursts back to back for up to its
# READ_BUDGET, so writes then leave every 10-25 ms (median interval 10.5-24 ms, 40-90
# leases a write, at 4,000 leases/s pinned) and an ACK waits that much longer. That
# saves, per burst, a pickled job, a send that wakes the writer, a future, a task and
# most commits (~290 us of the writer's CPU each): 277-285 -> 240-242 us of CPU a
# lease. Checking the deadline after every burst as well (a write every ~6 ms) gave
# most of that back (245-280 us). In a 640-client avalanche the last ACK left 132-163
# ms after the first DISCOVER (105-169 without the hold, in the same minutes), inside
# perfdhcp's first check at ~200 ms.
# The timer itself ran late in an avalanche: the loop ran the socket's reader (a full
# READ_BUDGET) before it, so held ACKs waited 20-25 ms and went to the store as one
# write of ~460 leases, whose ACKs then queued at the token bucket. So a burst that
# finds HOLD_MAX_LEASES held hands them over itself: a bigger write saves nothing
# more (the commit's ~290 us over 128 leases is ~2 us each) and only makes its ACKs
# wait. In the avalanche that is a write every ~5 ms. A cap on the wait instead (5
# ms) did as well there but wrote as often under a steady load that saturates the
# loop, and cost it CPU.
# Avalanche, pinned, 8 rounds in rotation (medians): last ACK 109 ms without a cap,
# 96 with the 5 ms cap, 97 with this one. Sustained 7,000 offered/s, pinned, 4 MiB
# buffers, 4 runs each: 198, 213 and 192 us of CPU a lease; 6,284-6,662, 5,796-6,521
# and 6,353-7,000 leases/s.
BUSY = 0.020
HOLD = 0.002
HOLD_MAX_LEASES = 128


class Destination(NamedTuple):
    """Where a reply goes; `arp_mac` asks the sender to pin yiaddr → chaddr first.

    A NamedTuple, not a frozen dataclass: one is made per reply, and a frozen
    dataclass's __init__ costs twice as much (1.06 us against 0.47).
    """

    ip: str
    port: int
    arp_mac: bytes | None = None
    # Send from the socket bound to this port (proxy replies leave from 4011).
    via: int = SERVER_PORT


def destination(
    req: DhcpPacket, yiaddr: str, nak: bool, source: tuple[str, int], pxe_port: bool
) -> Destination:
    """RFC 2131 §4.1: relay, then ciaddr, then broadcast, else unicast to yiaddr (the reply's)."""
    if pxe_port and source[0] != ZERO:
        # PXE proxy (port 4011): the client already has an address; answer where it asked from.
        return Destination(source[0], source[1], via=-1)
    if req.giaddr != ZERO:
        return Destination(req.giaddr, SERVER_PORT)
    if nak:
        return Destination(BROADCAST, CLIENT_PORT)
    if req.ciaddr != ZERO:
        return Destination(req.ciaddr, CLIENT_PORT)
    if req.broadcast or yiaddr == ZERO:
        return Destination(BROADCAST, CLIENT_PORT)
    return Destination(yiaddr, CLIENT_PORT, req.chaddr[: req.hlen])


# Metric label per message type, computed once (Enum .name is slow on the hot path).
_LABEL = {m: m.name.lower() for m in MessageType}

Sender = Callable[[bytes, Destination], None]
PendingAck = tuple[Exchange, Lease, bytes, Destination]


class DhcpHandler:
    """Service logic between the socket adapter and the stages."""

    def __init__(
        self,
        ctx: Context,
        leases: LeaseTable,
        stages: list[Stage],
        send: Sender,
        offers: OfferMemo | None = None,
    ) -> None:
        self.ctx = ctx
        self.leases = leases
        self.stages = stages
        self.send = send
        # Server mode: OFFERs kept so that the REQUESTs taking them skip the stages.
        self.offers = offers
        self._pending: set[asyncio.Task[None]] = set()
        # Filled during one burst of datagrams, emptied by flush() right after it.
        self._acks: list[PendingAck] = []
        self._events: list[tuple[str, str, str, float, str]] = []
        self._flush_scheduled = False
        self._in_flight = 0
        # ACKs whose leases wait on the HOLD timer to join one write.
        self._held: list[PendingAck] = []
        self._held_since = 0.0  # when the oldest held ACK's burst ended (monotonic)
        self._hold_timer: asyncio.TimerHandle | None = None
        self._last_persist = float("-inf")
        # Durable ACKs waiting for a token, oldest first.
        self._outbox: deque[tuple[bytes, Destination]] = deque()
        self._bucket = TokenBucket(ACK_RATE, ACK_BURST)
        self._pacer: asyncio.TimerHandle | None = None
        # The socket adapter turns this off and calls flush() itself after each burst,
        # saving an event-loop iteration per wake-up.
        self.auto_flush = True
        self._logged = RateLimitedLog(log)
        # Label children cached: .labels() takes a lock and hashes on every call.
        self._counters: dict[tuple[str, str], Counter] = {}
        self._tally: dict[tuple[str, str], int] = {}

    def _count(self, mtype: str, result: str) -> None:
        # Tallied here and added to the counter once per burst, in flush(): an inc()
        # takes prometheus-client's lock (~1 us), a tally ~0.1.
        key = (mtype, result)
        self._tally[key] = self._tally.get(key, 0) + 1
        self._schedule_flush()

    def _counter(self, key: tuple[str, str]) -> Counter:
        c = self._counters.get(key)
        if c is None:
            # Keys are message-type and result names from fixed sets: bounded.
            c = self._counters[key] = self.ctx.metrics.dhcp_messages.labels(*key)
        return c

    def _count_tally(self) -> None:
        tally, self._tally = self._tally, {}
        for key, n in tally.items():
            self._counter(key).inc(n)

    def _malformed(self, reason: str) -> None:
        self.ctx.metrics.malformed.labels("dhcp", reason).inc()

    def _is_pxe_port(self, port: int) -> bool:
        d = self.ctx.config.dhcp
        return d.mode == "proxy" and port == d.proxy_port

    def malformed(self, reason: str, detail: str, source: tuple[str, int]) -> None:
        """Count and rate-limit-log input we cannot use."""
        self._malformed(reason)
        self._logged.warning(f"dhcp:{reason}", "dhcp: dropped input from %s: %s", source[0], detail)

    def handle(self, data: bytes, source: tuple[str, int], local_port: int) -> None:
        """One datagram; never raises for bad input."""
        try:
            req = decode(data)
        except DhcpDecodeError as exc:
            self.malformed(exc.reason, str(exc), source)
            return
        if req.hlen == 0 or req.htype != 1 or req.hlen != 6:
            self.malformed("bad-hlen", f"htype {req.htype} hlen {req.hlen} is not Ethernet", source)
            return
        now = self.ctx.clock()
        mac = req.mac
        offers = self.offers
        if offers is not None:
            offer = offers.take(mac)
            if offer is not None:
                fast = offers.ack(data, req, mac, offer, now, local_port)
                if fast is not None:
                    ex, wire = fast
                    dest = destination(req, offer.ip, False, source, False)
                    self._await_commit(ex, DHCPREQUEST, "request", wire, dest)
                    return
        ex = Exchange(req, now, mac, local_port)
        run_stages(self.stages, ex)
        mt = ex.mt
        mtype = _LABEL[mt] if mt is not None else "none"
        if ex.reply is None or ex.reply_type is None:
            done = mt in (DHCPDECLINE, DHCPRELEASE)
            result = ex.outcome or ("done" if done else "ignored")
            self._count(mtype, result)
            if ex.outcome in ("exhausted", "overload", "unknown-client"):
                self._logged.warning(
                    f"dhcp:{ex.outcome}",
                    "dhcp: no answer to %s: %s",
                    ex.mac,
                    ex.why[-1],
                    mac=ex.mac,
                )
            return
        wire = ex.reply.encode()
        dest = destination(
            req, ex.reply.yiaddr, ex.reply_type == DHCPNAK, source, self._is_pxe_port(local_port)
        )
        if offers is not None and ex.reply_type == DHCPOFFER:
            offers.remember(ex, wire)
        if ex.commit is None:
            self._count(mtype, _LABEL[ex.reply_type])
            self.send(wire, dest)
            if ex.reply_type == DHCPACK and mt == DHCPINFORM:
                self._event(ex.mac, ex.phase, "event", now, "inform")
            self._timeline_start(ex, mt)
            if self.ctx.config.dhcp.mode == "proxy":
                # The site's server leases the address; our part of the stage, the
                # boot information, is done once it is sent.
                self._event(ex.mac, ex.phase, "end", now, "proxy")
            return
        self._await_commit(ex, mt, mtype, wire, dest)

    def _await_commit(
        self, ex: Exchange, mt: MessageType | None, mtype: str, wire: bytes, dest: Destination
    ) -> None:
        """The reply waits for its lease's write (queued at the end of the burst)."""
        assert ex.commit is not None
        if self._in_flight >= MAX_PENDING_COMMITS:
            self._count(mtype, "overload")
            self._logged.warning("dhcp:commit-backlog", "dhcp: lease writes are behind; dropping")
            return
        self._timeline_start(ex, mt)
        self._in_flight += 1
        self._acks.append((ex, ex.commit, wire, dest))
        self._schedule_flush()

    def _event(self, mac: str, stage: str, event: str, now: float, detail: str = "") -> None:
        # Timeline rows are recorded after the burst's replies are out: off the reply path.
        self._events.append((mac, stage, event, now, detail))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self.auto_flush:
                asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """After a burst: one durable write for all its ACKs, then the timeline events."""
        if not self._flush_scheduled:
            return
        self._flush_scheduled = False
        if self._tally:
            self._count_tally()
        acks, self._acks = self._acks, []
        if acks:
            mono = time.monotonic()
            if not self._held:
                self._held_since = mono
            self._held += acks
            if self._hold_timer is None:
                if mono - self._last_persist < BUSY:
                    loop = asyncio.get_running_loop()
                    self._hold_timer = loop.call_later(HOLD, self._persist_held)
                else:
                    self._persist_held()
            elif len(self._held) >= HOLD_MAX_LEASES:
                self._persist_held()  # the timer is late: the loop is busy reading
        events, self._events = self._events, []
        record = self.ctx.timeline.record
        for mac, stage, event, now, detail in events:
            record(mac, stage, event, now, detail=detail)

    def _persist_held(self) -> None:
        # The write is queued right here, so the store starts on it while the loop
        # goes on reading; the task only waits for it and then sends the ACKs.
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        acks, self._held = self._held, []
        if not acks:
            return
        self._last_persist = time.monotonic()
        written = self.leases.persist([lease for _, lease, _, _ in acks])
        since = self._held_since
        task = asyncio.get_running_loop().create_task(self._send_when(written, acks, since))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _store_failed(self, acks: list[PendingAck], exc: Exception) -> None:
        self._in_flight -= len(acks)
        self._counter(("request", "store-error")).inc(len(acks))
        self._logged.warning("dhcp:store", "dhcp: lease write failed, no ACK: %s", exc)

    async def _send_when(
        self, written: Awaitable[object], acks: list[PendingAck], since: float
    ) -> None:
        """ACKs leave only once their leases are committed and fsynced (one batch, one fsync)."""
        try:
            await written
        except asyncio.CancelledError:  # shutdown past its grace: these ACKs never leave
            self._in_flight -= len(acks)
            raise
        except Exception as exc:  # a store failure must cost replies, not the service
            self._store_failed(acks, exc)
            return
        self._in_flight -= len(acks)
        self._outbox.extend((wire, dest) for _, _, wire, dest in acks)
        self.send_acks()
        # One observation per write: how long its oldest ACK waited for the disk.
        self.ctx.metrics.dhcp_ack_wait_seconds.observe(time.monotonic() - since)
        now = self.ctx.clock()
        self._counter(("request", "ack")).inc(len(acks))  # one inc() a write
        record = self.ctx.timeline.record
        for ex, lease, _, _ in acks:
            record(ex.mac, ex.phase, "end", now, detail=lease.ip)

    def send_acks(self) -> None:
        """Send the waiting ACKs the token bucket allows; come back for the rest. The socket
        adapter also calls this between bursts of requests, when timers may run late."""
        outbox = self._outbox
        if not outbox:
            return
        n = self._bucket.take(time.monotonic(), len(outbox))
        send = self.send
        for _ in range(n):
            send(*outbox.popleft())
        if outbox and self._pacer is None:
            wait = self._bucket.seconds_until(ACK_BURST / 2)
            self._pacer = asyncio.get_running_loop().call_later(wait, self._paced)

    def _paced(self) -> None:
        self._pacer = None
        self.send_acks()

    def _timeline_start(self, ex: Exchange, mt: MessageType | None) -> None:
        if mt == DHCPDISCOVER:
            self._event(ex.mac, ex.phase, "start", ex.now)
        elif mt == DHCPREQUEST and client_state(ex) == "INIT-REBOOT":
            tl = self.ctx.timeline.get(ex.mac)
            rec = tl.stages.get(ex.phase) if tl is not None else None
            if rec is None or rec.end is not None:
                self._event(ex.mac, ex.phase, "start", ex.now)

    async def drain(self, timeout: float) -> None:
        """Wait for ACKs still waiting on the disk."""
        self.flush()
        self._persist_held()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        if self._pacer is not None:  # shutting down: what is durable leaves now
            self._pacer.cancel()
            self._pacer = None
        while self._outbox:
            self.send(*self._outbox.popleft())
