"""The sans-I/O rule holds by itself: proto/ and boot/ import no I/O, and layers point down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "bootd"

# Modules that do I/O, talk to the network, read clocks or the database.
IO_MODULES = {
    "asyncio",
    "socket",
    "aiohttp",
    "sqlite3",
    "time",
    "selectors",
    "subprocess",
    "aiofiles",
    "mmap",
    "threading",
}
# What each core layer must not import from bootd itself (higher layers).
HIGHER = {
    "bootd.dhcp",
    "bootd.tftp",
    "bootd.http",
    "bootd.store",
    "bootd.daemon",
    "bootd.cli",
    "bootd.context",
    "bootd.timeline.recorder",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


CORE_FILES = sorted(
    [*PKG.glob("proto/**/*.py"), *PKG.glob("boot/**/*.py"), PKG / "timeline" / "model.py"]
)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_core_is_sans_io(path: Path) -> None:
    mods = imports_of(path)
    io = {m for m in mods if m.split(".")[0] in IO_MODULES}
    assert not io, f"{path.name} imports I/O modules {io}"
    up = {m for m in mods if any(m == h or m.startswith(h + ".") for h in HIGHER)}
    assert not up, f"{path.name} imports higher layers {up}"
    src = path.read_text()
    assert "open(" not in src.replace("reopen(", ""), f"{path.name} opens files"


def test_proto_does_not_import_boot_domain() -> None:
    for path in PKG.glob("proto/**/*.py"):
        mods = imports_of(path)
        assert not {
            m for m in mods if m.startswith("bootd.") and not m.startswith("bootd.proto")
        }, path
