"""The group-commit store, inventory and timelines."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bootd.boot.node import Node, node_from_dict, normalize_mac
from bootd.store import db as db_module
from bootd.store import writer as writer_module
from bootd.store.db import Database, Migration, StoreError
from bootd.store.jobs import frame
from bootd.store.nodes import SCHEMA as NODES
from bootd.store.nodes import NodeInventory
from bootd.timeline.recorder import SCHEMA as TIMELINE
from bootd.timeline.recorder import TimelineRecorder
from tests.helpers import REPO

T = Migration("t", 1, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT UNIQUE)")
INS = "INSERT INTO t(k, v) VALUES (?, ?)"


def insert_row(conn: sqlite3.Connection, k: int, v: str) -> int:
    """A writer job (module level: jobs are pickled by name)."""
    return int(conn.execute(INS, (k, v)).lastrowid or 0)


def barrier(conn: sqlite3.Connection) -> None:
    """A job that writes nothing: awaiting it means everything before is committed."""


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Database(tmp_path / "s.sqlite3")
    d.open([T, *NODES, *TIMELINE])
    yield d
    d.close()


async def test_many_writes_share_few_commits(db: Database) -> None:
    results = await asyncio.gather(*(db.write(insert_row, i, f"v{i}") for i in range(1000)))
    assert results == list(range(1000))
    assert db.read("SELECT COUNT(*) FROM t")[0][0] == 1000
    assert db.commits < 1000  # batched, not one fsync per write


async def test_poll_takes_the_writers_reply_without_the_loop(db: Database) -> None:
    """A busy loop (the DHCP reader) learns a write is durable by polling between bursts."""
    assert not db.poll()  # nothing sent, nothing to take
    fut = db.submit(insert_row, 7, "polled")
    deadline = time.monotonic() + 10
    while not db.poll():  # the loop never runs here: only poll() can resolve the future
        assert not fut.done()
        assert time.monotonic() < deadline, "the writer never replied"
        time.sleep(0.005)
    assert fut.done() and fut.result() == 7
    assert not db.poll()  # that reply is taken
    assert db.read("SELECT v FROM t WHERE k = 7")[0][0] == "polled"


async def test_background_writes_linger_and_an_awaited_write_ends_the_wait(db: Database) -> None:
    """Timeline-style writes trickling in share commits; a write someone awaits goes at once."""
    before = db.commits
    for i in range(20):
        db.write_nowait(insert_row, i, f"b{i}")
        await asyncio.sleep(0.002)  # an idle writer used to commit each one alone
    await db.write(barrier)  # commits everything queued before it
    assert db.read("SELECT COUNT(*) FROM t")[0][0] == 20
    assert db.commits - before < 20


@pytest.mark.parametrize("busy", [True, False])
def test_awaited_writes_wait_for_company_only_while_writes_stream_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: bool
) -> None:
    """Group commit: right after a commit an awaited batch waits GROUP_WAIT for more
    jobs; after a quiet spell it commits at once."""
    monkeypatch.setattr(writer_module, "GROUP_WAIT", 1.0)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        w = writer_module.Writer(theirs, tmp_path / "w.sqlite3")
        if busy:
            w.last_commit = time.monotonic()
        ours.sendall(frame([(1, insert_row, (1, "a"))]))
        later = threading.Timer(0.2, ours.sendall, (frame([(2, insert_row, (2, "b"))]),))
        later.start()
        t0 = time.monotonic()
        batch = w._take()
        waited = time.monotonic() - t0
        later.join()
        w.conn.close()
    if busy:
        assert [job for job, _, _ in batch] == [1, 2]
        assert 0.2 <= waited < 2.0  # the batch gathers for GROUP_WAIT, then commits
    else:
        assert [job for job, _, _ in batch] == [1]
        assert waited < 0.2


async def test_one_failing_write_does_not_sink_the_batch(db: Database) -> None:
    ok = db.write(insert_row, 1, "a")
    dup = db.write(insert_row, 2, "a")
    ok2 = db.write(insert_row, 3, "c")
    res = await asyncio.gather(ok, dup, ok2, return_exceptions=True)
    assert isinstance(res[1], sqlite3.IntegrityError)
    assert [r[0] for r in db.read("SELECT k FROM t ORDER BY k")] == [1, 3]


def test_migrations_apply_once(tmp_path: Path) -> None:
    for _ in range(2):
        d = Database(tmp_path / "m.sqlite3")
        d.open([T, Migration("t", 2, "ALTER TABLE t ADD COLUMN w TEXT")])
        assert d.read("SELECT version FROM schema_version WHERE component='t'")[0][0] == 2
        d.close()


@pytest.mark.parametrize(
    "raw", ["AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "aabb.ccdd.eeff", "AABBCCDDEEFF"]
)
def test_mac_forms(raw: str) -> None:
    assert normalize_mac(raw) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize("raw", ["", "aa:bb:cc:dd:ee", "zz:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:ff:00"])
def test_bad_macs(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_mac(raw)


def test_node_validation_names_key() -> None:
    with pytest.raises(ValueError, match=r"\[3\]\.ip: "):
        node_from_dict({"mac": "52:54:00:00:00:01", "ip": "300.1.1.1"}, "[3]")
    with pytest.raises(ValueError, match="nid"):
        node_from_dict({"mac": "52:54:00:00:00:01", "nid": -1})


async def test_inventory_persists_and_indexes(db: Database) -> None:
    inv = NodeInventory(db)
    await inv.upsert([Node("52:54:00:00:00:01", "10.0.0.11", "n1", 1, "x1", ("compute",))])
    again = NodeInventory(db)
    again.load()
    n = again.by_ip("10.0.0.11")
    assert n is not None and n.hostname == "n1" and n.groups == ("compute",)
    assert again.by_name("x1") == n and again.by_nid(1) == n
    with pytest.raises(ValueError, match="also used"):
        await inv.upsert(
            [Node("52:54:00:00:00:02", "10.0.0.5"), Node("52:54:00:00:00:03", "10.0.0.5")]
        )


async def test_timeline_survives_reload_and_counts_retries(db: Database) -> None:
    tl = TimelineRecorder(db)
    mac = "52:54:00:00:00:01"
    tl.record(mac, "dhcp", "event", 100.0)
    tl.record(mac, "tftp", "start", 101.0)
    tl.record(mac, "tftp", "start", 103.0)
    tl.record(mac, "tftp", "end", 104.0, nbytes=1000)
    await db.write(barrier)  # everything queued before is committed
    again = TimelineRecorder(db)
    again.load()
    t = again.get(mac)
    assert t is not None
    d = t.to_dict()
    tftp = next(s for s in d["stages"] if s["stage"] == "tftp")  # type: ignore[index]
    assert tftp["retries"] == 1 and tftp["bytes"] == 1000 and tftp["end"] == 4.0
    # After phoning home, the next firmware DHCP starts boot #2.
    tl.record(mac, "booted", "event", 110.0)
    assert tl.record(mac, "dhcp", "event", 200.0).boot_id == 2


def unpicklable_result(conn: sqlite3.Connection) -> object:
    return lambda: None  # a lambda does not pickle


async def test_bad_jobs_fail_alone_with_a_clear_error(db: Database) -> None:
    with pytest.raises(StoreError, match="does not pickle"):
        await db.submit(lambda c: None)  # jobs are pickled by name: a lambda cannot be
    db.write_nowait(lambda c: None)  # nobody awaits it: logged, not raised
    with pytest.raises(StoreError, match="function"):
        await db.write(unpicklable_result)
    assert await db.write(insert_row, 7, "still fine") == 7


async def test_a_dead_writer_fails_its_jobs_and_is_replaced(db: Database) -> None:
    await db.write(insert_row, 1, "before")
    proc = db._proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)  # hold this write in the writer, then kill it
    pending = db.submit(insert_row, 2, "lost")
    await asyncio.sleep(0.05)
    proc.kill()
    with pytest.raises(StoreError, match="exited"):
        await pending
    assert db._proc is not None and db._proc.pid != proc.pid
    assert await db.write(insert_row, 3, "after") == 3
    assert [r[0] for r in db.read("SELECT k FROM t ORDER BY k")] == [1, 3]


def test_jobs_handed_over_before_the_daemon_dies_are_committed(tmp_path: Path) -> None:
    """kill -9 of the daemon: the writer sees EOF, commits what it was sent, and exits."""
    path = tmp_path / "k.sqlite3"
    script = (
        "import os, signal, sys\n"
        "from bootd.store.db import Database\n"
        "from tests.test_store import T, insert_row\n"
        f"db = Database({str(path)!r}); db.open([T])\n"
        "for i in range(500): db.write_nowait(insert_row, i, f'r{i}')\n"
        "print(db._proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    writer = int(r.stdout.split()[0])
    for _ in range(200):
        if not Path(f"/proc/{writer}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{writer}").exists()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 500
    conn.close()


async def test_close_commits_everything_and_stops_the_writer(tmp_path: Path) -> None:
    d = Database(tmp_path / "c.sqlite3")
    d.open([T, *TIMELINE])
    tl = TimelineRecorder(d)
    for i in range(50):
        tl.record(f"52:54:00:00:00:{i:02x}", "dhcp", "event", 100.0 + i)
    proc = d._proc
    d.close()  # no await in between: the rows are still held for coalescing
    assert proc is not None and proc.poll() == 0
    conn = sqlite3.connect(tmp_path / "c.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM boot_events").fetchone()[0] == 50
    conn.close()


def test_a_writer_that_does_not_start_stops_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hello from the writer: open() fails with the reason, the daemon does not start."""
    monkeypatch.setattr(db_module, "WRITER", "bootd.store.no_such_writer")
    d = Database(tmp_path / "s.sqlite3")
    with pytest.raises(StoreError, match="did not start"):
        d.open([T])


async def test_a_write_from_another_thread_goes_through_the_loop(db: Database) -> None:
    await db.write(insert_row, 1, "loop")  # the loop now owns the writer socket
    await asyncio.gather(
        *(asyncio.to_thread(db.write_nowait, insert_row, k, f"t{k}") for k in range(2, 40))
    )
    await db.write(barrier)
    assert db.read("SELECT COUNT(*) FROM t")[0][0] == 39
