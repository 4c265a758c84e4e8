"""Boot artifacts for QEMU nodes: Debian cloud kernel, busybox live initramfs, squashfs root.

Built into `.artifacts/` (gitignored) and cached: each artifact is rebuilt only when
the hash of its inputs (package versions, busybox, guest scripts, this builder) changes.
Run `python -m bench.lab.artifacts` to build and print the paths.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.lab.cpio import CpioWriter
from bench.lab.kmod import load_order

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".artifacts"
GUEST = Path(__file__).resolve().parent / "guest"
BUSYBOX = Path("/bin/busybox")
KERNEL_META = "linux-image-cloud-amd64"
IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_FILES = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
# virtio_pci + virtio_net for the NIC (net_failover, failover come as dependencies),
# loop + squashfs for the root image, overlay for the writable RAM layer on top.
MODULES = ["virtio_pci", "virtio_net", "loop", "squashfs", "overlay"]


class ArtifactError(Exception):
    """An artifact could not be built; the message says what to install or fix."""


@dataclass(frozen=True)
class Artifacts:
    """Paths of a built set; `images` holds vmlinuz, initrd.img and rootfs for HTTP."""

    images: Path
    tftp_root: Path
    kernel_version: str

    @property
    def kernel(self) -> Path:
        return self.images / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.images / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.images / "rootfs"


def _run(*argv: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ArtifactError(f"{argv[0]} not found: run `make apt-deps`") from None
    if proc.returncode != 0:
        raise ArtifactError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _digest(*parts: bytes | str | Path) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.read_bytes())
        elif isinstance(p, str):
            h.update(p.encode())
        else:
            h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _apt_download(pkg: str, dest: Path) -> Path:
    """The .deb of `pkg` in dest, fetched with `apt-get download` unless already there."""
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(dest.glob(f"{pkg}_*.deb"))
    if have:
        return have[-1]
    try:
        _run("apt-get", "download", pkg, cwd=dest)
    except ArtifactError:
        _run("apt-get", "update", "-qq")
        _run("apt-get", "download", pkg, cwd=dest)
    have = sorted(dest.glob(f"{pkg}_*.deb"))
    if not have:
        raise ArtifactError(f"apt-get download {pkg} left no .deb in {dest}")
    return have[-1]


def fetch_kernel(work: Path) -> tuple[Path, str]:
    """Unpack Debian's cloud kernel; returns (unpacked tree, kernel version)."""
    debs = work / "debs"
    meta = _apt_download(KERNEL_META, debs)
    depends = _run("dpkg-deb", "-f", str(meta), "Depends").strip()
    image_pkg = next(
        (d.strip().split()[0] for d in depends.split(",") if "linux-image-" in d), None
    )
    if image_pkg is None:
        raise ArtifactError(f"{meta.name} depends on no linux-image package: {depends!r}")
    deb = _apt_download(image_pkg, debs)
    tree = work / "kernel" / deb.stem
    if not (tree / "boot").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        _run("dpkg-deb", "-x", str(deb), str(tree))
    version = image_pkg.removeprefix("linux-image-")
    return tree, version


