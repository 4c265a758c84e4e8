"""GET /boot/v1/bootscript: the iPXE script for one node (in-memory lookups only)."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import jinja2
from aiohttp import web

from bootd.boot.bootparams import BootData
from bootd.boot.node import normalize_mac
from bootd.boot.script import (
    RetryPolicy,
    ScriptRequest,
    compile_template,
    render_script,
    template_vars,
)
from bootd.context import Context, StartupError
from bootd.http.bss import bad_request, bss_store
from bootd.http.problem import ProblemError
from bootd.logs import RateLimitedLog

log = logging.getLogger("bootd.http.bootscript")

# A retry count in the URL beyond this is someone else's loop, not ours; clamp it.
MAX_RETRY_PARAM = 10_000


class TemplateCache:
    """The operator's template, compiled once and again only when the file changes."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._template: jinja2.Template | None = None

    def get(self, path: Path | None) -> jinja2.Template | None:
        """The compiled template (None: use bootd's own); OSError/TemplateError propagate."""
        if path is None:
            return None
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key != self._key or self._template is None:
            self._template = compile_template(path.read_text())
            self._key = key
        return self._template


def sample_request(ctx: Context) -> ScriptRequest:
    """A plausible request used to try an operator template at startup."""
    c = ctx.config.http
    return ScriptRequest(
        base_url=ctx.config.http_base_url,
        mac="02:00:00:00:00:01",
        name="x0c0s0b0n0",
        nid=1,
        retry=0,
        arch=None,
        data=BootData(kernel="vmlinuz", initrd="initrd.img", params="console=ttyS0"),
        source="mac 02:00:00:00:00:01",
        policy=RetryPolicy(c.script_retries, c.script_retry_base, c.script_retry_max),
        jitter=0.5,
    )


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register the boot-script route; a broken operator template fails startup."""
    store = bss_store(ctx)
    templates = TemplateCache()
    rng = random.Random()
    warn = RateLimitedLog(log)
    path = ctx.config.http.script_template
    if path is not None:
        try:
            render_script(sample_request(ctx), templates.get(path))
        except (OSError, jinja2.TemplateError) as exc:
            raise StartupError(f"http.script_template {path}: {exc}") from None

    def build_request(request: web.Request) -> ScriptRequest:
        q = request.query
        mac = name = None
        nid: int | None = None
        try:
            if q.get("mac"):
                mac = normalize_mac(q["mac"])
        except ValueError as exc:
            raise bad_request(ctx, "bad-mac", "Bad Request", str(exc)) from None
        name = q.get("name") or None
        for field in ("nid", "retry"):
            if q.get(field) and not q[field].isdigit():
                raise bad_request(ctx, "bad-query", "Bad Request", f"{field} must be an integer")
        if q.get("nid"):
            nid = int(q["nid"])
        if mac is None and name is None and nid is None:
            raise bad_request(
                ctx, "bad-query", "Bad Request", "Need a mac=, name=, or nid= parameter"
            )
        node = (
            ctx.nodes.by_mac(mac)
            if mac
            else ctx.nodes.by_name(name)
            if name
            else ctx.nodes.by_nid(nid)
            if nid is not None
            else None
        )
        names = [name] if name else []
        if node is not None:
            mac = mac or node.mac
            names += [n for n in (node.xname, node.hostname) if n]
            nid = node.nid if nid is None else nid
            name = node.xname or name
        found = store.resolve(mac, names, nid)
        data, source = (found[0], f"{found[1][0]} {found[1][1]}") if found else (None, "")
        if not found:
            source = f"MAC {mac}" if mac else f"name {name}" if name else f"NID {nid}"
        c = ctx.config.http
        return ScriptRequest(
            base_url=ctx.config.http_base_url,
            mac=mac,
            name=name,
            nid=nid,
            retry=min(int(q.get("retry") or 0), MAX_RETRY_PARAM),
            arch=q.get("arch") or None,
            data=data,
            source=source,
            policy=RetryPolicy(c.script_retries, c.script_retry_base, c.script_retry_max),
            jitter=rng.random(),
            # Only a script that boots carries a token: a retry script would waste one.
            ci_token=(
                ctx.ci_tokens.issue(mac, ctx.clock())
                if ctx.ci_tokens and mac and data is not None and data.kernel
                else None
            ),
        )

    async def bootscript(request: web.Request) -> web.Response:
        started = time.perf_counter()
        req = build_request(request)
        try:
            script = render_script(req, templates.get(ctx.config.http.script_template))
        except (OSError, jinja2.TemplateError) as exc:
            warn.warning("template", "boot script template failed: %s", exc)
            raise ProblemError(500, "Boot script template error", str(exc)) from None
        if req.mac:
            detail = f"retry {req.retry}" if req.retry else ""
            if req.data is None or not req.data.kernel:
                detail = (detail + " no boot parameters").strip()
            ctx.timeline.record(req.mac, "bootscript", "event", ctx.clock(), detail=detail)
        if request.query.get("json") in ("1", "true", "yes"):
            resp = web.json_response({**template_vars(req), "script": script})
        else:
            resp = web.Response(text=script, content_type="text/plain")
        ctx.metrics.bootscript_seconds.observe(time.perf_counter() - started)
        return resp

    app.router.add_get("/boot/v1/bootscript", bootscript)
