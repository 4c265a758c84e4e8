"""Shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.lab.netns import can_netns
from bootd.config import parse_config
from bootd.daemon import Daemon
from tests.helpers import BootdProcess, base_config, write_config


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `root` skip with the reason when namespaces are unavailable."""
    reason = can_netns()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def cfg_dict(tmp_path: Path) -> dict[str, Any]:
    """A loopback-only config as a dict; tests tweak it before use."""
    return base_config(tmp_path)


@pytest.fixture
async def daemon(cfg_dict: dict[str, Any], tmp_path: Path) -> AsyncIterator[Daemon]:
    """An in-process daemon on loopback, stopped afterwards."""
    path = write_config(tmp_path, cfg_dict)
    d = Daemon(parse_config(cfg_dict), path)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
def bootd_proc(cfg_dict: dict[str, Any], tmp_path: Path) -> Iterator[BootdProcess]:
    """`bootd serve` as a real process on loopback."""
    path = write_config(tmp_path, cfg_dict)
    p = BootdProcess(path, cfg_dict)
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()
