"""Kernel modules without kmod: read each .ko's `depends=` and order the load."""

from __future__ import annotations

import struct
from pathlib import Path


class ModuleError(Exception):
    """A wanted module or one of its dependencies is missing or unreadable."""


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of an ELF64 module's `.modinfo` section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ModuleError("not an ELF64 kernel module")
    (shoff,) = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", ko, shoff + i * shentsize
        )
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[off : off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    raise ModuleError("no .modinfo section")


def index_modules(moddir: Path) -> dict[str, Path]:
    """Module name (dashes as underscores) → its .ko file under lib/modules/<ver>."""
    return {p.name.removesuffix(".ko").replace("-", "_"): p for p in moddir.rglob("*.ko")}


def builtin_modules(moddir: Path) -> set[str]:
    """Names the kernel has built in (modules.builtin), which need no file."""
    path = moddir / "modules.builtin"
    if not path.exists():
        return set()
    return {
        Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
        for line in path.read_text().splitlines()
        if line.strip()
    }


def load_order(moddir: Path, wanted: list[str]) -> list[Path]:
    """The .ko files for `wanted` and their dependencies, each after what it needs."""
    index = index_modules(moddir)
    builtin = builtin_modules(moddir)
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise ModuleError(f"dependency cycle: {' -> '.join((*chain, name))}")
        ko = index.get(name)
        if ko is None:
            raise ModuleError(f"module {name} not found under {moddir} (needed by {chain})")
        deps = modinfo(ko.read_bytes()).get("depends", "")
        for dep in filter(None, deps.split(",")):
            visit(dep, (*chain, name))
        done.add(name)
        order.append(ko)

    for name in wanted:
        visit(name, ())
    return order
