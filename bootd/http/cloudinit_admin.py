"""cloud-init admin API in OpenCHAMI's shapes: groups, cluster defaults, instance info."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bootd.boot.cloudinit import parse_defaults, parse_group, parse_instance_info
from bootd.boot.node import normalize_mac
from bootd.context import Context
from bootd.http.problem import ProblemError, check_bearer, json_body, read_token
from bootd.store.cloudinit import CloudInitStore


def bearer_ok(request: web.Request, ctx: Context) -> bool:
    """Whether the request carries the API token (for reads that reveal more with it)."""
    try:
        check_bearer(request, read_token(ctx.config.api.token_file))
    except ProblemError:
        return False
    return True


def _valid(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ValueError as exc:
        raise ProblemError(422, "Invalid data", str(exc)) from None


def add_admin_routes(app: web.Application, ctx: Context, store: CloudInitStore) -> None:
    """OpenCHAMI cloud-init admin API; writes need the API token, reads hide secrets."""
    base = "/cloud-init/admin"

    def write_guard(request: web.Request) -> None:
        check_bearer(request, read_token(ctx.config.api.token_file))

    async def list_groups(request: web.Request) -> web.Response:
        reveal = bearer_ok(request, ctx)
        return web.json_response({n: g.to_json(reveal) for n, g in sorted(store.groups.items())})

    async def add_group(request: web.Request) -> web.Response:
        write_guard(request)
        body = await json_body(request)
        g = _valid(lambda: parse_group(body))
        if not await store.put_group(g, create_only=True):
            raise ProblemError(409, "Group exists", f"group {g.name!r} exists; PUT to replace it")
        return web.Response(status=201, headers={"Location": f"{base}/groups/{g.name}"})

    async def get_group(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        g = store.groups.get(name)
        if g is None:
            raise ProblemError(404, "Unknown group", f"no group {name!r}")
        return web.json_response(g.to_json(bearer_ok(request, ctx)))

    async def put_group(request: web.Request) -> web.Response:
        write_guard(request)
        name = request.match_info["name"]
        body = await json_body(request)
        g = _valid(lambda: parse_group(body, name))
        await store.put_group(g)
        return web.Response(status=201, headers={"Location": f"{base}/groups/{g.name}"})

    async def delete_group(request: web.Request) -> web.Response:
        write_guard(request)
        name = request.match_info["name"]
        if not await store.delete_group(name):
            raise ProblemError(404, "Unknown group", f"no group {name!r}")
        return web.json_response({"deleted": name})

    async def get_defaults(_: web.Request) -> web.Response:
        return web.json_response(dict(store.defaults))

    async def set_defaults(request: web.Request) -> web.Response:
        write_guard(request)
        body = await json_body(request)
        await store.set_defaults(_valid(lambda: parse_defaults(body)))
        return web.Response(status=201)

    def info_id(request: web.Request) -> str:
        raw = request.match_info["id"]
        try:
            return normalize_mac(raw)
        except ValueError:
            return raw

    async def get_info(request: web.Request) -> web.Response:
        id_ = info_id(request)
        info = store.info(id_)
        if info is None:
            raise ProblemError(404, "Unknown instance", f"no instance info for {id_!r}")
        return web.json_response(dict(info))

    async def put_info(request: web.Request) -> web.Response:
        write_guard(request)
        id_ = info_id(request)
        body = await json_body(request)
        await store.set_info(id_, _valid(lambda: parse_instance_info(body, id_)))
        return web.Response(status=201)

    async def delete_info(request: web.Request) -> web.Response:
        write_guard(request)
        id_ = info_id(request)
        if not await store.delete_info(id_):
            raise ProblemError(404, "Unknown instance", f"no instance info for {id_!r}")
        return web.json_response({"deleted": id_})

    async def get_phone_home(request: web.Request) -> web.Response:
        raw = request.match_info["mac"]
        try:
            mac = normalize_mac(raw)
        except ValueError as exc:
            raise ProblemError(400, "Bad MAC", str(exc)) from None
        ph = store.phoned_home(mac)
        if ph is None:
            raise ProblemError(404, "No phone-home", f"{mac} has not phoned home")
        return web.json_response({"mac": ph.mac, "time": ph.t, **ph.data})

    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", "/groups", list_groups),
        ("POST", "/groups", add_group),
        ("GET", "/groups/{name}", get_group),
        ("PUT", "/groups/{name}", put_group),
        ("DELETE", "/groups/{name}", delete_group),
        ("GET", "/cluster-defaults", get_defaults),
        ("POST", "/cluster-defaults", set_defaults),
        ("PUT", "/cluster-defaults", set_defaults),
        ("GET", "/instance-info/{id}", get_info),
        ("PUT", "/instance-info/{id}", put_info),
        ("DELETE", "/instance-info/{id}", delete_info),
        ("GET", "/phone-home/{mac}", get_phone_home),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, base + path, handler)
