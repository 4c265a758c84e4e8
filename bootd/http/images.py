"""GET/HEAD /images/{path}: jailed files over zero-copy sendfile, with the node's timeline."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from bootd.boot.script import stage_for_image
from bootd.context import Context
from bootd.fsinfo import OutsideRoot
from bootd.http.bss import bss_store
from bootd.http.openfiles import OpenFiles
from bootd.http.problem import ProblemError
from bootd.http.ranges import plan_file_response
from bootd.logs import RateLimitedLog

log = logging.getLogger("bootd.http.images")

ROUTE = "/images/{path}"


def traversal_reason(raw_path: str, rel: str) -> str | None:
    """Why a decoded request path is refused before touching the disk, or None."""
    parts = rel.split("/")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in (".", "..") for p in parts):
        return "encoded-traversal" if "%" in raw_path else "traversal"
    return None


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the image route."""
    store = bss_store(ctx)
    warn = RateLimitedLog(log)
    files = OpenFiles()

    async def close_files(_app: web.Application) -> None:
        files.close()

    app.on_cleanup.append(close_files)
    bytes_sent = ctx.metrics.http_bytes.labels(ROUTE)

    def refuse(reason: str, request: web.Request) -> ProblemError:
        ctx.metrics.malformed.labels("http", reason).inc()
        warn.warning(
            f"{reason}:{request.remote}", "refused image path %r from %s (%s)",
            request.raw_path, request.remote, reason,
        )  # fmt: skip
        return ProblemError(404, "Not Found", "no such image")

    def stage_of(request: web.Request, rel: str) -> tuple[str, str] | None:
        mac = ctx.mac_for_ip(request.remote or "")
        if mac is None:
            return None
        node = ctx.nodes.by_mac(mac)
        names = [n for n in (node.xname, node.hostname) if n] if node else []
        found = store.resolve(mac, names, node.nid if node else None)
        stage = stage_for_image(rel, found[0] if found else None)
        return (mac, stage) if stage else None

    async def send(
        request: web.Request, fobj: BinaryIO, start: int, length: int, who: tuple[str, str] | None
    ) -> None:
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if who:
            ctx.timeline.record(who[0], who[1], "start", ctx.clock())
        try:
            await loop.sendfile(transport, fobj, start, length)
        except BaseException:
            # loop.sendfile leaves the file position after the last byte it sent.
            partial = max(0, fobj.tell() - start)
            bytes_sent.inc(partial)
            if who:
                ctx.timeline.record(who[0], who[1], "end", ctx.clock(), partial, "aborted")
            raise
        bytes_sent.inc(length)
        if who:
            ctx.timeline.record(who[0], who[1], "end", ctx.clock(), length)

    async def image(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        reason = traversal_reason(request.raw_path, rel)
        if reason:
            raise refuse(reason, request)
        try:
            fobj, st = await files.open(Path(ctx.config.http.images), rel)
        except OutsideRoot:
            raise refuse("symlink-escape", request) from None
        except (OSError, RuntimeError):  # missing, a directory, unreadable, a symlink loop
            raise ProblemError(404, "Not Found", "no such image") from None
        try:
            plan = plan_file_response(request.method, request.headers, st.st_size, st.st_mtime_ns)
            resp = web.StreamResponse(status=plan.status, headers=plan.headers)
            if plan.status != 304:
                resp.content_type = "application/octet-stream"
                resp.content_length = plan.length
            try:
                await resp.prepare(request)
                if request.method == "GET" and plan.length and plan.status in (200, 206):
                    await send(request, fobj, plan.start, plan.length, stage_of(request, rel))
                await resp.write_eof()
            except ConnectionError:
                # The client went away (mid-file: already recorded): close quietly,
                # a storm's worth of tracebacks helps nobody.
                resp.force_close()
            return resp
        finally:
            fobj.close()

    app.router.add_get("/images/{path:.+}", image)
