"""The node inventory: SQLite rows mirrored in memory for lookups on the hot path."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from bootd.boot.node import Node
from bootd.store.db import Database, Migration
from bootd.store.jobs import statements

SCHEMA = (
    Migration(
        "nodes",
        1,
        """CREATE TABLE nodes (
            mac TEXT PRIMARY KEY,
            ip TEXT UNIQUE,
            hostname TEXT,
            nid INTEGER UNIQUE,
            xname TEXT,
            groups TEXT NOT NULL DEFAULT '[]'
        )""",
    ),
)


class NodeInventory:
    """Nodes by MAC, IP, name and nid; every change is written through to SQLite."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._by_mac: dict[str, Node] = {}
        self._by_ip: dict[str, Node] = {}
        self._by_name: dict[str, Node] = {}
        self._by_nid: dict[int, Node] = {}

    def load(self) -> None:
        """Fill the in-memory view from the database."""
        self._replace_view(
            Node(
                mac=r["mac"],
                ip=r["ip"],
                hostname=r["hostname"],
                nid=r["nid"],
                xname=r["xname"],
                groups=tuple(json.loads(r["groups"])),
            )
            for r in self._db.read("SELECT * FROM nodes")
        )

    def _replace_view(self, nodes: Iterable[Node]) -> None:
        self._by_mac, self._by_ip, self._by_name, self._by_nid = {}, {}, {}, {}
        for n in nodes:
            self._index(n)

    def _index(self, n: Node) -> None:
        self._by_mac[n.mac] = n
        if n.ip:
            self._by_ip[n.ip] = n
        for name in {n.hostname, n.xname}:
            if name:
                self._by_name[name] = n
        if n.nid is not None:
            self._by_nid[n.nid] = n

    def by_mac(self, mac: str) -> Node | None:
        """Node with this (normalised) MAC."""
        return self._by_mac.get(mac)

    def by_ip(self, ip: str) -> Node | None:
        """Node with this reserved IP."""
        return self._by_ip.get(ip)

    def by_name(self, name: str) -> Node | None:
        """Node with this hostname or xname."""
        return self._by_name.get(name)

    def by_nid(self, nid: int) -> Node | None:
        """Node with this nid."""
        return self._by_nid.get(nid)

    def all(self) -> list[Node]:
        """Every node, sorted by MAC."""
        return sorted(self._by_mac.values(), key=lambda n: n.mac)

    def __len__(self) -> int:
        return len(self._by_mac)

    @staticmethod
    def _conflicts(nodes: list[Node]) -> list[str]:
        errors: list[str] = []
        for attr in ("mac", "ip", "nid"):
            seen: dict[object, int] = {}
            for i, n in enumerate(nodes):
                v = getattr(n, attr)
                if v is None:
                    continue
                if v in seen:
                    errors.append(f"[{i}].{attr}: {v} is also used by entry [{seen[v]}]")
                seen[v] = i
        return errors

    async def upsert(self, nodes: list[Node], replace_all: bool = False) -> None:
        """Add or replace nodes (by MAC); with replace_all the inventory becomes exactly `nodes`."""
        errors = self._conflicts(nodes)
        if errors:
            raise ValueError("\n".join(errors))

        await self._db.write(_upsert_nodes, nodes, replace_all)
        self.load()

    async def delete(self, mac: str) -> bool:
        """Remove one node; True if it existed."""
        removed = await self._db.write(statements, ("DELETE FROM nodes WHERE mac = ?", (mac,)))
        self.load()
        return bool(removed)


def _upsert_nodes(conn: sqlite3.Connection, nodes: list[Node], replace_all: bool) -> None:
    """Writer job: add or replace nodes by MAC (all of them with replace_all)."""
    if replace_all:
        conn.execute("DELETE FROM nodes")
    for n in nodes:
        # A reserved IP or nid moving to another MAC frees it from the old one.
        conn.execute(
            "DELETE FROM nodes WHERE mac != ? AND (ip = ? OR nid = ?)", (n.mac, n.ip, n.nid)
        )
        conn.execute(
            "INSERT INTO nodes(mac, ip, hostname, nid, xname, groups) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(mac) DO UPDATE SET "
            "ip=excluded.ip, hostname=excluded.hostname, nid=excluded.nid, "
            "xname=excluded.xname, groups=excluded.groups",
            (n.mac, n.ip, n.hostname, n.nid, n.xname, json.dumps(list(n.groups))),
        )
