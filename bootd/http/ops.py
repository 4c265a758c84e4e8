"""/healthz and /metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bootd.context import Context


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the operational routes."""

    async def healthz(_: web.Request) -> web.Response:
        expected = {"http"}
        if ctx.config.dhcp.enabled:
            expected.add("dhcp")
        if ctx.config.tftp.enabled:
            expected.add("tftp")
        up = set(ctx.services)
        missing = sorted(expected - up)
        body = {"status": "ok" if not missing else "degraded", "services": sorted(up)}
        if missing:
            body["missing"] = missing
        return web.json_response(body, status=200 if not missing else 503)

    async def metrics(_: web.Request) -> web.Response:
        ctx.metrics.store_commits.set(ctx.db.commits)
        return web.Response(
            body=generate_latest(ctx.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
