"""cloud-init routes on a real socket, each request from the address of the node it poses as."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bootd.boot.node import Node
from bootd.daemon import Daemon
from tests.helpers import base_config

N1 = Node("52:54:00:0c:00:01", "127.0.12.1", "nid0001", 1, "x1c0s0b0n0", ("compute", "gpu"))
N2 = Node("52:54:00:0c:00:02", "127.0.12.2", "nid0002", 2, "x1c0s0b0n1", ("compute",))
PROXY = "127.0.12.250"
STRANGER = "127.0.12.99"
AUTH = {"Authorization": "Bearer test-token"}
SECRET = "munge-key: c2VjcmV0LWtleS1kby1ub3QtbGVhaw"


@pytest.fixture
def cfg_dict(tmp_path: Path) -> dict[str, Any]:
    return base_config(
        tmp_path, **{"cloud-init": {"cluster_name": "demo", "trusted_proxies": [f"{PROXY}/32"]}}
    )


@pytest.fixture
async def ci(daemon: Daemon) -> Daemon:
    assert daemon.ctx is not None
    await daemon.ctx.nodes.upsert([N1, N2])
    return daemon


def url(d: Daemon, path: str) -> str:
    return f"{d.config.http_base_url}{path}"


async def fetch(
    d: Daemon, path: str, src: str, method: str = "GET", **kw: Any
) -> tuple[int, str, bytes]:
    """One request on a fresh connection bound to `src`, as a node would send it."""
    conn = aiohttp.TCPConnector(local_addr=(src, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, url(d, path), **kw) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


async def put_group(d: Daemon, name: str, content: str, secret: str = "") -> None:
    body: dict[str, Any] = {"name": name, "file": {"content": content, "encoding": "plain"}}
    if secret:
        body["secret"] = {"content": secret, "encoding": "plain"}
    st, _, out = await fetch(
        d, f"/cloud-init/admin/groups/{name}", "127.0.0.1", "PUT", json=body, headers=AUTH
    )
    assert st == 201, out


async def test_unknown_ip_gets_404_problem(ci: Daemon) -> None:
    st, ctype, body = await fetch(ci, "/cloud-init/meta-data", STRANGER)
    assert st == 404 and ctype.startswith("application/problem+json")
    assert STRANGER in json.loads(body)["detail"]


async def test_documents_follow_the_source_ip(ci: Daemon) -> None:
    await put_group(ci, "compute", "#cloud-config\nruncmd: [true]\n")
    await put_group(ci, "gpu", "")  # empty: not in the include list
    st, _, md = await fetch(ci, "/cloud-init/meta-data", N1.ip or "")
    assert st == 200
    meta = yaml.safe_load(md)
    assert meta["local-hostname"] == "nid0001" and meta["cluster-name"] == "demo"
    assert meta["instance_data"]["v1"]["local_ipv4"] == N1.ip
    assert set(meta["instance_data"]["v1"]["vendor_data"]["groups"]) == {"compute", "gpu"}
    _, _, vd = await fetch(ci, "/cloud-init/vendor-data", N1.ip or "")
    assert vd.decode() == f"#include\n{ci.config.http_base_url}/cloud-init/compute.yaml\n"
    # An admin write shows up at once (rendered documents are cached per node).
    await put_group(ci, "gpu", "#cloud-config\n")
    _, _, vd = await fetch(ci, "/cloud-init/vendor-data", N1.ip or "")
    assert vd.decode().endswith("/cloud-init/compute.yaml\n" + url(ci, "/cloud-init/gpu.yaml\n"))
    _, _, md2 = await fetch(ci, "/cloud-init/meta-data", N2.ip or "")
    assert yaml.safe_load(md2)["local-hostname"] == "nid0002"
    assert (await fetch(ci, "/cloud-init/user-data", N2.ip or ""))[2] == b"#cloud-config\n"
    assert ci.ctx is not None
    tl = ci.ctx.timeline.get(N1.mac)
    assert tl is not None and tl.stages["cloud-init"].detail == "vendor-data"
    assert tl.stages["cloud-init"].retries == 0 and tl.stages["cloud-init"].end is not None
    await fetch(ci, "/cloud-init/meta-data", N1.ip or "")  # cloud-init ran again: a retry
    assert tl.stages["cloud-init"].retries == 1


async def test_group_file_passes_through_only_to_members(ci: Daemon) -> None:
    jinja = "## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n"
    await put_group(ci, "gpu", jinja)
    st, _, body = await fetch(ci, "/cloud-init/gpu.yaml", N1.ip or "")
    assert st == 200 and body.decode() == jinja
    assert (await fetch(ci, "/cloud-init/gpu.yaml", N2.ip or ""))[0] == 404  # not a member
    assert (await fetch(ci, "/cloud-init/gpu.yaml", STRANGER))[0] == 404
    assert (await fetch(ci, "/cloud-init/gpu.yaml", STRANGER, headers=AUTH))[0] == 200
    # A member's group that is not stored (any more): an empty cloud-config, as OpenCHAMI does.
    st, _, body = await fetch(ci, "/cloud-init/compute.yaml", N1.ip or "")
    assert st == 200 and body == b"#cloud-config\n"
    assert (await fetch(ci, "/cloud-init/compute.yaml", STRANGER, headers=AUTH))[0] == 404


async def test_spoofed_forwarded_for_is_ignored_unless_from_trusted_proxy(ci: Daemon) -> None:
    spoof = {"X-Forwarded-For": N1.ip or ""}
    # A node claiming to be another node: still answered as itself.
    _, _, md = await fetch(ci, "/cloud-init/meta-data", N2.ip or "", headers=spoof)
    assert yaml.safe_load(md)["local-hostname"] == "nid0002"
    # A stranger claiming to be a node: still unknown.
    assert (await fetch(ci, "/cloud-init/meta-data", STRANGER, headers=spoof))[0] == 404
    # The trusted proxy's X-Forwarded-For is honoured (rightmost untrusted hop wins).
    hdr = {"X-Forwarded-For": f"{N2.ip}, {N1.ip}"}
    st, _, md = await fetch(ci, "/cloud-init/meta-data", PROXY, headers=hdr)
    assert st == 200 and yaml.safe_load(md)["local-hostname"] == "nid0001"
    assert (await fetch(ci, "/cloud-init/meta-data", PROXY))[0] == 404  # the proxy is no node


async def test_secure_endpoint(ci: Daemon) -> None:
    assert ci.ctx is not None and ci.ctx.ci_tokens is not None
    await put_group(ci, "compute", "#cloud-config\n", secret=f"#cloud-config\n{SECRET}\n")
    now = [ci.ctx.clock()]
    ci.ctx.clock = lambda: now[0]
    tok = ci.ctx.ci_tokens.issue(N1.mac, now[0])
    bearer = {"Authorization": f"Bearer {tok}"}
    path = "/cloud-init-secure/vendor-data"
    st, _, body = await fetch(ci, path, N1.ip or "", headers=bearer)
    assert st == 200 and SECRET.encode() in body
    st, _, body = await fetch(ci, f"{path}?token={tok}", N1.ip or "")
    assert st == 200 and SECRET.encode() in body
    assert (await fetch(ci, "/cloud-init-secure/meta-data", N1.ip or "", headers=bearer))[0] == 200
    # The secure files a node reads after its seed extend the stage; they are no retry.
    stage = ci.ctx.timeline.get(N1.mac)
    assert stage is not None and stage.stages["cloud-init"].end is not None
    assert stage.stages["cloud-init"].retries == 0

    denied: list[tuple[str, dict[str, str], str]] = [
        ("wrong ip (other node)", bearer, N2.ip or ""),
        ("wrong ip (stranger)", bearer, STRANGER),
        ("no token", {}, N1.ip or ""),
        ("wrong token", {"Authorization": f"Bearer {tok[:-2]}xx"}, N1.ip or ""),
        (
            "other node's token",
            {"Authorization": f"Bearer {ci.ctx.ci_tokens.issue(N2.mac, now[0])}"},
            N1.ip or "",
        ),
        ("spoofed xff", {**bearer, "X-Forwarded-For": N1.ip or ""}, N2.ip or ""),
    ]
    for what, headers, src in denied:
        st, _, body = await fetch(ci, path, src, headers=headers)
        assert st == 403, what
        _assert_nothing_leaked(body, tok)
    # Expired: the injected clock moves past the TTL.
    now[0] += ci.config.cloud_init.secure_token_ttl + 1
    st, _, body = await fetch(ci, path, N1.ip or "", headers=bearer)
    assert st == 403
    _assert_nothing_leaked(body, tok)
    # Replay after phone-home: a fresh token works until the node phones home, then not.
    tok2 = ci.ctx.ci_tokens.issue(N1.mac, now[0])
    b2 = {"Authorization": f"Bearer {tok2}"}
    now[0] += 1
    assert (await fetch(ci, path, N1.ip or "", headers=b2))[0] == 200
    st, _, _ = await fetch(
        ci,
        f"/cloud-init/phone-home/{N1.hostname}",
        N1.ip or "",
        "POST",
        data={"hostname": "nid0001"},
    )
    assert st == 200
    now[0] += 1
    st, _, body = await fetch(ci, path, N1.ip or "", headers=b2)
    assert st == 403
    _assert_nothing_leaked(body, tok2)
    # The next boot's token works again.
    now[0] += 1
    b3 = {"Authorization": f"Bearer {ci.ctx.ci_tokens.issue(N1.mac, now[0])}"}
    assert (await fetch(ci, path, N1.ip or "", headers=b3))[0] == 200
    metrics = (await fetch(ci, "/metrics", "127.0.0.1"))[2].decode()
    assert 'protocol="cloud-init-secure",reason="replayed"' in metrics
    assert 'protocol="cloud-init-secure",reason="expired"' in metrics


def _assert_nothing_leaked(body: bytes, tok: str) -> None:
    text = body.decode()
    doc = json.loads(text)
    assert doc["status"] == 403 and set(doc) == {"type", "title", "status", "detail"}
    for leak in (SECRET, "munge", "nid0001", "compute", tok, "#include", "instance"):
        assert leak not in text


async def test_phone_home_closes_timeline_and_stores_keys(ci: Daemon) -> None:
    assert ci.ctx is not None
    _, _, md = await fetch(ci, "/cloud-init/meta-data", N2.ip or "")
    iid = yaml.safe_load(md)["instance-id"]
    form = {
        "pub_key_rsa": "ssh-rsa AAAArsa root@nid0002",
        "pub_key_ecdsa": "ecdsa-sha2-nistp256 AAAAec root@nid0002",
        "pub_key_ed25519": "ssh-ed25519 AAAAed root@nid0002",
        "instance_id": iid,
        "hostname": "nid0002",
        "fqdn": "nid0002.demo",
    }
    # Posting for another node's id from this address is refused.
    st, _, _ = await fetch(
        ci, f"/cloud-init/phone-home/{N1.hostname}", N2.ip or "", "POST", data=form
    )
    assert st == 403
    st, _, _ = await fetch(ci, f"/cloud-init/phone-home/{iid}", N2.ip or "", "POST", data=form)
    assert st == 200
    tl = ci.ctx.timeline.get(N2.mac)
    assert tl is not None and tl.booted and tl.current_stage == "booted"
    st, _, body = await fetch(ci, f"/cloud-init/admin/phone-home/{N2.mac}", "127.0.0.1")
    keys = json.loads(body)
    assert keys["pub_key_ed25519"] == form["pub_key_ed25519"] and keys["fqdn"] == "nid0002.demo"
    # JSON is accepted too.
    st, _, _ = await fetch(
        ci, f"/cloud-init/phone-home/{iid}", N2.ip or "", "POST", json={"hostname": "x"}
    )
    assert st == 200


async def test_admin_writes_need_token_and_reads_hide_secrets(ci: Daemon) -> None:
    body = {
        "name": "io",
        "file": {"content": "#cloud-config\n", "encoding": "plain"},
        "secret": {"content": SECRET, "encoding": "plain"},
    }
    st, _, _ = await fetch(ci, "/cloud-init/admin/groups", "127.0.0.1", "POST", json=body)
    assert st == 401
    st, _, _ = await fetch(
        ci,
        "/cloud-init/admin/groups",
        "127.0.0.1",
        "POST",
        json=body,
        headers={"Authorization": "Bearer nope"},
    )
    assert st == 403
    st, _, _ = await fetch(
        ci, "/cloud-init/admin/groups", "127.0.0.1", "POST", json=body, headers=AUTH
    )
    assert st == 201
    st, _, _ = await fetch(
        ci, "/cloud-init/admin/groups", "127.0.0.1", "POST", json=body, headers=AUTH
    )
    assert st == 409
    st, _, out = await fetch(
        ci, "/cloud-init/admin/groups", "127.0.0.1", "POST", json={"name": "../x"}, headers=AUTH
    )
    assert st == 422 and b"valid group name" in out
    open_read = (await fetch(ci, "/cloud-init/admin/groups", "127.0.0.1"))[2]
    assert SECRET.encode() not in open_read and json.loads(open_read)["io"]["secret"] == {
        "redacted": True
    }
    authed = json.loads(
        (await fetch(ci, "/cloud-init/admin/groups/io", "127.0.0.1", headers=AUTH))[2]
    )
    assert authed["secret"]["encoding"] == "base64"
    for method, path in [
        ("DELETE", "/cloud-init/admin/groups/io"),
        ("PUT", "/cloud-init/admin/instance-info/x"),
        ("POST", "/cloud-init/admin/cluster-defaults"),
    ]:
        assert (await fetch(ci, path, "127.0.0.1", method, json={}))[0] == 401, path


async def test_trusted_proxies_follow_a_reload(ci: Daemon, cfg_dict: dict[str, Any]) -> None:
    hdr = {"X-Forwarded-For": N1.ip or ""}
    assert (await fetch(ci, "/cloud-init/meta-data", PROXY, headers=hdr))[0] == 200
    cfg_dict["cloud-init"]["trusted_proxies"] = []
    assert ci.config_path is not None
    ci.config_path.write_text(yaml.safe_dump(cfg_dict))
    assert await ci.reload()
    assert (await fetch(ci, "/cloud-init/meta-data", PROXY, headers=hdr))[0] == 404


async def test_bad_input_is_refused_and_counted(ci: Daemon) -> None:
    admin = "/cloud-init/admin/groups"
    st, ctype, body = await fetch(ci, admin, "127.0.0.1", "POST", data=b"{not json", headers=AUTH)
    assert st == 400 and ctype.startswith("application/problem+json")
    st, _, body = await fetch(
        ci, "/cloud-init/admin/cluster-defaults", "127.0.0.1", "POST", json=[1], headers=AUTH
    )
    assert st == 422 and b"expected a JSON object" in body
    big = {"pub_key_rsa": "x" * 20_000}
    st, _, body = await fetch(ci, "/cloud-init/phone-home/nid0001", N1.ip or "", "POST", data=big)
    assert st == 400 and b"pub_key_rsa" in body
    # Garbage X-Forwarded-For from the trusted proxy: answered for the proxy itself (unknown).
    st, _, _ = await fetch(
        ci, "/cloud-init/meta-data", PROXY, headers={"X-Forwarded-For": "not-an-ip"}
    )
    assert st == 404
    for tok in ("", "garbage", "a.b.c", "\u00e9.\u00e9"):
        st, _, _ = await fetch(ci, f"/cloud-init-secure/meta-data?token={tok}", N1.ip or "")
        assert st == 403
    metrics = (await fetch(ci, "/metrics", "127.0.0.1"))[2].decode()
    assert 'protocol="cloud-init-secure",reason="malformed"' in metrics
    assert 'protocol="cloud-init-secure",reason="missing"' in metrics
    # The service is still answering.
    assert (await fetch(ci, "/cloud-init/meta-data", N1.ip or ""))[0] == 200


async def test_impersonation_shows_a_nodes_documents_with_the_token(ci: Daemon) -> None:
    path = f"/cloud-init/admin/impersonation/{N2.xname}/meta-data"
    assert (await fetch(ci, path, "127.0.0.1"))[0] == 401
    st, _, body = await fetch(ci, path, "127.0.0.1", headers=AUTH)
    assert st == 200 and yaml.safe_load(body)["local-hostname"] == "nid0002"
    assert yaml.safe_load(body)["instance_data"]["v1"]["local_ipv4"] == N2.ip
    for id_ in (N2.mac, "nid0002", "2"):
        st, _, vd = await fetch(
            ci, f"/cloud-init/admin/impersonation/{id_}/vendor-data", "127.0.0.1", headers=AUTH
        )
        assert st == 200 and vd.startswith(b"#include"), id_
    st, _, _ = await fetch(
        ci, "/cloud-init/admin/impersonation/nobody/meta-data", "127.0.0.1", headers=AUTH
    )
    assert st == 404
