"""/boot/v1: the OpenCHAMI BSS boot-parameter API (same JSON shapes, bearer-token writes)."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from bootd import __version__
from bootd.boot.bootparams import BootParams, bootparams_json, parse_bootparams
from bootd.boot.node import Node, normalize_mac
from bootd.context import Context
from bootd.http.problem import ProblemError, check_bearer, read_token
from bootd.store.bss import BssConflict, BssNotFound, BssStore

log = logging.getLogger("bootd.http.bss")

Key = tuple[str, str]


def bss_store(ctx: Context) -> BssStore:
    """The daemon's BSS store (created and loaded on first use; shared via ctx.extras)."""
    store = ctx.extras.get("bss")
    if not isinstance(store, BssStore):
        store = BssStore(ctx.db)
        store.load()
        ctx.extras["bss"] = store
    return store


def bad_request(ctx: Context, reason: str, title: str, detail: str) -> ProblemError:
    """Count the rejected input and build its 400 problem document."""
    ctx.metrics.malformed.labels("http", reason).inc()
    return ProblemError(400, title, detail)


async def read_payload(request: web.Request, ctx: Context, required: bool = True) -> Any:
    """The JSON body, or None when it is empty and not required."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request(ctx, "bad-json", "Bad Request", "expected a JSON BootParams body")
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(
            ctx, "bad-json", "Bad Request", f"body is not valid JSON: {exc}"
        ) from None


def to_bootparams(ctx: Context, data: Any, need_key: bool = True) -> BootParams:
    """Validate a payload; bad MACs and shapes become 400 problem documents."""
    try:
        bp = parse_bootparams(data)
    except ValueError as exc:
        reason = "bad-mac" if "MAC" in str(exc) else "bad-payload"
        raise bad_request(ctx, reason, "Bad Request", str(exc)) from None
    if need_key and not bp.keys():
        raise bad_request(
            ctx, "bad-payload", "Bad Request", "give at least one of macs, hosts, nids"
        )
    return bp


def query_bootparams(request: web.Request, ctx: Context, body: BootParams | None) -> BootParams:
    """?mac=&name=&nid= (comma-separated, repeatable) merged into the body's selection."""
    bp = body or BootParams()
    try:
        macs = [
            normalize_mac(m) for v in request.query.getall("mac", []) for m in v.split(",") if m
        ]
    except ValueError as exc:
        raise bad_request(ctx, "bad-mac", "Bad Request", str(exc)) from None
    names = [n for v in request.query.getall("name", []) for n in v.split(",") if n]
    nids: list[int] = []
    for v in request.query.getall("nid", []):
        for n in v.split(","):
            if not n.strip().isdigit():
                raise bad_request(ctx, "bad-query", "Bad Request", f"Invalid nid '{n}'")
            nids.append(int(n))
    return bp.model_copy(
        update={"macs": bp.macs + macs, "hosts": bp.hosts + names, "nids": bp.nids + nids}
    )


def _node_keys(node: Node | None) -> list[Key]:
    if node is None:
        return []
    keys: list[Key] = [("mac", node.mac)]
    keys += [("host", n) for n in (node.xname, node.hostname) if n]
    if node.nid is not None:
        keys.append(("nid", str(node.nid)))
    return keys


def wanted_keys(ctx: Context, sel: BootParams) -> set[Key]:
    """The selection's keys plus, through the inventory, each node's other identities."""
    keys = set(sel.keys())
    for m in sel.macs:
        keys.update(_node_keys(ctx.nodes.by_mac(m)))
    for h in sel.hosts:
        keys.update(_node_keys(ctx.nodes.by_name(h)))
    for n in sel.nids:
        keys.update(_node_keys(ctx.nodes.by_nid(n)))
    return keys


