"""The address stage: which IP a client gets, in every client state of RFC 2131 §4.3."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bootd.config import Config
from bootd.config.dhcp import SubnetConfig, parse_range
from bootd.dhcp.exchange import ZERO, Exchange
from bootd.dhcp.stages import ConfigSource, subnet_options
from bootd.proto.dhcp import (
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPRELEASE,
    DHCPREQUEST,
    Opt,
)
from bootd.proto.dhcp.options import client_hostname
from bootd.proto.dhcp.optvalues import encode_options_config
from bootd.store.leases import LeaseTable, ip_to_int


@dataclass(frozen=True)
class Network:
    """A subnet with its pool as integers, for fast membership tests."""

    cfg: SubnetConfig
    lo: int
    hi: int
    pool: tuple[int, int] | None
    # Mask, router, DNS, domain, broadcast: encoded once per config, not per packet.
    options: dict[int, bytes]
    # dhcp.options (the top level's, then the subnet's own): sent when requested.
    extra: dict[int, bytes]
    # Options 51, 58, 59: the lease time and RFC 2131 §4.4.5's T1 (0.5) and T2 (0.875).
    lease_times: tuple[bytes, bytes, bytes]

    def contains(self, ip: str) -> bool:
        """ip is inside the subnet."""
        return self.lo <= ip_to_int(ip) <= self.hi

    def in_pool(self, ip: str) -> bool:
        """ip is inside the dynamic pool."""
        return self.pool is not None and self.pool[0] <= ip_to_int(ip) <= self.pool[1]


def lease_times(seconds: int) -> tuple[bytes, bytes, bytes]:
    """Options 51, 58 and 59 for a lease time: T1 = 0.5 and T2 = 0.875 of it."""
    return (
        seconds.to_bytes(4, "big"),
        (seconds // 2).to_bytes(4, "big"),
        (seconds * 7 // 8).to_bytes(4, "big"),
    )


# Relay addresses remembered per config: every request through a relay names it.
RELAYS_REMEMBERED = 4096


class SubnetIndex:
    """The config's networks, parsed and encoded once per config, and which of them each
    relay address seen so far is in: the address stage asks on every packet, the
    free-address gauge on every scrape. A config is not changed once parsed (a reload
    makes a new one), so the index follows the config source by identity."""

    def __init__(self, config: ConfigSource) -> None:
        self._config = config
        self._for: Config | None = None
        self._nets: list[Network] = []
        self._relays: dict[str, Network | None] = {}

    def all(self) -> list[Network]:
        """The local subnet first, then the relayed ones."""
        cfg = self._config()
        if cfg is not self._for:
            self._for, self._nets, self._relays = cfg, networks(cfg), {}
        return self._nets

    def local(self) -> Network:
        """The subnet of the server's own interface."""
        return self.all()[0]

    def for_relay(self, giaddr: str) -> Network | None:
        """RFC 2131 §4.3.1: the subnet holding a relay's giaddr (a relayed one first, then
        the local one); one scan per relay address and config."""
        nets = self.all()
        relays = self._relays
        try:
            return relays[giaddr]
        except KeyError:
            pass
        found = next((net for net in (*nets[1:], nets[0]) if net.contains(giaddr)), None)
        if len(relays) >= RELAYS_REMEMBERED:
            relays.clear()
        relays[giaddr] = found
        return found


def networks(config: Config) -> list[Network]:
    """The local subnet first, then the relayed ones, parsed and encoded (SubnetIndex
    keeps them per config)."""
    out = []
    common = encode_options_config(config.dhcp.options)
    for sub in [config.dhcp, *config.dhcp.relay_subnets]:
        net = ipaddress.IPv4Network(sub.subnet)
        pool = None
        if sub.pool:
            a, b = parse_range(sub.pool)
            pool = (int(a), int(b))
        extra = common if sub is config.dhcp else {**common, **encode_options_config(sub.options)}
        out.append(
            Network(
                sub,
                int(net.network_address),
                int(net.broadcast_address),
                pool,
                subnet_options(sub),
                extra,
                lease_times(sub.lease_time),
            )
        )
    return out


def client_state(ex: Exchange) -> str:
    """RFC 2131 §4.3.2: which state a DHCPREQUEST comes from."""
    req = ex.request
    if Opt.SERVER_ID in req.options:
        return "SELECTING"
    if req.ciaddr == ZERO:
        return "INIT-REBOOT"
    # RENEWING is unicast, REBINDING broadcast; both are answered alike (to ciaddr).
    return "RENEWING/REBINDING"


