"""DHCP leases: an in-memory table for the hot path, written through to SQLite in batches."""

from __future__ import annotations

import logging
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from socket import inet_aton, inet_ntoa

from bootd.proto.dhcp.options import ADDRESS_MEMO
from bootd.store.db import Database, Migration
from bootd.store.jobs import many, statements

log = logging.getLogger("bootd.dhcp")

SCHEMA = (
    Migration(
        "leases",
        1,
        """CREATE TABLE dhcp_leases (
            mac TEXT PRIMARY KEY,
            ip TEXT NOT NULL UNIQUE,
            expires REAL NOT NULL,
            hostname TEXT,
            updated REAL NOT NULL
        );
        CREATE TABLE dhcp_declined (ip TEXT PRIMARY KEY, until REAL NOT NULL)""",
    ),
)

# An address moving from an expired lease to a new MAC: drop the old row first.
_DROP_MOVED = "DELETE FROM dhcp_leases WHERE ip = ? AND mac != ?"
_UPSERT = (
    "INSERT INTO dhcp_leases(mac, ip, expires, hostname, updated) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(mac) DO UPDATE SET ip=excluded.ip, expires=excluded.expires, "
    "hostname=excluded.hostname, updated=excluded.updated"
)

# array's typecode for a 32-bit unsigned integer ("I" is 4 bytes on every Linux ABI).
_U32 = next(code for code in "IL" if array(code).itemsize == 4)

# Offers waiting for their REQUEST. One per client MAC; a flood of DISCOVERs with
# random MACs must not grow memory or drain the pool for long, so the table is
# bounded and offers expire after dhcp.offer_timeout.
MAX_PENDING_OFFERS = 65536


# Pure, and asked about the same addresses several times a packet (subnet, pool,
# reservation checks): bounded as the codec's address conversions are.
@lru_cache(maxsize=ADDRESS_MEMO)
def ip_to_int(ip: str) -> int:
    """Dotted quad → integer."""
    return int.from_bytes(inet_aton(ip), "big")


def int_to_ip(n: int) -> str:
    """Integer → dotted quad."""
    # No memo: its one caller, the pool scan, asks about a new address each time.
    return inet_ntoa(n.to_bytes(4, "big"))


@dataclass(slots=True)
class Lease:
    """An address bound to a MAC until `expires` (epoch seconds)."""

    mac: str
    ip: str
    expires: float
    hostname: str | None = None

    def active(self, now: float) -> bool:
        """Not yet expired."""
        return self.expires > now

    def to_dict(self, now: float) -> dict[str, object]:
        """JSON form for /api/v1/leases."""
        return {
            "mac": self.mac,
            "ip": self.ip,
            "expires": round(self.expires, 3),
            "remaining": max(0, round(self.expires - now)),
            "hostname": self.hostname,
            "active": self.active(now),
        }


ReservedMac = Callable[[str], str | None]