def component(node: Node) -> dict[str, Any]:
    """An inventory node in the shape BSS returns for SMD components."""
    return {
        "ID": node.xname or node.hostname or node.mac,
        "Type": "Node",
        "State": "Ready",
        "Enabled": True,
        "Role": "Compute",
        "NID": node.nid,
        "Mac": [node.mac],
        "Fqdn": node.hostname or "",
        "EndpointEnabled": True,
    }


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the BSS routes."""
    store = bss_store(ctx)

    def authorise(request: web.Request) -> None:
        check_bearer(request, read_token(ctx.config.api.token_file))

    async def get_params(request: web.Request) -> web.Response:
        body = await read_payload(request, ctx, required=False)
        sel = query_bootparams(request, ctx, to_bootparams(ctx, body, False) if body else None)
        groups = store.groups()
        if sel.keys():
            want = wanted_keys(ctx, sel)
            groups = [g for g in groups if want.intersection(g[0])]
            if not groups:
                what = [w for w, v in (("Hosts", sel.hosts), ("MACs", sel.macs),
                                       ("NIDs", sel.nids)) if v]  # fmt: skip
                raise ProblemError(
                    404,
                    "Not Found",
                    "Cannot find boot parameters for requested " + " or ".join(what),
                )
        return web.json_response([bootparams_json(ks, d) for ks, d in groups])

    async def post_params(request: web.Request) -> web.Response:
        authorise(request)
        bp = to_bootparams(ctx, await read_payload(request, ctx))
        try:
            await store.add(bp)
        except BssConflict as exc:
            raise ProblemError(409, "Conflict", str(exc)) from None
        log.info("bootparameters added for %d keys", len(bp.keys()))
        return web.json_response(bootparams_json(bp.keys(), bp.data()), status=201)

    async def put_params(request: web.Request) -> web.Response:
        authorise(request)
        bp = to_bootparams(ctx, await read_payload(request, ctx))
        await store.put(bp)
        return web.json_response(bootparams_json(bp.keys(), bp.data()))

    async def patch_params(request: web.Request) -> web.Response:
        authorise(request)
        bp = to_bootparams(ctx, await read_payload(request, ctx))
        try:
            await store.patch(bp)
        except BssNotFound as exc:
            raise ProblemError(404, "Not Found", str(exc)) from None
        return web.json_response({"updated": len(bp.keys())})

    async def delete_params(request: web.Request) -> web.Response:
        authorise(request)
        body = await read_payload(request, ctx, required=False)
        sel = query_bootparams(request, ctx, to_bootparams(ctx, body, False) if body else None)
        if not sel.keys():
            raise bad_request(
                ctx, "bad-payload", "Bad Request", "give macs, hosts or nids to delete"
            )
        try:
            n = await store.delete(sel)
        except BssNotFound as exc:
            raise ProblemError(404, "Not Found", str(exc)) from None
        return web.json_response({"deleted": n})

    async def get_hosts(request: web.Request) -> web.Response:
        sel = query_bootparams(request, ctx, None)
        if not sel.keys():
            return web.json_response([component(n) for n in ctx.nodes.all()])
        found: list[dict[str, Any]] = []
        for kind, key, node in (
            *(("MAC address", m, ctx.nodes.by_mac(m)) for m in sel.macs),
            *(("host name", h, ctx.nodes.by_name(h)) for h in sel.hosts),
            *(("NID", str(n), ctx.nodes.by_nid(n)) for n in sel.nids),
        ):
            if node is None:
                raise ProblemError(404, "Not Found", f"Not Found - Unknown {kind} '{key}'")
            found.append(component(node))
        return web.json_response(found)

    async def dumpstate(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "Components": [component(n) for n in ctx.nodes.all()],
                "Params": [bootparams_json(ks, d) for ks, d in store.groups()],
            }
        )

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"bss-status": "running"})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"bss-version": f"bootd-{__version__}"})

    r = app.router
    r.add_get("/boot/v1/bootparameters", get_params)
    r.add_post("/boot/v1/bootparameters", post_params)
    r.add_put("/boot/v1/bootparameters", put_params)
    r.add_patch("/boot/v1/bootparameters", patch_params)
    r.add_delete("/boot/v1/bootparameters", delete_params)
    r.add_get("/boot/v1/hosts", get_hosts)
    r.add_get("/boot/v1/dumpstate", dumpstate)
    r.add_get("/boot/v1/service/status", status)
    r.add_get("/boot/v1/service/version", version)
