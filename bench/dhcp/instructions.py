"""`python -m bench.dhcp.instructions [--tree DIR]`: CPU instructions per DHCP client, under cachegrind.

Time per packet on this shared VM moves by ±10 % between identical runs, and
opcode counts (`bench.dhcp.opcount`) miss what C does: a dict lookup, a hash, a
struct pack cost one opcode each and very different work. cachegrind counts the
instructions the process executes, the same from run to run (PYTHONHASHSEED is
fixed). The harness is opcount's: firmware-like PXE clients go DISCOVER then
REQUEST through DhcpHandler.handle, with the store's writer in its own process (not
counted). Two runs, with few and with many clients, cancel the start-up: the
difference divided by the extra clients is the cost of one client's DISCOVER and
REQUEST, the harness's packet building included. `--tree` measures another
checkout (a `git worktree` of an older commit) with this same harness.
`--shape perfdhcp` sends what perfdhcp sends instead (options 53 and 55 only,
through a relay) where the default is a UEFI PXE ROM's request.

Needs valgrind (`apt-get install valgrind`); each run takes a minute or so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# perfdhcp with -l ADDRESS relays: giaddr is that address (inside the harness's subnet).
RELAY = "10.77.0.2"


def _harness(tree: Path, clients: int, shape: str) -> None:
    """Run opcount's exchange for `clients` clients, without counting opcodes."""
    sys.path.insert(0, str(tree))
    from bench.dhcp import opcount  # this harness, the tree's bootd
    from bootd.proto.dhcp import DhcpPacket, MessageType, Opt

    def perfdhcp_packet(i: int, mt: MessageType, extra: dict[int, bytes] | None = None) -> bytes:
        mac = bytes([2, 0, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        options = {
            Opt.MESSAGE_TYPE: bytes([mt]),
            Opt.PARAM_REQUEST: bytes([1, 28, 2, 3, 15, 6, 12]),
        }
        return DhcpPacket(
            xid=i + 1, chaddr=mac + bytes(10), giaddr=RELAY, options={**options, **(extra or {})}
        ).encode()

    if shape == "perfdhcp":
        opcount.client_packet = perfdhcp_packet

    class Uncounted:
        total = 0
        by_function: dict[str, int] = {}

        def run(self, fn: Callable[..., object], *args: object) -> None:
            fn(*args)

    opcount.OpcodeCounter = Uncounted  # type: ignore[misc, assignment]  # no tracing
    with tempfile.TemporaryDirectory(prefix="bootd-instr-") as d:
        asyncio.run(opcount.count(clients, Path(d)))


def instructions(tree: Path, clients: int, shape: str) -> int:
    """Instructions the whole harness process executed (cachegrind's I refs)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    r = subprocess.run(
        [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
            sys.executable, "-m", "bench.dhcp.instructions", "--harness", str(clients),
            "--tree", str(tree), "--shape", shape,
        ],
        capture_output=True, text=True, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    m = re.search(r"I\s+refs:\s+([\d,]+)", r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"bench.dhcp.instructions: cachegrind failed:\n{r.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout to measure (default: this)")
    ap.add_argument("--few", type=int, default=100, help="clients in the first run")
    ap.add_argument("--many", type=int, default=600, help="clients in the second run")
    ap.add_argument("--shape", choices=("pxe", "perfdhcp"), default="pxe", help="client requests")
    ap.add_argument("--harness", type=int, help=argparse.SUPPRESS)  # the measured child
    a = ap.parse_args()
    if a.harness is not None:
        _harness(a.tree.resolve(), a.harness, a.shape)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.dhcp.instructions: needs valgrind (apt-get install valgrind)")
    few, many = instructions(a.tree, a.few, a.shape), instructions(a.tree, a.many, a.shape)
    per_client = (many - few) / (a.many - a.few)
    print(f"{a.tree}: {per_client:,.0f} instructions per {a.shape} client (DISCOVER + REQUEST)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
