"""What passes between the daemon and its store writer: jobs, replies, frames.

A job is a module-level function and its arguments, run as `fn(conn, *args)` in
the writer process; it travels pickled (the function by name) in a length-
prefixed frame, and so does the reply. `statements` is the job for plain SQL.
Both sides open the database through `connect`, with the same pragmas.
"""

from __future__ import annotations

import pickle
import socket
import sqlite3
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# How long background writes (nobody awaits them) wait for company: in the daemon
# before they are sent, in the writer before they are committed. An awaited write
# ends both waits.
LINGER = 0.05
# Frames on the writer socket: a 4-byte length, then a pickle.
FRAME = struct.Struct("<I")

# daemon → writer: [(job id, fn, args), ...]; id 0: nobody awaits it. fn None: a barrier.
Job = tuple[int, Callable[..., Any] | None, tuple[Any, ...]]
# writer → daemon: (commits so far, writes so far, [(job id, ok, result or exception)]).
Reply = tuple[int, int, list[tuple[int, bool, Any]]]


class StoreError(Exception):
    """The store could not be opened or written."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the store's pragmas (the writer's and the reader's)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a COMMIT returns only after the WAL is fsynced, so an answer
    # sent after it survives kill -9 and power loss.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def frame(obj: object) -> bytes:
    """One length-prefixed pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(data)) + data


def unframe_into(buf: bytearray, sock: socket.socket) -> list[Any]:
    """Receive once (blocking) and take the complete frames; EOFError if the peer left."""
    data = sock.recv(1 << 20)
    if not data:
        raise EOFError("the writer closed its socket")
    buf += data
    return unframe(buf)


def unframe(buf: bytearray) -> list[Any]:
    """Take every complete frame off the front of buf."""
    out = []
    pos = 0
    while len(buf) - pos >= FRAME.size:
        (n,) = FRAME.unpack_from(buf, pos)
        if len(buf) - pos - FRAME.size < n:
            break
        out.append(pickle.loads(buf[pos + FRAME.size : pos + FRAME.size + n]))
        pos += FRAME.size + n
    del buf[:pos]
    return out


def many(conn: sqlite3.Connection, *stmts: tuple[str, Sequence[Sequence[Any]]]) -> int:
    """A job of statements each run once per row (executemany), in order; the rows changed.

    Rows travel pickled, which costs the daemon far less than JSON for SQLite's
    json_each (floats above all), and the writer steps through them faster too.
    """
    changed = 0
    for sql, rows in stmts:
        changed += max(0, conn.executemany(sql, rows).rowcount)
    return changed


def statements(conn: sqlite3.Connection, *stmts: tuple[str, Sequence[Any]]) -> int:
    """A job of plain SQL: run each (sql, params) in order; the rows they changed."""
    changed = 0
    for sql, params in stmts:
        changed += max(0, conn.execute(sql, params).rowcount)
    return changed
