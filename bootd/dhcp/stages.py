"""Reply stages other than address and netboot: skeleton, identity, network options, hostname."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from bootd.config import Config
from bootd.config.dhcp import SubnetConfig
from bootd.dhcp.exchange import ZERO, Exchange, base_reply
from bootd.proto.dhcp import (
    BOOTREQUEST,
    DHCPACK,
    DHCPDECLINE,
    DHCPDISCOVER,
    DHCPINFORM,
    DHCPOFFER,
    DHCPRELEASE,
    DHCPREQUEST,
    Opt,
)
from bootd.proto.dhcp.options import ip_bytes
from bootd.proto.dhcp.optvalues import encode_options_config
from bootd.store.nodes import NodeInventory

ConfigSource = Callable[[], Config]

# What the server answers to each client message type (RFC 2131 §3.1, §3.4, §4.3).
_ANSWER = {
    DHCPDISCOVER: DHCPOFFER,
    DHCPREQUEST: DHCPACK,
    DHCPINFORM: DHCPACK,
}


# Option 60 prefixes of firmware boot clients (PXE 2.1, UEFI HTTP boot).
_BOOT_CLIENTS = (b"PXEClient", b"HTTPClient")


def is_ipxe(ex: Exchange) -> bool:
    """iPXE identifies itself by user-class 'iPXE' (77) or its encapsulated option 175."""
    req = ex.request
    return Opt.IPXE_ENCAP in req.options or b"iPXE" in req.user_classes


def client_phase(ex: Exchange) -> str:
    """Timeline stage: firmware PXE → dhcp, iPXE → dhcp-ipxe, anything else → dhcp-linux."""
    if is_ipxe(ex):
        return "dhcp-ipxe"
    if ex.request.vendor_class_id.startswith(_BOOT_CLIENTS):
        return "dhcp"
    return "dhcp-linux"


def skeleton(ex: Exchange) -> None:
    """Server mode: pick the reply type from the request type; DECLINE/RELEASE get none."""
    req = ex.request
    ex.phase = client_phase(ex)
    mt = ex.mt = req.message_type
    if req.op != BOOTREQUEST:
        ex.drop("not a BOOTREQUEST")
        return
    if mt is None:
        ex.drop("no DHCP message type (plain BOOTP is not served)")
        return
    if mt in (DHCPDECLINE, DHCPRELEASE):
        ex.note(f"{mt.name}: no reply")
        return
    answer = _ANSWER.get(mt)
    if answer is None:
        ex.drop(f"{mt.name} is not a client message")
        return
    ex.reply = base_reply(req, answer)
    ex.reply_type = answer
    if mt == DHCPINFORM or (mt == DHCPREQUEST and req.ciaddr != ZERO):
        ex.reply.ciaddr = req.ciaddr


def proxy_skeleton(config: ConfigSource) -> Callable[[Exchange], None]:
    """Proxy mode: only PXE/HTTP clients; OFFER on port 67, ACK to REQUESTs on 4011 (PXE spec §2.2)."""

    def stage(ex: Exchange) -> None:
        _proxy(ex, config().dhcp.proxy_port)

    return stage


def _proxy(ex: Exchange, pxe_port: int) -> None:
    req = ex.request
    ex.phase = client_phase(ex)
    mt = ex.mt = req.message_type
    if req.op != BOOTREQUEST or mt is None:
        ex.drop("not a DHCP request")
        return
    if not req.vendor_class_id.startswith(_BOOT_CLIENTS):
        ex.drop("proxy mode answers only PXEClient/HTTPClient (option 60)")
        return
    if mt == DHCPDISCOVER and ex.local_port != pxe_port:
        answer = DHCPOFFER
    elif mt in (DHCPREQUEST, DHCPINFORM) and ex.local_port == pxe_port:
        answer = DHCPACK
    else:
        ex.drop(f"proxy mode does not answer {mt.name} on port {ex.local_port}")
        return
    ex.reply = base_reply(req, answer)
    ex.reply_type = answer
    ex.reply.ciaddr = req.ciaddr
    ex.note("proxy mode: boot information only, no address")


def server_identity(config: ConfigSource) -> Callable[[Exchange], None]:
    """Option 54 = this server's address (RFC 2132 §9.7)."""

    def stage(ex: Exchange) -> None:
        if ex.reply is not None:
            ex.reply.options[Opt.SERVER_ID] = ip_bytes(config().address)

    return stage


