"""The boot-script core stays sans-I/O: no sockets, event loop, web framework, files or clocks."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "aiohttp",
    "sqlite3",
    "subprocess",
    "time",
    "os",
    "random",
}
FORBIDDEN_CALLS = {"open", "print"}


@pytest.mark.parametrize("module", ["bootd/boot/script.py", "bootd/boot/bootparams.py"])
def test_no_io_in_boot_core(module: str) -> None:
    tree = ast.parse((REPO / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, (
                f"{module}:{node.lineno} calls {node.func.id}"
            )
            continue
        else:
            continue
        bad = FORBIDDEN_MODULES.intersection(names)
        assert not bad, f"{module}:{node.lineno} imports {bad}"
