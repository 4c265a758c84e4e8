"""/api/v1/leases (list, import, delete), /api/v1/explain and /tftp/{name} (EFI binaries for UEFI
HTTP boot)."""

from __future__ import annotations

import ipaddress
import logging
import math
from typing import Any

from aiohttp import web

from bootd.boot.node import normalize_mac
from bootd.context import Context
from bootd.dhcp.address import networks
from bootd.http.problem import ProblemError, check_bearer, json_list_body, read_token
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt
from bootd.proto.dhcp.options import host_label
from bootd.store.leases import Lease, LeaseTable

log = logging.getLogger("bootd.dhcp")


def explain_request(mac: str, arch: int | None, ipxe: bool) -> DhcpPacket:
    """The DISCOVER such a client would send."""
    opts: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes((MessageType.DISCOVER,))}
    if arch is not None:
        opts[Opt.VENDOR_CLASS] = f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()
        if arch == 16:
            opts[Opt.VENDOR_CLASS] = b"HTTPClient:Arch:00016:UNDI:003001"
        opts[Opt.CLIENT_ARCH] = arch.to_bytes(2, "big")
    if ipxe:
        opts[Opt.USER_CLASS] = b"iPXE"
    chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
    return DhcpPacket(xid=0x4558504C, chaddr=chaddr, flags=0x8000, options=opts)


def lease_from_dict(d: Any) -> Lease:
    """One entry of an import: {mac, ip, expires (epoch seconds), hostname}; ValueError."""
    if not isinstance(d, dict):
        raise ValueError("expected a mapping with mac, ip and expires")
    unknown = set(d) - {"mac", "ip", "expires", "hostname"}
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown key")
    mac = normalize_mac(d.get("mac", ""))
    try:
        ip = str(ipaddress.IPv4Address(str(d.get("ip"))))
    except ValueError:
        raise ValueError(f"ip: {d.get('ip')!r} is not an IPv4 address") from None
    expires = d.get("expires")
    # Python's json reads NaN and Infinity: neither is a time (and inf breaks `remaining`).
    if (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not math.isfinite(expires)
        or expires <= 0
    ):
        raise ValueError(f"expires: {expires!r} is not a time in epoch seconds")
    name = d.get("hostname")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"hostname: {name!r} is not a string")
    # Kept only as a valid host name label, as for names clients send (option 12).
    hostname = host_label(name.encode("utf-8", "replace")) if name else None
    return Lease(mac, ip, float(expires), hostname)


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the lease, explain and HTTP-boot routes."""

    async def list_leases(_: web.Request) -> web.Response:
        now = ctx.clock()
        table = ctx.leases
        rows = table.all() if isinstance(table, LeaseTable) else []
        return web.json_response([lease.to_dict(now) for lease in rows])

    def lease_table() -> LeaseTable:
        table = ctx.leases
        if not isinstance(table, LeaseTable):
            raise ProblemError(409, "DHCP disabled", "dhcp.enabled is false in this config")
        return table

    async def import_leases(request: web.Request) -> web.Response:
        check_bearer(request, read_token(ctx.config.api.token_file))
        table = lease_table()
        data = await json_list_body(request, "Bad leases", "leases")
        nets = networks(ctx.config)
        leases: list[Lease] = []
        errors: list[str] = []
        for i, entry in enumerate(data):
            try:
                lease = lease_from_dict(entry)
            except ValueError as exc:
                errors.append(f"[{i}]: {exc}")
                continue
            if not any(net.contains(lease.ip) for net in nets):
                errors.append(f"[{i}]: {lease.ip} is in none of this server's subnets")
            leases.append(lease)
        if errors:
            raise ProblemError(400, "Bad leases", "; ".join(errors[:20]))
        conflicts, written = table.import_leases(leases, ctx.clock())
        if written is None:
            raise ProblemError(409, "Lease conflicts", "; ".join(conflicts[:20]))
        await written  # the answer leaves once every row is on disk
        log.info("dhcp: %d leases imported through the API", len(leases))
        return web.json_response({"imported": len(leases)})

    async def delete_lease(request: web.Request) -> web.Response:
        check_bearer(request, read_token(ctx.config.api.token_file))
        try:
            mac = normalize_mac(request.match_info["mac"])
        except ValueError as exc:
            raise ProblemError(400, "Bad MAC", str(exc)) from None
        lease, written = lease_table().delete(mac)
        await written  # the answer leaves once the row is gone from disk
        if lease is None:
            raise ProblemError(404, "No lease", f"{mac} has no lease")
        log.info("dhcp: lease of %s on %s deleted through the API", mac, lease.ip)
        return web.json_response(lease.to_dict(ctx.clock()))

    async def explain(request: web.Request) -> web.Response:
        from bootd.dhcp.chain import explain as run_explain
        from bootd.dhcp.describe import describe
        from bootd.dhcp.exchange import Exchange

        q = request.query
        try:
            mac = normalize_mac(q.get("mac", ""))
        except ValueError as exc:
            raise ProblemError(400, "Bad MAC", str(exc)) from None
        arch: int | None = None
        if q.get("arch"):
            try:
                arch = int(q["arch"])
            except ValueError:
                raise ProblemError(400, "Bad arch", "arch is an integer (option 93)") from None
            if not 0 <= arch <= 65535:
                raise ProblemError(400, "Bad arch", "arch is a 16-bit value (option 93)")
        ipxe = q.get("ipxe", "") in ("1", "true", "yes")
        service = ctx.extras.get("dhcp")
        stages = getattr(service, "stages", None)
        if stages is None:
            raise ProblemError(409, "DHCP disabled", "dhcp.enabled is false in this config")
        req = explain_request(mac, arch, ipxe)
        ex = run_explain(stages, Exchange(request=req, now=ctx.clock(), mac=mac))
        node = ctx.nodes.by_mac(mac)
        out: dict[str, object] = {
            "mac": mac,
            "mode": ctx.config.dhcp.mode,
            "phase": ex.phase,
            "node": node.to_dict() if node is not None else None,
            "reply": ex.reply_type.name if ex.reply_type is not None else None,
            "why": ex.why,
        }
        if ex.reply is not None:
            out.update(describe(ex.reply))
        return web.json_response(out)

    async def efi(request: web.Request) -> web.StreamResponse:
        root = ctx.config.tftp.root.resolve()
        name = request.match_info["name"]
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ProblemError(404, "Not found", f"{name} is not under tftp.root")
        return web.FileResponse(path)

    app.router.add_get("/api/v1/leases", list_leases)
    app.router.add_post("/api/v1/leases", import_leases)
    app.router.add_delete("/api/v1/leases/{mac}", delete_lease)
    app.router.add_get("/api/v1/explain", explain)
    app.router.add_get("/tftp/{name:[^/]+}", efi)
