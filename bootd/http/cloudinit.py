"""cloud-init NoCloud data by source IP, the secure route, phone-home, and the admin API."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from aiohttp import web

from bootd.boot.citoken import Verdict
from bootd.boot.cloudinit import (
    NodeSeed,
    dump_yaml,
)
from bootd.boot.node import Node, normalize_mac
from bootd.config import Config
from bootd.context import Context
from bootd.http.cloudinit_admin import add_admin_routes, bearer_ok
from bootd.http.problem import ProblemError, check_bearer, json_body, problem, read_token
from bootd.logs import RateLimitedLog
from bootd.store.cloudinit import store_of

log = logging.getLogger("bootd.cloudinit")

DOCS = "{doc:meta-data|user-data|vendor-data|network-config}"
# Rendered documents kept per (document, node); past this the cache starts over.
# 3 documents × ~20k nodes; each entry is a few KB at most.
MAX_CACHED = 65_536
# X-Forwarded-For hops we look at: a proxy chain longer than this is not ours.
MAX_XFF_HOPS = 32
# Phone-home fields cloud-init's phone_home module posts; anything else is ignored.
PHONE_HOME_FIELDS = (
    "pub_key_rsa",
    "pub_key_ecdsa",
    "pub_key_ed25519",
    "instance_id",
    "hostname",
    "fqdn",
)
MAX_FIELD_LEN = 16 * 1024
FORBIDDEN_DETAIL = "this route answers only the node itself, with its token for this boot"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class NodeResolver:
    """Source address (X-Forwarded-For only via trusted proxies) → node at that address."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._config: Config | None = None
        self._trusted: list[Net] = []

    def _trusted_nets(self) -> list[Net]:
        cfg = self._ctx.config
        if cfg is not self._config:  # parsed once per (re)loaded config
            self._trusted = [
                ipaddress.ip_network(p, strict=False) for p in cfg.cloud_init.trusted_proxies
            ]
            self._config = cfg
        return self._trusted

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted_nets())

    def client_ip(self, request: web.Request) -> str:
        """The node's address: the peer, or the nearest untrusted X-Forwarded-For hop."""
        peer = request.remote or ""
        if not self._trusted_nets() or not self._is_trusted(peer):
            return peer  # an untrusted client's X-Forwarded-For is ignored
        hops = [
            h.strip()
            for line in request.headers.getall("X-Forwarded-For", [])
            for h in line.split(",")
            if h.strip()
        ][-MAX_XFF_HOPS:]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # garbage from the proxy: answer for the proxy itself
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def node(self, request: web.Request) -> tuple[str, Node] | None:
        """(ip, node) for the requester, or None when no lease or reservation matches."""
        ip = self.client_ip(request)
        mac = self._ctx.mac_for_ip(ip)
        if mac is None:
            return None
        return ip, self._ctx.nodes.by_mac(mac) or Node(mac=mac)


