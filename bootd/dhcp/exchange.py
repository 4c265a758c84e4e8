"""One request on its way to a reply, as the stages see it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bootd.boot.node import Node
from bootd.config.dhcp import SubnetConfig
from bootd.proto.dhcp import BOOTREPLY, DHCPNAK, DhcpPacket, MessageType, Opt
from bootd.store.leases import Lease

if TYPE_CHECKING:  # address.py builds on this module
    from bootd.dhcp.address import Network

ZERO = "0.0.0.0"


# Option 53 of each reply type, encoded once.
_MESSAGE_TYPE = {m: bytes((m,)) for m in MessageType}


def base_reply(req: DhcpPacket, msg: MessageType) -> DhcpPacket:
    """A BOOTREPLY echoing what RFC 2131 Table 3 says to echo."""
    # Positional, in field order (op htype hlen hops xid secs flags ciaddr yiaddr siaddr
    # giaddr chaddr sname file options): one per reply, and keywords cost ~1.5 us more.
    return DhcpPacket(
        BOOTREPLY, req.htype, req.hlen, 0, req.xid, 0, req.flags, ZERO, ZERO, ZERO,
        req.giaddr, req.chaddr, b"", b"", {Opt.MESSAGE_TYPE: _MESSAGE_TYPE[msg]},
    )  # fmt: skip


@dataclass(slots=True)
class Exchange:
    """Request, the reply being built, and what the stages decided (and why)."""

    request: DhcpPacket
    now: float
    mac: str
    # The port the request arrived on (proxy mode answers DISCOVER on 67, REQUEST on 4011).
    local_port: int = 67
    # The request's option 53, read once by the skeleton stage for every later one.
    mt: MessageType | None = None
    # The node inventory's entry for this MAC, looked up once by the inventory stage.
    node: Node | None = None
    reply: DhcpPacket | None = None
    reply_type: MessageType | None = None
    subnet: SubnetConfig | None = None
    # The subnet's parsed network, as the address stage found it (the kept offers use it).
    network: Network | None = None
    subnet_options: dict[int, bytes] | None = None
    # The subnet's dhcp.options, sent only when the client asks for them (option 55).
    extra_options: dict[int, bytes] | None = None
    # A lease to make durable before the reply leaves (ACKs only).
    commit: Lease | None = None
    # Stop folding: the reply is final (NAK) or there is none.
    done: bool = False
    # Explain mode: decide, but change no table.
    dry_run: bool = False
    why: list[str] = field(default_factory=list)
    # Timeline stage and event this exchange implies ('dhcp', 'start') etc.
    phase: str = "dhcp-linux"
    # Metric result label when there is no reply: ignored, exhausted, overload.
    outcome: str = ""

    def note(self, text: str) -> None:
        """Record a reason; explain shows these."""
        self.why.append(text)

    def drop(self, reason: str, outcome: str = "ignored") -> None:
        """No reply at all; `outcome` is the metric's result label."""
        self.outcome = outcome
        self.reply = None
        self.reply_type = None
        self.done = True
        self.note(reason)

    def nak(self, reason: str) -> None:
        """Replace the reply with a DHCPNAK (RFC 2131 §4.3.2); nothing else is added."""
        req = self.request
        sid = self.reply.options.get(Opt.SERVER_ID) if self.reply is not None else None
        self.reply = base_reply(req, DHCPNAK)
        if sid is not None:
            self.reply.options[Opt.SERVER_ID] = sid
        self.reply_type = DHCPNAK
        self.commit = None
        self.done = True
        self.note(f"NAK: {reason}")


Stage = Callable[[Exchange], None]


def run_stages(stages: list[Stage], ex: Exchange) -> Exchange:
    """Fold the exchange through the stages until one marks it done."""
    for stage in stages:
        stage(ex)
        if ex.done:
            break
    return ex
