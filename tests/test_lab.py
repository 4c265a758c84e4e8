"""The lab's parts: cpio writer (read back by GNU cpio), module order, bridge lab, QEMU argv."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.lab.artifacts import MODULES, ArtifactError, build_all, fetch_kernel
from bench.lab.cpio import CpioWriter
from bench.lab.kmod import ModuleError, load_order, modinfo
from bench.lab.lab import BridgeLab
from bench.lab.netns import sh
from bench.lab.qemu import MachineSpec, qemu_argv


def test_cpio_newc_archive_reads_back_with_gnu_cpio(tmp_path: Path) -> None:
    """Debian's cpio lists every entry with its type and extracts the same bytes."""
    w = CpioWriter()
    w.directory("bin")
    w.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("odd-size", b"x" * 5)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(w.raw())
    listing = subprocess.run(
        ["cpio", "-itv", "-F", str(archive)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    kinds = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line[0] for line in listing
    }
    assert kinds == {
        "bin": "d",
        "bin/hello": "-",
        "odd-size": "-",
        "bin/sh": "l",
        "dev/console": "c",
    }
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "-F", str(archive), "bin/*", "odd-size"],
        cwd=out,
        check=True,
    )
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (out / "odd-size").read_bytes() == b"xxxxx"
    assert (out / "bin/sh").readlink() == Path("busybox")


def test_gzip_archive_is_reproducible() -> None:
    """Same entries, same bytes: the artifact hash depends only on the inputs."""

    def make() -> bytes:
        w = CpioWriter()
        w.file("init", b"#!/bin/sh\n", 0o755)
        return w.gzip_bytes()

    assert make() == make()


def test_modinfo_rejects_non_elf() -> None:
    """A file that is not a module gets the one error type, not a crash."""
    with pytest.raises(ModuleError):
        modinfo(b"not an elf at all" * 10)


@pytest.fixture(scope="module")
def kernel_tree() -> tuple[Path, str]:
    """The unpacked Debian cloud kernel (downloaded once into .artifacts/)."""
    try:
        build_all()
        tree, version = fetch_kernel(Path(__file__).resolve().parents[1] / ".artifacts")
    except ArtifactError as exc:
        pytest.skip(f"kernel package unavailable: {exc}")
    return tree, version


def test_module_load_order_puts_dependencies_first(kernel_tree: tuple[Path, str]) -> None:
    """virtio_net after virtio and net_failover; every dependency before its user."""
    tree, version = kernel_tree
    moddir = tree / "lib" / "modules" / version
    order = load_order(moddir, MODULES)
    names = [p.name.removesuffix(".ko") for p in order]
    for name in ("virtio_net", "virtio_pci", "overlay", "squashfs", "loop"):
        assert name in names
    assert names.index("virtio") < names.index("virtio_net")
    assert names.index("net_failover") < names.index("virtio_net")
    assert names.index("failover") < names.index("net_failover")
    for i, ko in enumerate(order):
        deps = [d for d in modinfo(ko.read_bytes()).get("depends", "").split(",") if d]
        assert all(names.index(d) < i for d in deps), (ko.name, deps)
    with pytest.raises(ModuleError, match="not found"):
        load_order(moddir, ["no_such_module"])


def test_qemu_argv_bios_uses_the_ipxe_rom_and_uefi_does_not(tmp_path: Path) -> None:
    """SeaBIOS: -boot n, QEMU's own ROM; OVMF: pflash firmware and an empty romfile."""
    bios = qemu_argv(MachineSpec("b", "bios", "52:54:00:00:00:01", "t0"), "tcg", tmp_path)
    assert bios[bios.index("-boot") + 1] == "n"
    assert not any("romfile" in a or "pxe-virtio" in a for a in bios)
    uefi = qemu_argv(MachineSpec("u", "uefi", "52:54:00:00:00:02", "t1"), "tcg", tmp_path)
    nic = next(a for a in uefi if a.startswith("virtio-net-pci"))
    assert nic.endswith(",romfile=") and "mac=52:54:00:00:00:02" in nic
    drives = [uefi[i + 1] for i, a in enumerate(uefi) if a == "-drive"]
    assert any("OVMF_CODE" in d and "readonly=on" in d for d in drives)
    vars_copy = next(d for d in drives if "OVMF_VARS" in d).split("file=")[1]
    assert Path(vars_copy).parent == tmp_path  # a copy, never Debian's own file


@pytest.mark.root
def test_bridge_lab_is_idempotent_and_removes_leftovers() -> None:
    """up() twice, a leftover process is killed, nothing of the lab ever shows on the host."""
    lab = BridgeLab("blabu", taps=2)
    try:
        lab.up()
        leftover = subprocess.Popen(lab.argv("sleep", "300"))
        lab.up()  # as after a crash: the old namespace and what ran in it go first
        assert leftover.wait(10) is not None
        links = lab.run("ip", "-br", "link").stdout
        for name in (lab.bridge, lab.tap(0), lab.tap(1)):
            assert name in links
        master = lab.run("ip", "-br", "link", "show", "master", lab.bridge).stdout
        assert lab.tap(0) in master and lab.tap(1) in master
        assert f"{lab.address}/24" in lab.run("ip", "-br", "addr").stdout
        assert lab.prefix not in sh("ip", "-br", "link").stdout  # all of it is in the netns
    finally:
        lab.down()
    assert not lab.exists()
