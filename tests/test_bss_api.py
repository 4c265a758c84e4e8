"""The BSS API through aiohttp's test client: every verb, error cases, persistence."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bootd.boot.node import Node
from bootd.config import parse_config
from bootd.daemon import Daemon
from bootd.http.app import build_app
from bootd.yamlio import safe_load
from tests.helpers import REPO

AUTH = {"Authorization": "Bearer test-token"}
SEED: dict[str, Any] = safe_load((REPO / "config" / "bss.yaml").read_text())
URL = "/boot/v1/bootparameters"


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[TestClient[Any, Any]]:
    assert daemon.ctx is not None
    async with TestClient(TestServer(build_app(daemon.ctx))) as c:
        yield c


async def all_params(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    r = await client.get(URL)
    assert r.status == 200
    return list(await r.json())


async def test_post_get_round_trip_and_conflict(client: TestClient[Any, Any]) -> None:
    r = await client.post(URL, json=SEED, headers=AUTH)
    assert r.status == 201, await r.text()
    got = await all_params(client)
    assert len(got) == 1
    assert got[0]["macs"] == ["aa:bb:cc:dd:ee:ff"]  # normalised
    assert {k: got[0][k] for k in ("kernel", "initrd", "params")} == {
        k: SEED[k] for k in ("kernel", "initrd", "params")
    }
    assert set(got[0]["cloud-init"]) == {"meta-data", "user-data", "phone-home"}
    # The same MAC in another spelling is the same entry: refused, nothing changed.
    again = {**SEED, "macs": ["aa-bb-cc-dd-ee-ff"], "kernel": "other"}
    r = await client.post(URL, json=again, headers=AUTH)
    assert r.status == 409
    assert r.content_type == "application/problem+json"
    assert (await r.json())["status"] == 409
    assert (await all_params(client))[0]["kernel"] == SEED["kernel"]


async def test_filters_put_patch_delete(client: TestClient[Any, Any], daemon: Daemon) -> None:
    assert daemon.ctx is not None
    await daemon.ctx.nodes.upsert(
        [Node(mac="52:54:00:00:00:01", hostname="nid0001", nid=1, xname="x1000c0s0b0n0")]
    )
    body = {"hosts": ["x1000c0s0b0n0"], "kernel": "k1", "initrd": "i1", "params": "quiet"}
    assert (await client.post(URL, json=body, headers=AUTH)).status == 201
    assert (await client.post(URL, json={"nids": [7], "kernel": "k7"}, headers=AUTH)).status == 201
    # By MAC, found through the inventory's xname; by nid; by a body.
    r = await client.get(URL, params={"mac": "52-54-00-00-00-01"})
    assert r.status == 200 and (await r.json())[0]["hosts"] == ["x1000c0s0b0n0"]
    r = await client.get(URL, params={"nid": "7"})
    assert (await r.json())[0]["kernel"] == "k7"
    r = await client.request("GET", URL, data=json.dumps({"nids": [7]}))
    assert (await r.json())[0]["nids"] == [7]
    r = await client.get(URL, params={"name": "nobody"})
    assert r.status == 404 and "Hosts" in (await r.json())["detail"]
    # PATCH changes only the fields given.
    r = await client.patch(URL, json={"hosts": ["x1000c0s0b0n0"], "params": "loud"}, headers=AUTH)
    assert r.status == 200
    r = await client.get(URL, params={"name": "x1000c0s0b0n0"})
    entry = (await r.json())[0]
    assert (entry["kernel"], entry["initrd"], entry["params"]) == ("k1", "i1", "loud")
    r = await client.patch(URL, json={"hosts": ["ghost"], "params": "x"}, headers=AUTH)
    assert r.status == 404
    # PUT replaces (missing fields become empty) and creates.
    r = await client.put(URL, json={"hosts": ["x1000c0s0b0n0"], "kernel": "k2"}, headers=AUTH)
    assert r.status == 200
    r = await client.put(URL, json={"macs": ["02:00:00:00:00:09"], "kernel": "k9"}, headers=AUTH)
    assert r.status == 200
    entries = {e["kernel"]: e for e in await all_params(client)}
    assert set(entries) == {"k2", "k7", "k9"} and "params" not in entries["k2"]
    # DELETE by nid (query) and by macs (body); deleting nothing is 404.
    r = await client.delete(URL, params={"nid": "7"}, headers=AUTH)
    assert r.status == 200 and (await r.json())["deleted"] == 1
    r = await client.request("DELETE", URL, json={"macs": ["02:00:00:00:00:09"]}, headers=AUTH)
    assert r.status == 200
    r = await client.request("DELETE", URL, json={"macs": ["02:00:00:00:00:09"]}, headers=AUTH)
    assert r.status == 404
    assert [e["kernel"] for e in await all_params(client)] == ["k2"]


@pytest.mark.parametrize(
    ("method", "body", "headers", "status", "reason"),
    [
        ("POST", b"{not json", AUTH, 400, "bad-json"),
        ("POST", json.dumps({"macs": ["zz:zz"], "kernel": "k"}).encode(), AUTH, 400, "bad-mac"),
        ("PUT", json.dumps({"nids": ["one"]}).encode(), AUTH, 400, "bad-payload"),
        ("PUT", json.dumps({"kernel": "no keys"}).encode(), AUTH, 400, "bad-payload"),
        ("POST", json.dumps(SEED).encode(), {}, 401, None),
        ("PUT", json.dumps(SEED).encode(), {"Authorization": "Bearer wrong"}, 403, None),
        ("DELETE", json.dumps(SEED).encode(), {"Authorization": "Basic dGVzdA=="}, 401, None),
        ("PATCH", json.dumps(SEED).encode(), {"Authorization": "Bearer"}, 401, None),
    ],
)
async def test_bad_writes_refused_and_lose_nothing(
    client: TestClient[Any, Any],
    daemon: Daemon,
    method: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    reason: str | None,
) -> None:
    assert daemon.ctx is not None
    keep = {"macs": ["02:00:00:00:00:01"], "kernel": "keep"}
    assert (await client.post(URL, json=keep, headers=AUTH)).status == 201
    before = await all_params(client)
    r = await client.request(method, URL, data=body, headers=headers)
    assert r.status == status
    doc = await r.json(content_type=None)
    assert doc["status"] == status and doc["title"]
    assert await all_params(client) == before
    if reason:
        assert daemon.ctx.metrics.malformed.labels("http", reason)._value.get() >= 1


async def test_bootscript_route(client: TestClient[Any, Any], daemon: Daemon) -> None:
    assert daemon.ctx is not None
    r = await client.get("/boot/v1/bootscript", params={"mac": "AA:BB:CC:DD:EE:FF"})
    assert r.status == 200 and "no boot parameters" in await r.text()
    await client.post(URL, json={"hosts": ["Default"], "kernel": "def/vmlinuz"}, headers=AUTH)
    text = await (
        await client.get("/boot/v1/bootscript", params={"mac": "aa:bb:cc:dd:ee:ff"})
    ).text()
    assert "/images/def/vmlinuz" in text and "BOOTIF=01-aa-bb-cc-dd-ee-ff" in text
    await client.post(URL, json=SEED, headers=AUTH)
    r = await client.get("/boot/v1/bootscript", params={"mac": "aa:bb:cc:dd:ee:ff", "json": "1"})
    doc = await r.json()
    assert doc["kernel_url"] == SEED["kernel"] and doc["source"] == "mac aa:bb:cc:dd:ee:ff"
    assert doc["script"].startswith("#!ipxe\n")
    tl = daemon.ctx.timeline.get("aa:bb:cc:dd:ee:ff")
    assert tl is not None and tl.stages["bootscript"].attempts == 3
    for q in ({}, {"mac": "nope"}, {"nid": "x"}, {"mac": "aa:bb:cc:dd:ee:ff", "retry": "-1"}):
        r = await client.get("/boot/v1/bootscript", params=q)
        assert r.status == 400, q


async def test_service_hosts_dumpstate(client: TestClient[Any, Any], daemon: Daemon) -> None:
    assert daemon.ctx is not None
    await daemon.ctx.nodes.upsert([Node(mac="52:54:00:00:00:01", nid=1, xname="x1")])
    await client.post(URL, json=SEED, headers=AUTH)
    assert await (await client.get("/boot/v1/service/status")).json() == {"bss-status": "running"}
    assert "bss-version" in await (await client.get("/boot/v1/service/version")).json()
    hosts = await (await client.get("/boot/v1/hosts", params={"nid": "1"})).json()
    assert hosts[0]["ID"] == "x1" and hosts[0]["Mac"] == ["52:54:00:00:00:01"]
    assert (await client.get("/boot/v1/hosts", params={"name": "x9"})).status == 404
    dump = await (await client.get("/boot/v1/dumpstate")).json()
    assert len(dump["Components"]) == 1 and dump["Params"][0]["macs"] == ["aa:bb:cc:dd:ee:ff"]


async def test_params_survive_restart(cfg_dict: dict[str, Any], tmp_path: Path) -> None:
    cfg = parse_config(cfg_dict)
    d = Daemon(cfg)
    await d.start()
    assert d.ctx is not None
    async with TestClient(TestServer(build_app(d.ctx))) as c:
        assert (await c.post(URL, json=SEED, headers=AUTH)).status == 201
    await d.stop()
    d2 = Daemon(cfg)
    await d2.start()
    assert d2.ctx is not None
    try:
        async with TestClient(TestServer(build_app(d2.ctx))) as c:
            r = await c.get(URL, params={"mac": "aa:bb:cc:dd:ee:ff"})
            assert r.status == 200 and (await r.json())[0]["kernel"] == SEED["kernel"]
    finally:
        await d2.stop()


class FakeIssuer:
    """Stands in for the cloud-init feature's token issuer."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def issue(self, mac: str, now: float) -> str:
        self.issued.append(mac)
        return f"tok-{len(self.issued)}"


async def test_bootscript_carries_ci_token(client: TestClient[Any, Any], daemon: Daemon) -> None:
    assert daemon.ctx is not None
    issuer = FakeIssuer()
    daemon.ctx.ci_tokens = issuer
    unknown = await (
        await client.get("/boot/v1/bootscript", params={"mac": "02:00:00:00:00:02"})
    ).text()
    assert "bootd_ci_token" not in unknown and issuer.issued == []
    await client.post(URL, json=SEED, headers=AUTH)
    text = await (
        await client.get("/boot/v1/bootscript", params={"mac": "aa:bb:cc:dd:ee:ff"})
    ).text()
    assert " bootd_ci_token=tok-1 || goto boot_retry" in text
    assert issuer.issued == ["aa:bb:cc:dd:ee:ff"]
