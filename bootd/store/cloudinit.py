"""cloud-init data in SQLite (groups, defaults, instance info, phone-home) mirrored in memory."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bootd.boot.citoken import TokenIssuer
from bootd.boot.cloudinit import GroupData
from bootd.store.db import Database, Migration, StoreError
from bootd.store.jobs import statements

if TYPE_CHECKING:
    from bootd.context import Context

EXTRAS_KEY = "cloud-init"
TOKEN_KEY_FILE = "cloud-init-token.key"

SCHEMA = (
    Migration(
        "cloudinit",
        1,
        """CREATE TABLE ci_groups (
            name TEXT PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '{}',
            content BLOB NOT NULL DEFAULT x'',
            filename TEXT NOT NULL DEFAULT '',
            secret BLOB NOT NULL DEFAULT x''
        );
        CREATE TABLE ci_cluster_defaults (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            data TEXT NOT NULL
        );
        CREATE TABLE ci_instance_info (
            id TEXT PRIMARY KEY,
            data TEXT NOT NULL
        );
        CREATE TABLE ci_phone_home (
            mac TEXT PRIMARY KEY,
            t REAL NOT NULL,
            data TEXT NOT NULL
        )""",
    ),
)


@dataclass(frozen=True)
class PhoneHome:
    """The last phone-home of one node: when, and what it sent (host keys, names)."""

    mac: str
    t: float
    data: Mapping[str, str]


class CloudInitStore:
    """Write-through store; reads on the hot path come from memory."""

    def __init__(self, db: Database, state_dir: Path) -> None:
        self._db = db
        self._state_dir = Path(state_dir)
        # All four tables are bounded by what operators write (groups, instance
        # info) or by the inventory (phone-home is accepted only from known nodes).
        self._groups: dict[str, GroupData] = {}
        self._defaults: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._phone_home: dict[str, PhoneHome] = {}
        # Bumped on every change; lets the HTTP layer cache rendered documents.
        self.generation = 0
        self.issuer = TokenIssuer(self._load_token_key())

    def _load_token_key(self) -> bytes:
        """The HMAC key under state_dir (created 0600 on first start) so tokens survive restarts."""
        path = self._state_dir / TOKEN_KEY_FILE
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            try:
                self._state_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
                    f.flush()
                    os.fsync(f.fileno())
            except FileExistsError:
                key = path.read_bytes()
            except OSError as exc:
                raise StoreError(f"cannot create the token key {path}: {exc.strerror}") from None
        except OSError as exc:
            raise StoreError(f"cannot read the token key {path}: {exc.strerror}") from None
        if len(key) < 16:
            raise StoreError(f"{path} holds {len(key)} bytes; delete it to make a new key")
        return key

    def load(self) -> None:
        """Fill the in-memory view from SQLite."""
        self._groups = {
            r["name"]: GroupData(
                r["name"],
                r["description"],
                json.loads(r["meta"]),
                bytes(r["content"]),
                r["filename"],
                bytes(r["secret"]),
            )
            for r in self._db.read("SELECT * FROM ci_groups")
        }
        rows = self._db.read("SELECT data FROM ci_cluster_defaults WHERE id = 1")
        self._defaults = json.loads(rows[0]["data"]) if rows else {}
        self._info = {
            r["id"]: json.loads(r["data"]) for r in self._db.read("SELECT * FROM ci_instance_info")
        }
        self._phone_home = {
            r["mac"]: PhoneHome(r["mac"], r["t"], json.loads(r["data"]))
            for r in self._db.read("SELECT * FROM ci_phone_home")
        }
        self.generation += 1

    # -- groups -------------------------------------------------------------

    @property
    def groups(self) -> Mapping[str, GroupData]:
        """Every group by name (read-only view)."""
        return self._groups

    async def put_group(self, g: GroupData, create_only: bool = False) -> bool:
        """Insert or replace a group; with create_only, False if it already exists."""
        verb = "INSERT OR IGNORE" if create_only else "INSERT OR REPLACE"
        written = await self._db.write(
            statements,
            (
                f"{verb} INTO ci_groups(name, description, meta, content, filename, secret) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (g.name, g.description, json.dumps(dict(g.meta)), g.content, g.filename, g.secret),
            ),
        )
        if written:
            self._groups[g.name] = g
            self.generation += 1
        return written > 0

    async def delete_group(self, name: str) -> bool:
        """Remove a group; True if it existed."""
        n = await self._db.write(statements, ("DELETE FROM ci_groups WHERE name = ?", (name,)))
        self._groups.pop(name, None)
        self.generation += 1
        return bool(n)

    # -- cluster defaults and instance info ---------------------------------

    @property
    def defaults(self) -> Mapping[str, Any]:
        """OpenCHAMI ClusterDefaults."""
        return self._defaults

    async def set_defaults(self, data: dict[str, Any]) -> None:
        """Replace the cluster defaults."""
        blob = json.dumps(data)
        await self._db.write(
            statements,
            ("INSERT OR REPLACE INTO ci_cluster_defaults(id, data) VALUES (1, ?)", (blob,)),
        )
        self._defaults = data
        self.generation += 1

    def info(self, id_: str) -> Mapping[str, Any] | None:
        """Instance info stored under exactly this id."""
        return self._info.get(id_)

    def info_for(self, *ids: str | None) -> Mapping[str, Any]:
        """The first instance info stored under any of these ids (MAC, xname, hostname)."""
        for i in ids:
            if i and i in self._info:
                return self._info[i]
        return {}

    async def set_info(self, id_: str, data: dict[str, Any]) -> None:
        """Replace one node's instance info."""
        blob = json.dumps(data)
        await self._db.write(
            statements,
            ("INSERT OR REPLACE INTO ci_instance_info(id, data) VALUES (?, ?)", (id_, blob)),
        )
        self._info[id_] = data
        self.generation += 1

    async def delete_info(self, id_: str) -> bool:
        """Remove one node's instance info; True if it existed."""
        n = await self._db.write(statements, ("DELETE FROM ci_instance_info WHERE id = ?", (id_,)))
        self._info.pop(id_, None)
        self.generation += 1
        return bool(n)

    # -- phone-home -----------------------------------------------------------

    def phoned_home(self, mac: str) -> PhoneHome | None:
        """The node's latest phone-home."""
        return self._phone_home.get(mac)

    async def record_phone_home(self, mac: str, now: float, data: dict[str, str]) -> None:
        """Store a phone-home; tokens issued before `now` stop working at once."""
        # Memory first: a replay racing the commit must already be refused.
        self._phone_home[mac] = PhoneHome(mac, now, data)
        blob = json.dumps(data)
        await self._db.write(
            statements,
            (
                "INSERT OR REPLACE INTO ci_phone_home(mac, t, data) VALUES (?, ?, ?)",
                (mac, now, blob),
            ),
        )


def install(ctx: Context) -> TokenIssuer:
    """Open the cloud-init store on ctx (once) and return its token issuer for ctx.ci_tokens."""
    existing = ctx.extras.get(EXTRAS_KEY)
    if isinstance(existing, CloudInitStore):
        return existing.issuer
    store = CloudInitStore(ctx.db, ctx.config.state_dir)
    store.load()
    ctx.extras[EXTRAS_KEY] = store
    return store.issuer


def store_of(ctx: Context) -> CloudInitStore:
    """The store install() put on ctx (installing it if a caller skipped that)."""
    install(ctx)
    store = ctx.extras[EXTRAS_KEY]
    assert isinstance(store, CloudInitStore)
    return store