class AddressStage:
    """Reservations from the inventory, leases and offers from the table, pool addresses."""

    def __init__(
        self, config: ConfigSource, leases: LeaseTable, subnets: SubnetIndex | None = None
    ) -> None:
        self._config = config
        self._leases = leases
        self._subnets = subnets if subnets is not None else SubnetIndex(config)

    def network_for(self, ex: Exchange) -> Network | None:
        """RFC 2131 §4.3.1: the relay's subnet when giaddr is set, else the local one."""
        gi = ex.request.giaddr
        return self._subnets.local() if gi == ZERO else self._subnets.for_relay(gi)

    def acceptable(self, ex: Exchange, net: Network, ip: str) -> bool:
        """Whether `ip` may be bound to this client now."""
        if not net.contains(ip):
            return False
        node = ex.node
        if node is not None and node.ip is not None and net.contains(node.ip):
            if ip == node.ip:
                return self._leases.is_free(ip, ex.mac, ex.now)
            if self._leases.is_free(node.ip, ex.mac, ex.now):
                return False  # the reservation is free: it is this client's address
            # The reservation is held by another client, so choose() offered from the
            # pool: that address is good too (else OFFER then NAK, round and round).
        lease = self._leases.lease(ex.mac)
        mine = lease is not None and lease.ip == ip
        if not (mine or net.in_pool(ip)):
            return False
        return self._leases.is_free(ip, ex.mac, ex.now)

    def choose(self, ex: Exchange, net: Network) -> str | None:
        """Reservation, else this MAC's previous address or offer, else requested, else the pool."""
        mac, now = ex.mac, ex.now
        node = ex.node
        if node is not None and node.ip is not None:
            if not net.contains(node.ip):
                ex.note(f"reservation {node.ip} is outside {net.cfg.subnet}: using the pool")
            elif self._leases.is_free(node.ip, mac, now):
                ex.note(f"{node.ip} is reserved for this MAC in the node inventory")
                return node.ip
            else:
                ex.note(f"reservation {node.ip} is held by another client: using the pool")
        lease = self._leases.lease(mac)
        if lease is not None and net.in_pool(lease.ip) and self._leases.is_free(lease.ip, mac, now):
            ex.note(f"{lease.ip} is this MAC's lease (keyed on chaddr)")
            return lease.ip
        offered = self._leases.offered(mac, now)
        if offered is not None and net.contains(offered):
            ex.note(f"{offered} was already offered to this MAC")
            return offered
        want = ex.request.ip_option(Opt.REQUESTED_IP)
        if want is not None and net.in_pool(want) and self._leases.is_free(want, mac, now):
            ex.note(f"{want} requested by the client (option 50) and free")
            return want
        if net.pool is None:
            ex.note(f"{net.cfg.subnet} has no dynamic pool")
            return None
        ip = self._leases.allocate(mac, net.pool[0], net.pool[1], now)
        if ip is not None:
            ex.note(f"{ip} from the dynamic pool {net.cfg.pool}")
        return ip

    def _grant(self, ex: Exchange, net: Network, ip: str) -> None:
        assert ex.reply is not None
        ex.reply.yiaddr = ip
        opts = ex.reply.options
        opts[Opt.LEASE_TIME], opts[Opt.RENEWAL_TIME], opts[Opt.REBINDING_TIME] = net.lease_times

    def __call__(self, ex: Exchange) -> None:
        """Fill yiaddr and lease times, or NAK, or act on DECLINE/RELEASE."""
        req = ex.request
        mt = ex.mt  # read by the skeleton stage, which runs first
        net = self.network_for(ex)
        if net is None:
            ex.drop(f"no subnet configured for relay {req.giaddr} (dhcp.relay_subnets)")
            return
        ex.network = net
        ex.subnet = net.cfg
        ex.subnet_options = net.options
        ex.extra_options = net.extra
        if mt == DHCPDISCOVER:
            ip = self.choose(ex, net)
            if ip is None:
                ex.drop(f"pool exhausted in {net.cfg.subnet}", "exhausted")
                return
            if not ex.dry_run and not self._leases.hold_offer(
                ex.mac, ip, ex.now, self._config().dhcp.offer_timeout
            ):
                ex.drop("too many pending offers", "overload")
                return
            self._grant(ex, net, ip)
        elif mt == DHCPREQUEST:
            self._request(ex, net)
        elif mt == DHCPDECLINE:
            ip = req.ip_option(Opt.REQUESTED_IP)
            lease = self._leases.lease(ex.mac)
            ours = ip is not None and (
                self._leases.offered(ex.mac, ex.now) == ip or (lease is not None and lease.ip == ip)
            )
            if ip is not None and ours and not ex.dry_run:
                self._leases.decline(ex.mac, ip, ex.now, self._config().dhcp.decline_quarantine)
            ex.done = True
            ex.note(f"DECLINE of {ip}: {'quarantined' if ours else 'not this client address'}")
        elif mt == DHCPRELEASE:
            released = not ex.dry_run and self._leases.release(ex.mac, req.ciaddr, ex.now)
            ex.done = True
            ex.note(f"RELEASE of {req.ciaddr}: {'freed' if released else 'no such lease'}")
        elif mt == DHCPINFORM:
            ex.note("INFORM: options only, no lease (RFC 2131 §4.3.5)")

    def _request(self, ex: Exchange, net: Network) -> None:
        req = ex.request
        state = client_state(ex)
        ex.note(f"REQUEST in state {state}")
        if state == "SELECTING":
            sid = req.ip_option(Opt.SERVER_ID)
            if sid != self._config().address:
                if not ex.dry_run:
                    self._leases.drop_offer(ex.mac)
                ex.drop(f"client selected server {sid}")
                return
        want = req.ciaddr if state == "RENEWING/REBINDING" else req.ip_option(Opt.REQUESTED_IP)
        if want is None:
            ex.nak("no requested address (option 50)")
            return
        if not net.contains(want):
            ex.nak(f"{want} is not on network {net.cfg.subnet}")
            return
        lease = self._leases.lease(ex.mac)
        if state != "SELECTING" and lease is not None and lease.ip != want:
            ex.nak(f"{want} is not this client's address (its lease is {lease.ip})")
            return
        if not self.acceptable(ex, net, want):
            if state != "SELECTING" and lease is None and not self._config().dhcp.authoritative:
                ex.drop(f"no record of this client and {want} is not ours to give")
                return
            ex.nak(f"{want} is not available to this client")
            return
        node = ex.node
        expires = ex.now + net.cfg.lease_time
        # The inventory's name, else the one the client sent (option 81 or 12), as
        # dnsmasq and Kea record it: `bootd leases` then names dynamic clients too.
        hostname = node.hostname if node is not None else None
        if hostname is None:
            hostname = client_hostname(req.options)
        if not ex.dry_run:
            ex.commit = self._leases.bind(ex.mac, want, expires, hostname)
        self._grant(ex, net, want)