def build_initramfs(tree: Path, version: str) -> bytes:
    """A gzip cpio: busybox, the kernel modules in load order, /init and the DHCP script."""
    moddir = tree / "lib" / "modules" / version
    modules = load_order(moddir, MODULES)
    w = CpioWriter()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "run", "sys"):
        w.directory(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.copy("bin/busybox", BUSYBOX, 0o755)
    w.symlink("bin/sh", "busybox")
    w.copy("init", GUEST / "initramfs-init.sh", 0o755)
    w.copy("etc/udhcpc.script", GUEST / "udhcpc.sh", 0o755)
    for ko in modules:
        w.copy(f"lib/modules/{ko.name}", ko, 0o644)
    w.file("etc/modules.order", "".join(f"{ko.name}\n" for ko in modules).encode())
    return w.gzip_bytes()


def build_rootfs(dest: Path) -> None:
    """A squashfs root image: busybox and /sbin/init that does the cloud-init round."""
    if shutil.which("mksquashfs") is None:
        raise ArtifactError("mksquashfs not found: apt-get install squashfs-tools")
    with tempfile.TemporaryDirectory(prefix="bootd-rootfs-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root"):
            (root / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        shutil.copy(GUEST / "rootfs-init.sh", root / "sbin" / "init")
        (root / "sbin" / "init").chmod(0o755)
        (root / "etc" / "os-release").write_text('NAME="bootd e2e root"\nID=bootd-e2e\n')
        tmp_img = dest.with_suffix(".tmp")
        tmp_img.unlink(missing_ok=True)
        _run(
            "mksquashfs", str(root), str(tmp_img), "-all-root", "-noappend",
            "-comp", "gzip", "-quiet", "-no-progress", "-mkfs-time", "0", "-all-time", "0",
        )  # fmt: skip
        tmp_img.replace(dest)


def build_tftp_root(dest: Path) -> None:
    """Debian's iPXE binaries (package `ipxe`), copied so the lab owns its TFTP root."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in IPXE_FILES:
        src = IPXE_DIR / name
        if not src.exists():
            if name == "snponly.efi":
                continue
            raise ArtifactError(f"{src} missing: apt-get install ipxe")
        if not (dest / name).exists() or (dest / name).read_bytes() != src.read_bytes():
            shutil.copy(src, dest / name)


def _cached(stamp: Path, key: str, outputs: list[Path]) -> bool:
    try:
        return json.loads(stamp.read_text()).get("key") == key and all(o.exists() for o in outputs)
    except (OSError, ValueError):
        return False


def build_all(work: Path = DEFAULT_DIR, log: bool = False) -> Artifacts:
    """Build (or reuse) every artifact under `work`; returns their paths."""
    work.mkdir(parents=True, exist_ok=True)
    images = work / "images"
    images.mkdir(exist_ok=True)
    stamps = work / "stamps"
    stamps.mkdir(exist_ok=True)
    tree, version = fetch_kernel(work)
    builder = Path(__file__)
    vmlinuz = tree / "boot" / f"vmlinuz-{version}"

    kernel_key = _digest(vmlinuz.name, str(vmlinuz.stat().st_size))
    if not _cached(stamps / "kernel.json", kernel_key, [images / "vmlinuz"]):
        shutil.copy(vmlinuz, images / "vmlinuz")
        (stamps / "kernel.json").write_text(json.dumps({"key": kernel_key}))
        if log:
            print(f"kernel: {vmlinuz.name}")

    initrd_key = _digest(
        version, BUSYBOX, GUEST / "initramfs-init.sh", GUEST / "udhcpc.sh", builder,
        Path(__file__).with_name("cpio.py"), Path(__file__).with_name("kmod.py"),
    )  # fmt: skip
    if not _cached(stamps / "initrd.json", initrd_key, [images / "initrd.img"]):
        tmp = images / "initrd.img.tmp"
        tmp.write_bytes(build_initramfs(tree, version))
        tmp.replace(images / "initrd.img")
        (stamps / "initrd.json").write_text(json.dumps({"key": initrd_key}))
        if log:
            print(f"initrd: {(images / 'initrd.img').stat().st_size} bytes")

    rootfs_key = _digest(BUSYBOX, GUEST / "rootfs-init.sh", builder)
    if not _cached(stamps / "rootfs.json", rootfs_key, [images / "rootfs"]):
        build_rootfs(images / "rootfs")
        (stamps / "rootfs.json").write_text(json.dumps({"key": rootfs_key}))
        if log:
            print(f"rootfs: {(images / 'rootfs').stat().st_size} bytes")

    build_tftp_root(work / "tftp")
    return Artifacts(images=images, tftp_root=work / "tftp", kernel_version=version)


def main() -> None:
    """Build the artifacts and print where they are."""
    a = build_all(log=True)
    print(f"kernel {a.kernel_version}\nimages {a.images}\ntftp   {a.tftp_root}")


if __name__ == "__main__":
    main()
