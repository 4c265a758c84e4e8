"""/api/v1/leases (list, delete), /api/v1/explain and /tftp/{name} (EFI binaries for UEFI
HTTP boot)."""

from __future__ import annotations

import logging

from aiohttp import web

from bootd.boot.node import normalize_mac
from bootd.context import Context
from bootd.http.problem import ProblemError, check_bearer, read_token
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt
from bootd.store.leases import LeaseTable

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


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the lease, explain and HTTP-boot routes."""

    async def list_leases(_: web.Request) -> web.Response:
        now = ctx.clock()
        table = ctx.leases
        rows = table.all() if isinstance(table, LeaseTable) else []
        return web.json_response([lease.to_dict(now) for lease in rows])

    async def delete_lease(request: web.Request) -> web.Response:
        check_bearer(request, read_token(ctx.config.api.token_file))
        try:
            mac = normalize_mac(request.match_info["mac"])
        except ValueError as exc:
            raise ProblemError(400, "Bad MAC", str(exc)) from None
        table = ctx.leases
        if not isinstance(table, LeaseTable):
            raise ProblemError(409, "DHCP disabled", "dhcp.enabled is false in this config")
        lease, written = table.delete(mac)
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
    app.router.add_delete("/api/v1/leases/{mac}", delete_lease)
    app.router.add_get("/api/v1/explain", explain)
    app.router.add_get("/tftp/{name:[^/]+}", efi)