class LeaseTable:
    """Leases keyed on chaddr; pending offers; DECLINEd addresses in quarantine.

    Implements bootd.boot.identity.LeaseView. Nothing here awaits: the caller
    awaits `persist()` before it sends the ACK, so many ACKs share one commit.
    """

    def __init__(self, db: Database, clock: Callable[[], float], reserved_mac: ReservedMac) -> None:
        self._db = db
        self._clock = clock
        self._reserved_mac = reserved_mac
        self._leases: dict[str, Lease] = {}
        self._owner: dict[str, str] = {}  # ip → mac, expired leases included (affinity)
        self._offers: dict[str, tuple[str, float]] = {}  # mac → (ip, expires)
        self._offered: dict[str, str] = {}  # ip → mac
        self._quarantine: dict[str, float] = {}  # ip → until
        self._cursor: dict[tuple[int, int], int] = {}
        self._full_until: dict[tuple[int, int], float] = {}  # one entry per configured pool
        self.offers_refused = 0
        # MAC → address it took over from another MAC's expired lease, until persisted.
        self._moved: dict[str, str] = {}

    def load(self) -> None:
        """Fill memory from SQLite (after a restart every committed lease is back)."""
        for r in self._db.read("SELECT mac, ip, expires, hostname FROM dhcp_leases"):
            lease = Lease(r["mac"], r["ip"], r["expires"], r["hostname"])
            self._leases[lease.mac] = lease
            self._owner[lease.ip] = lease.mac
        for r in self._db.read("SELECT ip, until FROM dhcp_declined"):
            self._quarantine[r["ip"]] = r["until"]

    # LeaseView
    def mac_for_ip(self, ip: str) -> str | None:
        """MAC holding an active lease on this IP."""
        mac = self._owner.get(ip)
        if mac is None or not self._leases[mac].active(self._clock()):
            return None
        return mac

    def ip_for_mac(self, mac: str) -> str | None:
        """IP actively leased to this MAC."""
        lease = self._leases.get(mac)
        return lease.ip if lease is not None and lease.active(self._clock()) else None

    def lease(self, mac: str) -> Lease | None:
        """The lease record of this MAC, expired or not."""
        return self._leases.get(mac)

    def offered(self, mac: str, now: float) -> str | None:
        """The address held for this MAC by an unexpired offer."""
        o = self._offers.get(mac)
        return o[0] if o is not None and o[1] > now else None

    def all(self) -> list[Lease]:
        """Every lease record, sorted by address."""
        # inet_aton's 4 bytes are in network order, so they sort as the numbers do;
        # no trip through ip_to_int's memo, which a big table would only churn.
        return sorted(self._leases.values(), key=lambda x: inet_aton(x.ip))

    def active_count(self) -> int:
        """Leases not expired (for the gauge)."""
        now = self._clock()
        return sum(1 for x in self._leases.values() if x.expires > now)

    def free_count(self, pools: Iterable[tuple[int, int]]) -> int:
        """Addresses of these pools (first, last) that could be offered right now (the gauge)."""
        now = self._clock()
        busy = {ip for ip, mac in self._owner.items() if self._leases[mac].expires > now}
        busy.update(ip for ip, mac in self._offered.items() if self._offers[mac][1] > now)
        busy.update(ip for ip, until in self._quarantine.items() if until > now)
        # One pass in C turns every busy address into an integer: the per-address memo
        # serves the per-packet path, and 20,000 addresses at once would only churn it.
        # Built once and sorted, it answers each pool with two bisections.
        numbers = array(_U32, b"".join(map(inet_aton, busy)))
        if sys.byteorder == "little":
            numbers.byteswap()  # inet_aton gives network (big-endian) order
        ordered = sorted(numbers)
        free = 0
        for first, last in pools:
            inside = bisect_right(ordered, last) - bisect_left(ordered, first)
            free += last - first + 1 - inside
        return free

    def is_free(self, ip: str, mac: str, now: float) -> bool:
        """Whether `ip` may go to `mac`: no other active lease, offer, reservation or quarantine."""
        q = self._quarantine.get(ip)
        if q is not None and q > now:
            return False
        owner = self._owner.get(ip)
        if owner is not None and owner != mac and self._leases[owner].expires > now:
            return False
        o = self._offered.get(ip)
        if o is not None and o != mac and self._offers[o][1] > now:
            return False
        r = self._reserved_mac(ip)
        return r is None or r == mac

    def allocate(self, mac: str, first: int, last: int, now: float) -> str | None:
        """A free address of the pool first..last, scanning from where the last scan ended."""
        key = (first, last)
        if self._full_until.get(key, 0.0) > now:
            return None
        size = last - first + 1
        start = self._cursor.get(key, first)
        for i in range(size):
            n = first + (start - first + i) % size
            ip = int_to_ip(n)
            if self.is_free(ip, mac, now):
                self._cursor[key] = n + 1 if n < last else first
                return ip
        # A full pool is scanned at most once a second: a DISCOVER flood must not
        # turn every packet into a walk over the whole range.
        self._full_until[key] = now + 1.0
        return None

    def hold_offer(self, mac: str, ip: str, now: float, timeout: float) -> bool:
        """Reserve `ip` for `mac` until the offer times out; False if the offer table is full."""
        self.drop_offer(mac)
        # Offers share one timeout, so the oldest (first inserted) expire first.
        while self._offers:
            oldest = next(iter(self._offers))
            oip, until = self._offers[oldest]
            if until > now:
                break
            del self._offers[oldest]
            if self._offered.get(oip) == oldest:
                del self._offered[oip]
        if len(self._offers) >= MAX_PENDING_OFFERS:
            self.offers_refused += 1
            return False
        self._offers[mac] = (ip, now + timeout)
        self._offered[ip] = mac
        return True

    def drop_offer(self, mac: str) -> None:
        """Forget this MAC's pending offer (it chose another server, or it was ACKed)."""
        o = self._offers.pop(mac, None)
        if o is not None and self._offered.get(o[0]) == mac:
            del self._offered[o[0]]

    def bind(self, mac: str, ip: str, expires: float, hostname: str | None) -> Lease:
        """Make `ip` this MAC's lease in memory; the caller then awaits persist()."""
        self.drop_offer(mac)
        old = self._leases.get(mac)
        if old is not None and old.ip != ip and self._owner.get(old.ip) == mac:
            del self._owner[old.ip]
        prev = self._owner.get(ip)
        if prev is not None and prev != mac:
            # Only an expired lease can be here (is_free checked); its address moves on.
            del self._leases[prev]
            self._moved[mac] = ip  # persist() drops prev's row before writing this one
        lease = Lease(mac, ip, expires, hostname)
        self._leases[mac] = lease
        self._owner[ip] = mac
        return lease

    def persist(self, leases: list[Lease]) -> Awaitable[int]:
        """Queue the leases' write now, as one job; resolves once its batch is committed and fsynced."""
        now = self._clock()
        # The old row of a moved address goes first (the ip column is UNIQUE). Memory
        # mirrors the table, so only binds that displaced a MAC need the DELETE: in a
        # storm of new nodes none do, and the writer saves ~3 us a lease.
        moved = self._moved
        drop = (
            [(x.ip, x.mac) for x in leases if moved.pop(x.mac, None) is not None] if moved else []
        )
        # executemany in the writer process: 11-14 us a lease there, where one JSON
        # parameter through json_each took 18-21 (and json.dumps in the loop besides).
        return self._db.submit(
            many,
            (_DROP_MOVED, drop),
            (_UPSERT, [(x.mac, x.ip, x.expires, x.hostname, now) for x in leases]),
        )

    def import_leases(
        self, leases: list[Lease], now: float
    ) -> tuple[list[str], Awaitable[int] | None]:
        """Take leases from another server's file, all or none: ([], the write) when every
        one fits, else (one line per conflict, None: nothing changed). A lease conflicts when
        its MAC or address comes twice, or when the address is another MAC's (a lease
        or offer still running, a reservation, a DECLINE's quarantine)."""
        errors: list[str] = []
        macs: set[str] = set()
        ips: set[str] = set()
        for i, x in enumerate(leases):
            if x.mac in macs or x.ip in ips:
                errors.append(f"[{i}]: {x.mac} or {x.ip} comes twice in the import")
            elif not self.is_free(x.ip, x.mac, now):
                errors.append(f"[{i}]: {x.ip} is another client's here (lease, offer, "
                              "reservation or quarantine)")  # fmt: skip
            macs.add(x.mac)
            ips.add(x.ip)
        if errors:
            return errors, None
        bound = [self.bind(x.mac, x.ip, x.expires, x.hostname) for x in leases]
        self._full_until.clear()
        return [], self.persist(bound)

    def delete(self, mac: str) -> tuple[Lease | None, Awaitable[int]]:
        """Forget this MAC's lease and offer (an operator's call: a swapped NIC, a retired
        node); the write resolves once the row is gone from SQLite."""
        self.drop_offer(mac)
        lease = self._leases.pop(mac, None)
        if lease is not None and self._owner.get(lease.ip) == mac:
            del self._owner[lease.ip]
        self._full_until.clear()
        written = self._db.submit(statements, ("DELETE FROM dhcp_leases WHERE mac = ?", (mac,)))
        return lease, written

    def release(self, mac: str, ip: str, now: float) -> bool:
        """RELEASE: end the lease now but keep the record, so the MAC gets the same IP back."""
        lease = self._leases.get(mac)
        if lease is None or lease.ip != ip:
            return False
        lease.expires = now
        self._full_until.clear()
        self._db.write_nowait(
            statements,
            ("UPDATE dhcp_leases SET expires = ?, updated = ? WHERE mac = ?", (now, now, mac)),
        )
        return True

    def decline(self, mac: str, ip: str, now: float, quarantine: float) -> None:
        """DECLINE: the address is in use by someone else; keep it out of the pool a while."""
        self.drop_offer(mac)
        lease = self._leases.get(mac)
        if lease is not None and lease.ip == ip:
            del self._leases[mac]
            self._owner.pop(ip, None)
        until = now + quarantine
        self._quarantine[ip] = until
        self._db.write_nowait(
            statements,
            ("DELETE FROM dhcp_leases WHERE mac = ? AND ip = ?", (mac, ip)),
            (
                "INSERT INTO dhcp_declined(ip, until) VALUES (?, ?) "
                "ON CONFLICT(ip) DO UPDATE SET until=excluded.until",
                (ip, until),
            ),
        )

    def quarantined(self, ip: str, now: float) -> bool:
        """DECLINEd and still in quarantine."""
        q = self._quarantine.get(ip)
        return q is not None and q > now
