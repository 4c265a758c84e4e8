"""The aiohttp application: middleware, then each feature adds its routes."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bootd.context import Context
from bootd.http import api, bootscript, bss, cloudinit, images, leases, ops
from bootd.http.problem import PROBLEM_TYPE

log = logging.getLogger("bootd.http")

CTX_KEY = web.AppKey("ctx", Context)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """Metric label: the matched route pattern, never the raw path (bounded cardinality)."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests and bytes by route and status; turn HTTP errors into problem documents."""
    ctx: Context = request.app[CTX_KEY]
    route = route_label(request)
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        if exc.content_type != PROBLEM_TYPE and exc.status >= 400:
            body = {"type": "about:blank", "title": exc.reason, "status": exc.status}
            exc = web.HTTPException.__new__(type(exc))
            web.HTTPException.__init__(exc, text=json.dumps(body), content_type=PROBLEM_TYPE)
        ctx.metrics.http_requests.labels(route, str(exc.status)).inc()
        raise exc from None
    ctx.metrics.http_requests.labels(route, str(resp.status)).inc()
    return resp


def build_app(ctx: Context) -> web.Application:
    """Assemble every route group on one application."""
    app = web.Application(middlewares=[observe], client_max_size=16 * 1024 * 1024)
    app[CTX_KEY] = ctx
    ops.add_routes(app, ctx)
    api.add_routes(app, ctx)
    leases.add_routes(app, ctx)
    bss.add_routes(app, ctx)
    bootscript.add_routes(app, ctx)
    images.add_routes(app, ctx)
    cloudinit.add_routes(app, ctx)
    return app
