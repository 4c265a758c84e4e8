"""The files both stacks serve: NBPs for TFTP, kernel/initrd/rootfs for HTTP."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MB = 1 << 20

# Real iPXE binaries are used when Debian's ipxe package put them here.
IPXE_DIRS = (Path("/usr/lib/ipxe"), Path("/boot"))


@dataclass(frozen=True)
class Sizes:
    """Image sizes in bytes."""

    kernel: int = 8 * MB
    initrd: int = 16 * MB
    rootfs: int = 32 * MB
    # Dummy NBPs when the real ones are missing (Debian's undionly.kpxe is ~70 KB, ipxe.efi ~1 MB).
    undionly: int = 72 * 1024
    ipxe_efi: int = 1 * MB

    @classmethod
    def parse(cls, spec: str) -> Sizes:
        """'kernel=8M,initrd=16M,rootfs=32M' (K/M/G suffixes; omitted keys keep defaults)."""
        values: dict[str, int] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, _, val = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in cls.__dataclass_fields__:
                raise ValueError(
                    f"unknown size {key!r} (one of {', '.join(cls.__dataclass_fields__)})"
                )
            values[key] = _bytes(val.strip())
        return cls(**values)

    def describe(self) -> str:
        """Human-readable."""
        return ", ".join(f"{k} {_human(getattr(self, k))}" for k in self.__dataclass_fields__)


def _bytes(v: str) -> int:
    mult = {"K": 1024, "M": MB, "G": 1024 * MB}
    if v and v[-1].upper() in mult:
        return int(float(v[:-1]) * mult[v[-1].upper()])
    return int(v)


def _human(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n / 1024:g} KB"


KERNEL, INITRD, ROOTFS = "vmlinuz", "initrd.img", "rootfs.squashfs"
NBP_BIOS, NBP_UEFI = "undionly.kpxe", "ipxe.efi"


def _write(path: Path, size: int) -> None:
    """Incompressible content so nothing on the path can cheat by compressing."""
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        left = size
        block = os.urandom(MB)
        while left:
            n = min(left, MB)
            f.write(block[:n])
            left -= n


def make_images(root: Path, sizes: Sizes) -> Path:
    """root/images/{vmlinuz,initrd.img,rootfs.squashfs}; returns the images dir."""
    d = root / "images"
    d.mkdir(parents=True, exist_ok=True)
    _write(d / KERNEL, sizes.kernel)
    _write(d / INITRD, sizes.initrd)
    _write(d / ROOTFS, sizes.rootfs)
    return d


def make_tftp_root(root: Path, sizes: Sizes) -> tuple[Path, str]:
    """root/tftp with undionly.kpxe and ipxe.efi (real ones if installed); returns (dir, origin)."""
    d = root / "tftp"
    d.mkdir(parents=True, exist_ok=True)
    origin = "dummy"
    for name, size in ((NBP_BIOS, sizes.undionly), (NBP_UEFI, sizes.ipxe_efi)):
        real = next((p / name for p in IPXE_DIRS if (p / name).is_file()), None)
        if real is not None:
            (d / name).write_bytes(real.read_bytes())
            origin = "real"
        else:
            _write(d / name, size)
    return d, origin
