"""Server processes as the benches count them: a process and its children, from /proc."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """A process's children now (nginx's workers, bootd's workers and store writer)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids
