"""The storm harness end to end: virtual nodes boot through a whole stack in a lab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.lab.lab import checkout_prefix
from bench.lab.netns import VethLab
from bench.storm.anchor import AnchorStack
from bench.storm.bootd_stack import BootdStack
from bench.storm.images import Sizes, make_images, make_tftp_root
from bench.storm.node import STAGES
from bench.storm.report import summarize
from bench.storm.runner import StormOptions, run_storm
from bench.storm.stack import StackUnavailable

NODES = 24
SIZES = Sizes(kernel=300_000, initrd=600_000, rootfs=1_200_000, undionly=70_000, ipxe_efi=200_000)


def check_storm(raw: dict[str, Any]) -> None:
    """Every node went through every stage, got one address of its own and every byte."""
    s = summarize(raw)
    failed = {n["mac"]: n["failed"] for n in raw["nodes"] if n["failed"]}
    assert failed == {}
    assert s["booted"] == NODES
    assert s["duplicate_addresses"] == {}
    for n in raw["nodes"]:
        assert set(n["stages"]) == set(STAGES), n["mac"]
        roles = [role for role, _ in n["leases"]]
        assert roles == ["pxe", "ipxe", "linux"], n["mac"]
        assert len({ip for _, ip in n["leases"]}) == 1, f"{n['mac']} changed address: {n['leases']}"
        assert n["bytes"]["kernel"] == SIZES.kernel
        assert n["bytes"]["initrd"] == SIZES.initrd
        assert n["bytes"]["rootfs"] == SIZES.rootfs
        assert n["bytes"]["tftp"] > 0
    assert {n["arch"] for n in raw["nodes"]} == {0, 7}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return make_images(tmp_path, SIZES), make_tftp_root(tmp_path, SIZES)[0]


@pytest.mark.root
def test_storm_against_anchor_stack(tmp_path: Path, files: tuple[Path, Path]) -> None:
    """The client harness itself, proven against dnsmasq + nginx."""
    lab = VethLab(prefix=checkout_prefix("bst2"), client_ip=None)
    work = tmp_path / "anchor"
    work.mkdir()
    opts = StormOptions(nodes=NODES, timeout=120, show_progress=False)
    raw = run_storm(lab, AnchorStack(lab, opts.site, work, *files), opts, tmp_path)
    check_storm(raw)


@pytest.mark.root
def test_storm_against_bootd(tmp_path: Path, files: tuple[Path, Path]) -> None:
    """24 virtual nodes boot through bootd completely, no address handed out twice."""
    lab = VethLab(prefix=checkout_prefix("bst3"), client_ip=None)
    work = tmp_path / "bootd"
    work.mkdir()
    opts = StormOptions(nodes=NODES, timeout=120, show_progress=False)
    try:
        raw = run_storm(lab, BootdStack(lab, opts.site, work, *files), opts, tmp_path)
    except StackUnavailable as exc:
        pytest.skip(str(exc))
    check_storm(raw)
