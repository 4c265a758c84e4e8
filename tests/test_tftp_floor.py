"""bench.tftp.floor, the TFTP bench's bare Python yardstick, serves the bytes asked for."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.tftp.client import fetch
from tests.helpers import REPO, free_port


async def test_the_floor_serves_files_byte_identical(tmp_path: Path) -> None:
    """With an OACK (blksize) and without, concurrently, and a file of whole blocks (which
    ends with an empty one): what the bench measures it against dnsmasq is a real server."""
    files = {"odd.bin": os.urandom(1468 * 5 + 77), "exact.bin": os.urandom(512 * 4)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    port = free_port(socket.SOCK_DGRAM)
    argv = [sys.executable, "-m", "bench.tftp.floor", str(tmp_path), "127.0.0.1", str(port)]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE)
    server = ("127.0.0.1", port)
    try:
        for _ in range(50):  # until it listens
            if (await fetch(server, "exact.bin", timeout=0.2, retries=0)).ok:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        got = await asyncio.gather(
            fetch(server, "odd.bin", blksize=1468, keep=True),
            fetch(server, "odd.bin", keep=True),
            fetch(server, "exact.bin", keep=True),
            fetch(server, "exact.bin", blksize=1024, keep=True),
        )
    finally:
        proc.kill()
        proc.wait()
    assert [r.ok for r in got] == [True] * 4, [r.error for r in got]
    assert got[0].options == {"blksize": "1468"} and got[1].options == {}
    assert [r.data for r in got] == [files["odd.bin"]] * 2 + [files["exact.bin"]] * 2
