"""Collects boot-stage events from every service into per-node timelines, persisted."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from bootd.store.db import Database, Migration
from bootd.store.jobs import many, statements
from bootd.timeline.model import NodeTimeline

SCHEMA = (
    Migration(
        "timeline",
        1,
        """CREATE TABLE boot_events (
            id INTEGER PRIMARY KEY,
            mac TEXT NOT NULL,
            boot_id INTEGER NOT NULL,
            stage TEXT NOT NULL,
            event TEXT NOT NULL,
            t REAL NOT NULL,
            bytes INTEGER NOT NULL DEFAULT 0,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX boot_events_mac ON boot_events(mac, boot_id)""",
    ),
)

_INSERT_ROWS = "INSERT INTO boot_events(mac, boot_id, stage, event, t, bytes, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"

# Timelines kept in memory: one current boot per node; beyond this many nodes the
# least recently active is dropped from memory (its rows stay in SQLite).
MAX_NODES_IN_MEMORY = 100_000
# Boots kept in SQLite per node; older ones are pruned when a new boot starts.
BOOTS_KEPT_PER_NODE = 5

StageObserver = Callable[[NodeTimeline, str, str, float], None]


class TimelineRecorder:
    """record(mac, stage, event, now) from any service; current boot per node in memory."""

    def __init__(self, db: Database, observer: StageObserver | None = None) -> None:
        self._db = db
        self._nodes: OrderedDict[str, NodeTimeline] = OrderedDict()
        self._observer = observer
        # True while every MAC with rows in SQLite is also in memory (after load(),
        # until an eviction): then a MAC not in memory has no boots yet, no query needed.
        self._complete = False
        # Event rows not handed to the writer yet: a loop turn's worth goes as one job,
        # and any other write flushes them first, so rows keep their place in line.
        self._rows: list[tuple[str, int, str, str, float, int, str]] = []
        self._flush_scheduled = False
        db.on_before_write(self._flush_rows)

    def load(self) -> None:
        """Rebuild each node's latest boot from SQLite."""
        rows = self._db.read(
            "SELECT e.* FROM boot_events e JOIN (SELECT mac, MAX(boot_id) AS b FROM boot_events "
            "GROUP BY mac) last ON e.mac = last.mac AND e.boot_id = last.b ORDER BY e.id"
        )
        for r in rows:
            tl = self._nodes.get(r["mac"])
            if tl is None:
                tl = NodeTimeline(r["mac"], r["boot_id"], r["t"], r["t"])
                self._nodes[r["mac"]] = tl
            tl.record(r["stage"], r["event"], r["t"], r["bytes"], r["detail"])
        self._complete = len(self._nodes) <= MAX_NODES_IN_MEMORY

    def record(
        self, mac: str, stage: str, event: str, now: float, nbytes: int = 0, detail: str = ""
    ) -> NodeTimeline:
        """Record one event: 'start', 'end' or 'event' (instantaneous)."""
        tl = self._nodes.get(mac)
        if tl is None or tl.is_new_boot(stage, now):
            if tl is not None:
                boot_id = tl.boot_id + 1
                del self._nodes[mac]  # the new boot goes in last, as the most recent
            else:
                boot_id = 1 if self._complete else self._next_boot_id(mac)
            tl = NodeTimeline(mac, boot_id, now, now)
            self._nodes[mac] = tl
            if boot_id > BOOTS_KEPT_PER_NODE:
                self._prune(mac, boot_id)
            while len(self._nodes) > MAX_NODES_IN_MEMORY:
                self._nodes.popitem(last=False)
                self._complete = False
        else:
            self._nodes.move_to_end(mac)
        tl.record(stage, event, now, nbytes, detail)
        self._rows.append((mac, tl.boot_id, stage, event, now, nbytes, detail))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._flush_rows)
            except RuntimeError:  # no loop (tools, tests): write now
                self._flush_rows()
        if self._observer is not None:
            self._observer(tl, stage, event, now)
        return tl

    def _flush_rows(self) -> None:
        # One job for every row recorded since the last one, so a storm's thousands of
        # events become a few jobs. The rows travel as tuples (pickled, ~0.2 us a row;
        # JSON for SQLite's json_each cost the loop ~1.9 us a row, its floats above all),
        # and the writer process inserts them with executemany.
        self._flush_scheduled = False
        if self._rows:
            rows, self._rows = self._rows, []
            self._db.write_nowait(many, (_INSERT_ROWS, rows))

    def _next_boot_id(self, mac: str) -> int:
        rows = self._db.read("SELECT MAX(boot_id) FROM boot_events WHERE mac = ?", (mac,))
        return int(rows[0][0] or 0) + 1

    def _prune(self, mac: str, boot_id: int) -> None:
        keep_from = boot_id - BOOTS_KEPT_PER_NODE + 1
        self._db.write_nowait(
            statements, ("DELETE FROM boot_events WHERE mac = ? AND boot_id < ?", (mac, keep_from))
        )

    def get(self, mac: str) -> NodeTimeline | None:
        """The node's current (latest) boot."""
        return self._nodes.get(mac)

    def all(self) -> list[NodeTimeline]:
        """Every node's current boot, oldest power-on first."""
        return sorted(self._nodes.values(), key=lambda t: t.power_on)
