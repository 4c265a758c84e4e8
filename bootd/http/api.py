"""/api/v1: the node inventory and boot timelines as JSON."""

from __future__ import annotations

from aiohttp import web

from bootd.boot.node import node_from_dict, normalize_mac
from bootd.context import Context
from bootd.http.problem import ProblemError, check_bearer, json_list_body, read_token


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the inventory and timeline routes."""

    async def list_nodes(_: web.Request) -> web.Response:
        return web.json_response([n.to_dict() for n in ctx.nodes.all()])

    async def put_nodes(request: web.Request) -> web.Response:
        check_bearer(request, read_token(ctx.config.api.token_file))
        data = await json_list_body(request, "Bad inventory", "nodes")
        try:
            nodes = [node_from_dict(e, f"[{i}]") for i, e in enumerate(data)]
            await ctx.nodes.upsert(nodes, replace_all=request.query.get("replace") == "1")
        except ValueError as exc:
            raise ProblemError(400, "Bad inventory", str(exc)) from None
        return web.json_response({"imported": len(nodes)})

    async def list_boots(request: web.Request) -> web.Response:
        mac = request.query.get("mac")
        timelines = ctx.timeline.all()
        if mac:
            try:
                norm = normalize_mac(mac)
            except ValueError as exc:
                raise ProblemError(400, "Bad MAC", str(exc)) from None
            timelines = [t for t in timelines if t.mac == norm]
        return web.json_response([t.to_dict() for t in timelines])

    async def show_config(_: web.Request) -> web.Response:
        # The effective (running) config; the token itself lives in a file and is never shown.
        return web.json_response(ctx.config.model_dump(mode="json", by_alias=True))

    app.router.add_get("/api/v1/config", show_config)
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_post("/api/v1/nodes", put_nodes)
    app.router.add_get("/api/v1/boots", list_boots)