def subnet_options(sub: SubnetConfig) -> dict[int, bytes]:
    """Mask, router, DNS, domain, broadcast for one subnet."""
    net = ipaddress.IPv4Network(sub.subnet)
    opts: dict[int, bytes] = {
        Opt.SUBNET_MASK: net.netmask.packed,
        Opt.BROADCAST: net.broadcast_address.packed,
    }
    if sub.router:
        opts[Opt.ROUTER] = ip_bytes(sub.router)
    if sub.dns:
        opts[Opt.DNS] = b"".join(ip_bytes(a) for a in sub.dns)
    if sub.domain:
        opts[Opt.DOMAIN] = sub.domain.encode()
    return opts


def network_options(ex: Exchange) -> None:
    """RFC 2132 §3: the subnet's mask, router, DNS servers and domain; then the
    dhcp.options the client asks for (all of them when it sends no option 55)."""
    if ex.reply is None or ex.subnet_options is None:
        return
    opts = ex.reply.options
    opts.update(ex.subnet_options)
    extra = ex.extra_options
    if extra:
        asked = ex.request.options.get(Opt.PARAM_REQUEST)
        sent = [code for code in extra if asked is None or code in asked]
        for code in sent:
            opts[code] = extra[code]
        if sent:
            ex.note(f"dhcp.options sent: {', '.join(map(str, sent))}")
        if len(sent) < len(extra):
            ex.note(
                f"dhcp.options not asked for: {', '.join(str(c) for c in extra if c not in sent)}"
            )


class GroupOptions:
    """dhcp.group_options: a node's groups add to and override its subnet's dhcp.options.

    Runs after the address stage (which set the subnet's) and before network_options
    (which sends what the client asked for). Encoded once per config; the merged set
    is cached per subnet and group list, so a storm of one group merges once.
    """

    def __init__(self, config: ConfigSource) -> None:
        self._config = config
        self._for: Config | None = None
        self._encoded: dict[str, dict[int, bytes]] = {}
        self._merged: dict[tuple[int, tuple[str, ...]], dict[int, bytes]] = {}

    def __call__(self, ex: Exchange) -> None:
        cfg = self._config()
        if not cfg.dhcp.group_options or ex.extra_options is None or ex.reply is None:
            return
        node = ex.node
        if node is None or not node.groups:
            return
        if self._for is not cfg:
            self._for = cfg
            self._encoded = {g: encode_options_config(o) for g, o in cfg.dhcp.group_options.items()}
            self._merged = {}
        used = tuple(g for g in node.groups if g in self._encoded)
        if not used:
            return
        key = (id(ex.extra_options), used)
        merged = self._merged.get(key)
        if merged is None:
            merged = dict(ex.extra_options)
            for group in reversed(used):  # the first group's codes end on top
                merged.update(self._encoded[group])
            if len(self._merged) > 4096:
                self._merged.clear()
            self._merged[key] = merged
        ex.extra_options = merged
        ex.note(f"dhcp.group_options of {', '.join(used)}")


def inventory(config: ConfigSource, nodes: NodeInventory) -> Callable[[Exchange], None]:
    """The node inventory's entry for this MAC, looked up once for every later stage
    (reservation, groups, host name); with dhcp.ignore_unknown_clients, no reply at all
    to a MAC the inventory lacks."""

    def stage(ex: Exchange) -> None:
        ex.node = nodes.by_mac(ex.mac)
        if ex.node is None and config().dhcp.ignore_unknown_clients:
            ex.drop("not in the node inventory (dhcp.ignore_unknown_clients)", "unknown-client")

    return stage


def hostname(ex: Exchange) -> None:
    """Option 12 from the node inventory."""
    node = ex.node
    if ex.reply is not None and node is not None and node.hostname:
        ex.reply.options[Opt.HOSTNAME] = node.hostname.encode()
        ex.note(f"hostname {node.hostname} from the node inventory")


def relay_agent_echo(ex: Exchange) -> None:
    """RFC 3046 §2.2: echo the relay agent information option, last, in replies via a relay."""
    if ex.reply is None:
        return
    info = ex.request.options.get(Opt.RELAY_AGENT)
    if info is not None and ex.request.giaddr != ZERO:
        ex.reply.options.pop(Opt.RELAY_AGENT, None)
        ex.reply.options[Opt.RELAY_AGENT] = info
