"""BSS boot parameters in SQLite, mirrored in a dict so boot-script lookups never scan."""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable

from bootd.boot.bootparams import DEFAULT_HOST, BootData, BootParams
from bootd.store.db import Database, Migration

SCHEMA = (
    Migration(
        "bss",
        1,
        """CREATE TABLE bss_params (
            kind TEXT NOT NULL CHECK (kind IN ('mac', 'host', 'nid')),
            key TEXT NOT NULL,
            kernel TEXT NOT NULL DEFAULT '',
            initrd TEXT NOT NULL DEFAULT '',
            params TEXT NOT NULL DEFAULT '',
            cloud_init TEXT NOT NULL DEFAULT '{}',
            updated REAL NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
    ),
)

Key = tuple[str, str]


class BssConflict(Exception):
    """POST named keys that already have boot parameters."""


class BssNotFound(Exception):
    """PATCH/DELETE named keys that have none."""


def _row_data(r: sqlite3.Row) -> BootData:
    return BootData(r["kernel"], r["initrd"], r["params"], r["cloud_init"])


def _describe(keys: Iterable[Key]) -> str:
    return ", ".join(f"{kind} {key}" for kind, key in keys)


_UPSERT = (
    "INSERT INTO bss_params(kind, key, kernel, initrd, params, cloud_init, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(kind, key) DO UPDATE SET kernel=excluded.kernel, "
    "initrd=excluded.initrd, params=excluded.params, cloud_init=excluded.cloud_init, "
    "updated=excluded.updated"
)


class BssStore:
    """Boot parameters per MAC, host and nid; writes go through the group-commit writer."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Bounded by what operators store (one entry per node key); no per-peer growth.
        self._index: dict[Key, BootData] = {}

    def load(self) -> None:
        """Fill the in-memory index from SQLite."""
        self._index = {
            (r["kind"], r["key"]): _row_data(r) for r in self._db.read("SELECT * FROM bss_params")
        }

    def __len__(self) -> int:
        return len(self._index)

    def get(self, kind: str, key: str) -> BootData | None:
        """Data stored under exactly this key."""
        return self._index.get((kind, key))

    def resolve(
        self, mac: str | None, names: Iterable[str], nid: int | None
    ) -> tuple[BootData, Key] | None:
        """A node's data: by MAC, then host name/xname, then nid, then `hosts: [Default]`."""
        candidates: list[Key] = []
        if mac:
            candidates.append(("mac", mac))
        candidates.extend(("host", n) for n in names if n)
        if nid is not None:
            candidates.append(("nid", str(nid)))
        candidates.append(("host", DEFAULT_HOST))
        for k in candidates:
            data = self._index.get(k)
            if data is not None:
                return data, k
        return None

    def groups(self) -> list[tuple[list[Key], BootData]]:
        """Keys grouped by identical data, in a stable order (the GET / dumpstate view)."""
        by_data: dict[BootData, list[Key]] = defaultdict(list)
        for k, d in self._index.items():
            by_data[d].append(k)
        return sorted(((sorted(ks), d) for d, ks in by_data.items()), key=lambda g: g[0][0])

    async def add(self, bp: BootParams) -> None:
        """POST: store new keys; refuses (BssConflict) if any of them exists, changing nothing."""
        keys, data, now = bp.keys(), bp.data(), time.time()
        await self._db.write(_add, keys, data, now)
        for k in keys:
            self._index[k] = data

    async def put(self, bp: BootParams) -> None:
        """PUT: replace (or create) the data of every named key."""
        keys, data, now = bp.keys(), bp.data(), time.time()
        await self._db.write(_upsert, keys, data, now)
        for k in keys:
            self._index[k] = data

    async def patch(self, bp: BootParams) -> None:
        """PATCH: change only the given fields; BssNotFound (nothing changed) if a key is unknown."""
        keys, now = bp.keys(), time.time()
        self._index.update(await self._db.write(_patch, bp, keys, now))

    async def delete(self, bp: BootParams) -> int:
        """DELETE the named keys; BssNotFound if none of them existed."""
        keys = bp.keys()
        removed = await self._db.write(_delete, keys)
        for k in keys:
            self._index.pop(k, None)
        return int(removed)


def _add(conn: sqlite3.Connection, keys: list[Key], data: BootData, now: float) -> None:
    """Writer job for POST: new keys only, or BssConflict and nothing written."""
    taken = [
        k
        for k in keys
        if conn.execute("SELECT 1 FROM bss_params WHERE kind = ? AND key = ?", k).fetchone()
    ]
    if taken:
        raise BssConflict(f"boot parameters already exist for {_describe(taken)}")
    _upsert(conn, keys, data, now)


def _patch(
    conn: sqlite3.Connection, bp: BootParams, keys: list[Key], now: float
) -> dict[Key, BootData]:
    """Writer job for PATCH: the given fields of existing keys, or BssNotFound."""
    out: dict[Key, BootData] = {}
    missing: list[Key] = []
    for k in keys:
        row = conn.execute("SELECT * FROM bss_params WHERE kind = ? AND key = ?", k).fetchone()
        if row is None:
            missing.append(k)
        else:
            out[k] = bp.patch(_row_data(row))
    if missing:
        raise BssNotFound(f"no boot parameters for {_describe(missing)}")
    for (kind, key), d in out.items():
        conn.execute(_UPSERT, (kind, key, d.kernel, d.initrd, d.params, d.cloud_init, now))
    return out


def _delete(conn: sqlite3.Connection, keys: list[Key]) -> int:
    """Writer job for DELETE: the rows removed, or BssNotFound if there were none."""
    n = sum(
        conn.execute("DELETE FROM bss_params WHERE kind = ? AND key = ?", k).rowcount for k in keys
    )
    if n == 0:
        raise BssNotFound(f"no boot parameters for {_describe(keys)}")
    return n


def _upsert(conn: sqlite3.Connection, keys: list[Key], data: BootData, now: float) -> None:
    """Writer job for PUT: the same boot data under every key."""
    conn.executemany(
        _UPSERT,
        [
            (kind, key, data.kernel, data.initrd, data.params, data.cloud_init, now)
            for kind, key in keys
        ],
    )
