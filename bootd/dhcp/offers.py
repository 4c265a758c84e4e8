"""Offers kept by MAC, so that the REQUEST taking one is ACKed without folding the stages again.

RFC 2131 §4.3.2: a REQUEST in SELECTING state accepts the OFFER of the server it
names, and the ACK carries the parameters of that offer. When the REQUEST asks in
the same terms as its DISCOVER (the same options apart from 50 and 54, the same
chaddr and relay, on the same port) and the config and the node's inventory entry
are still the objects the OFFER was built from, the stages would build the OFFER's
reply again, bar the message type: nothing in them reads options 50 and 54 except
the address stage, whose REQUEST checks are the ones `ack` repeats. So the OFFER's
bytes are kept, and the ACK is those bytes with the REQUEST's xid and flags and
message type 5. Anything that differs (another server chosen, another address, a
changed option, an offer gone or expired, a reload, an inventory change) takes the
stages' path, which NAKs or drops as it always does.

In a 640-client avalanche every REQUEST is of this kind. Measured with
`python -m bench.dhcp.opcount 640` (PXE-shaped clients): a REQUEST 2,673 -> 1,516
opcodes, a DISCOVER 2,636 -> 2,851 (keeping its offer); timed in that harness with
the daemon's GC settings, a REQUEST 65-67 -> 34-37 us, a DISCOVER 66-67 -> 73 us.
"""

from __future__ import annotations

from typing import NamedTuple

from bootd.boot.node import Node
from bootd.config import Config
from bootd.dhcp.address import AddressStage, Network, SubnetIndex
from bootd.dhcp.exchange import ZERO, Exchange
from bootd.dhcp.stages import ConfigSource
from bootd.proto.dhcp import BOOTREQUEST, DHCPACK, DHCPREQUEST, DhcpPacket, Opt
from bootd.proto.dhcp.options import client_hostname, ip_bytes
from bootd.store.leases import MAX_PENDING_OFFERS, LeaseTable
from bootd.store.nodes import NodeInventory

# An encoded reply starts its options with option 53 (the skeleton puts it first):
# magic cookie at 236, then code 53, length 1, the type.
_TYPE_AT = 242
_OFFER_TYPE = b"\x35\x01\x02"
_REQUEST = b"\x03"
_ACK = 5
# Option codes as plain ints: an IntEnum member costs a descriptor call per read.
_MESSAGE_TYPE, _REQUESTED_IP, _SERVER_ID = (
    int(Opt.MESSAGE_TYPE),
    int(Opt.REQUESTED_IP),
    int(Opt.SERVER_ID),
)


class Offer(NamedTuple):
    """One OFFER as sent, and what it was built from (a NamedTuple: one is made per
    DISCOVER, and a slots dataclass's __init__ costs twice as much)."""

    config: Config
    node: Node | None
    port: int
    chaddr: bytes
    giaddr: str
    # The DISCOVER's options without 53, 50 and 54.
    options: dict[int, bytes]
    net: Network
    ip: str
    ip_raw: bytes
    server_id: bytes
    phase: str
    wire: bytes


def _asked(options: dict[int, bytes]) -> dict[int, bytes]:
    """The options but those a SELECTING REQUEST adds to its DISCOVER's, or changes."""
    rest = dict(options)
    pop = rest.pop
    pop(_MESSAGE_TYPE, None)
    pop(_REQUESTED_IP, None)
    pop(_SERVER_ID, None)
    return rest


class OfferMemo:
    """remember() each OFFER made by the stages; ack() a REQUEST that takes one as made."""

    def __init__(
        self,
        config: ConfigSource,
        nodes: NodeInventory,
        leases: LeaseTable,
        subnets: SubnetIndex | None = None,
    ) -> None:
        self._config = config
        self._nodes = nodes
        self._leases = leases
        self._address = AddressStage(config, leases, subnets)
        self._offers: dict[str, Offer] = {}
        # REQUESTs answered from a kept offer (the tests read it).
        self.hits = 0

    def remember(self, ex: Exchange, wire: bytes) -> None:
        """Keep an OFFER the stages just built (server mode; not for explain)."""
        reply = ex.reply
        if reply is None or ex.dry_run or wire[_TYPE_AT - 2 : _TYPE_AT + 1] != _OFFER_TYPE:
            return
        net = ex.network  # as the address stage found it for this OFFER
        if net is None:
            return
        cfg = self._config()
        req = ex.request
        offers = self._offers
        if len(offers) >= MAX_PENDING_OFFERS:
            offers.clear()  # a DISCOVER flood that never REQUESTs: kept offers are a cache
        offers[ex.mac] = Offer(
            cfg, ex.node, ex.local_port, req.chaddr, req.giaddr, _asked(req.options), net,
            reply.yiaddr, ip_bytes(reply.yiaddr), ip_bytes(cfg.address), ex.phase, wire,
        )  # fmt: skip

    def take(self, mac: str) -> Offer | None:
        """Take this MAC's kept offer out: whatever the MAC sends next uses it up."""
        return self._offers.pop(mac, None)

    def ack(
        self, data: bytes, req: DhcpPacket, mac: str, offer: Offer, now: float, local_port: int
    ) -> tuple[Exchange, bytes] | None:
        """The Exchange (lease bound, to commit) and ACK bytes for a REQUEST taking
        `offer` as made; None when the stages must decide."""
        opts = req.options
        if (
            opts.get(_MESSAGE_TYPE) != _REQUEST
            or offer.config is not self._config()
            or local_port != offer.port
            or req.op != BOOTREQUEST
            or req.ciaddr != ZERO
            or req.giaddr != offer.giaddr
            or req.chaddr != offer.chaddr
            or opts.get(_SERVER_ID) != offer.server_id
            or opts.get(_REQUESTED_IP) != offer.ip_raw
            or self._leases.offered(mac, now) != offer.ip
            or _asked(opts) != offer.options
        ):
            return None
        node = self._nodes.by_mac(mac)
        if node is not offer.node:
            return None
        ex = Exchange(req, now, mac, local_port, DHCPREQUEST, node)
        ex.phase = offer.phase
        ip = offer.ip
        net = offer.net
        if not self._address.acceptable(ex, net, ip):
            return None
        hostname = node.hostname if node is not None else None
        if hostname is None:
            hostname = client_hostname(opts)
        ex.commit = self._leases.bind(mac, ip, now + net.cfg.lease_time, hostname)
        ex.reply_type = DHCPACK
        ex.note(f"REQUEST in state SELECTING for the offer of {ip}: ACK with the OFFER's reply")
        self.hits += 1
        wire = bytearray(offer.wire)
        wire[4:8] = data[4:8]  # xid
        wire[10:12] = data[10:12]  # flags
        wire[_TYPE_AT] = _ACK
        return ex, bytes(wire)