def add_routes(app: web.Application, ctx: Context) -> None:
    """Register /cloud-init/… and /cloud-init-secure/…."""
    store = store_of(ctx)
    resolver = NodeResolver(ctx)
    denied_log = RateLimitedLog(log)
    # (document, MAC) → (store generation, config object, node, ip, body). The config
    # object itself (not its id) is kept, so a reload can never alias an old entry.
    cache: dict[tuple[str, str], tuple[int, Config, Node, str, bytes]] = {}
    bytes_plain = ctx.metrics.http_bytes.labels("/cloud-init")
    bytes_secure = ctx.metrics.http_bytes.labels("/cloud-init-secure")
    service_time = ctx.metrics.cloudinit_seconds

    def seed(ip: str, node: Node) -> NodeSeed:
        info = store.info_for(node.mac, node.xname, node.hostname)
        return NodeSeed(
            node=node,
            ip=ip,
            groups=store.groups,
            defaults=store.defaults,
            info=info,
            cluster_name=ctx.config.cloud_init.cluster_name,
            base_url=ctx.config.http_base_url,
        )

    def render(doc: str, ip: str, node: Node, secure: bool) -> bytes:
        key = ("s:" if secure else "") + doc, node.mac
        hit = cache.get(key)
        if (
            hit is not None
            and hit[0] == store.generation
            and hit[1] is ctx.config
            and hit[2] == node
            and hit[3] == ip
        ):
            return hit[4]
        s = seed(ip, node)
        if doc == "meta-data":
            body = dump_yaml(s.meta_data()).encode()
        elif doc == "network-config":
            body = dump_yaml(s.network_config()).encode()
        elif doc == "user-data":
            body = s.user_data().encode()
        else:
            body = s.secure_vendor_data() if secure else s.vendor_data().encode()
        if len(cache) >= MAX_CACHED:
            cache.clear()
        cache[key] = (store.generation, ctx.config, node, ip, body)
        return body

    def require_node(request: web.Request) -> tuple[str, Node]:
        found = resolver.node(request)
        if found is None:
            ip = resolver.client_ip(request)
            raise ProblemError(404, "Unknown node", f"no lease or reservation for {ip}")
        return found

    def answer(doc: str, mac: str, body: bytes, secure: bool) -> web.Response:
        detail = f"secure {doc}" if secure else doc
        # The public meta-data is what cloud-init reads first: it opens the stage, so another
        # in the same boot is a retry. Every other file (secure ones too, which a node reads
        # after its seed) extends the stage.
        event = "start" if doc == "meta-data" and not secure else "end"
        ctx.timeline.record(mac, "cloud-init", event, ctx.clock(), len(body), detail)
        (bytes_secure if secure else bytes_plain).inc(len(body))
        ctype = "application/yaml" if doc in ("meta-data", "network-config") else "text/plain"
        return web.Response(body=body, content_type=ctype, charset="utf-8")

    async def nocloud(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        doc = request.match_info["doc"]
        ip, node = require_node(request)
        resp = answer(doc, node.mac, render(doc, ip, node, False), False)
        service_time.observe(time.perf_counter() - t0)
        return resp

    async def secure(request: web.Request) -> web.Response:
        doc = request.match_info["doc"]
        found = resolver.node(request)
        token = _presented_token(request)
        if found is None:
            verdict = Verdict.WRONG_NODE
        else:
            ph = store.phoned_home(found[1].mac)
            verdict = store.issuer.verify(
                token,
                found[1].mac,
                ctx.clock(),
                ctx.config.cloud_init.secure_token_ttl,
                ph.t if ph else None,
            )
        if verdict is not Verdict.OK or found is None:
            ctx.metrics.malformed.labels("cloud-init-secure", verdict.value).inc()
            ip = resolver.client_ip(request)
            denied_log.warning(
                f"secure:{ip}:{verdict.value}",
                "cloud-init-secure: refused %s from %s (%s)",
                doc,
                ip,
                verdict.value,
            )
            # Which check failed stays in the log: the body tells a prober nothing.
            return problem(403, "Forbidden", FORBIDDEN_DETAIL)
        ip, node = found
        return answer(doc, node.mac, render(doc, ip, node, True), True)

    async def group_file(request: web.Request) -> web.Response:
        name = request.match_info["group"]
        g = store.groups.get(name)
        found = resolver.node(request)
        member = found is not None and name in found[1].groups
        if not member and not bearer_ok(request, ctx):
            raise ProblemError(404, "Unknown group", f"no group {name!r} for this node")
        if g is None and not member:
            raise ProblemError(404, "Unknown group", f"no group {name!r}")
        # A member's group with nothing stored (deleted after its vendor-data was read) is an
        # empty cloud-config, as OpenCHAMI answers, so the node's #include does not fail.
        body = g.content if g is not None else b"#cloud-config\n"
        if found is not None:
            mac = found[1].mac
            ctx.timeline.record(mac, "cloud-init", "end", ctx.clock(), len(body), f"{name}.yaml")
        # Passed through as written: a `## template: jinja` file is rendered by cloud-init.
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def phone_home(request: web.Request) -> web.Response:
        ip, node = require_node(request)
        data = await _phone_home_fields(request)
        s = seed(ip, node)
        given = request.match_info["id"]
        known = {s.instance_id, node.mac, node.xname, node.hostname, s.local_hostname}
        if node.nid is not None:
            known.add(str(node.nid))
        if given not in known:
            ctx.metrics.malformed.labels("cloud-init", "phone-home-id").inc()
            raise ProblemError(
                403, "Forbidden", f"{given!r} is not the node at {ip}; post to its instance-id"
            )
        now = ctx.clock()
        await store.record_phone_home(node.mac, now, data)
        ctx.timeline.record(node.mac, "booted", "event", now, detail=data.get("fqdn", ""))
        log.info("%s phoned home from %s", node.name, ip, extra={"mac": node.mac})
        return web.json_response({"status": "ok", "instance-id": s.instance_id})

    async def impersonate(request: web.Request) -> web.Response:
        """What a node would be sent (OpenCHAMI's impersonation API); needs the API token."""
        check_bearer(request, read_token(ctx.config.api.token_file))
        node = _node_by_id(ctx, request.match_info["id"])
        if node is None:
            raise ProblemError(404, "Unknown node", f"no node {request.match_info['id']!r}")
        ip = ctx.leases.ip_for_mac(node.mac) or node.ip or ""
        doc = request.match_info["doc"]
        body = render(doc, ip, node, False)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    add_admin_routes(app, ctx, store)
    app.router.add_get(f"/cloud-init/admin/impersonation/{{id}}/{DOCS}", impersonate)
    app.router.add_get(f"/cloud-init/{DOCS}", nocloud)
    app.router.add_get(f"/cloud-init-secure/{DOCS}", secure)
    app.router.add_get("/cloud-init/{group:[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}}.yaml", group_file)
    app.router.add_post("/cloud-init/phone-home/{id}", phone_home)


def _node_by_id(ctx: Context, id_: str) -> Node | None:
    """A node by MAC, xname, hostname or nid."""
    try:
        return ctx.nodes.by_mac(normalize_mac(id_))
    except ValueError:
        pass
    node = ctx.nodes.by_name(id_)
    if node is None and id_.isdigit():
        node = ctx.nodes.by_nid(int(id_))
    return node


def _presented_token(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    return request.query.get("token") or None


async def _phone_home_fields(request: web.Request) -> dict[str, str]:
    """cloud-init posts a form; JSON is accepted too. Only known string fields are kept."""
    raw: Any
    if request.content_type == "application/json":
        raw = await json_body(request)
        if not isinstance(raw, dict):
            raise ProblemError(400, "Bad phone-home", "expected a JSON object")
    else:
        raw = await request.post()
    out: dict[str, str] = {}
    for key in PHONE_HOME_FIELDS:
        value = raw.get(key)
        if isinstance(value, str) and value and value != "N/A":
            if len(value) > MAX_FIELD_LEN:
                raise ProblemError(400, "Bad phone-home", f"{key}: longer than {MAX_FIELD_LEN}")
            out[key] = value
    return out
