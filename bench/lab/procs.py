"""Server processes as the benches count them: a process and its children, from /proc."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """A process's children now (nginx's workers, bootd's workers and store writer)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """A server process and its children."""
    return [pid, *children(pid)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (a process gone counts 0)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total
