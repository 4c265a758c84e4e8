"""`python -m bench.dhcp.opcount [N]`: Python opcodes bootd spends per DISCOVER and per REQUEST.

Time per packet on a shared 2-core VM moves by ±30 % from run to run, which
hides any change to the DHCP path smaller than that. The number of Python
opcodes executed (sys.settrace with opcode events) moves by well under 1 % (only
the store's time-based batching varies): it is the measure to judge a
micro-optimisation by, before confirming it end to end with
`python -m bench.dhcp`. N firmware-like PXE clients (options 53, 55, 57, 60, 61,
93, 94, 97) go through DhcpHandler.handle without sockets; REQUESTs are counted
up to the lease write (the commit happens in the store's own process).

`--top K` also lists the K functions with the most opcodes per exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bootd.config import parse_config
from bootd.context import Context
from bootd.dhcp.chain import build_stages
from bootd.dhcp.handler import DhcpHandler
from bootd.metrics import Metrics
from bootd.proto.dhcp import DhcpPacket, MessageType, Opt, decode
from bootd.store import leases as leases_store
from bootd.store import nodes as nodes_store
from bootd.store.db import Database
from bootd.store.leases import LeaseTable
from bootd.timeline import recorder as timeline_store

SERVER = "10.77.0.1"
BURST = 16  # as the service reads them
PARAMS = bytes([1, 3, 6, 12, 15, 28, 42, 43, 51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130])


class OpcodeCounter:
    """Counts opcode events, in total and per (file, function)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_function: collections.Counter[str] = collections.Counter()

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            self.total += 1
            code = frame.f_code
            self.by_function[f"{Path(code.co_filename).name}:{code.co_name}"] += 1
        return self.trace

    def run(self, fn: Any, *args: Any) -> None:
        sys.settrace(self.trace)
        try:
            fn(*args)
        finally:
            sys.settrace(None)


def client_packet(i: int, mt: MessageType, extra: dict[int, bytes] | None = None) -> bytes:
    """What a UEFI PXE ROM sends (chaddr and option 61 unique per client)."""
    mac = bytes([2, 0, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255])
    options = {
        Opt.MESSAGE_TYPE: bytes([mt]),
        Opt.PARAM_REQUEST: PARAMS,
        Opt.MAX_SIZE: b"\x05\xc0",
        Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
        Opt.CLIENT_ID: b"\x01" + mac,
        Opt.CLIENT_ARCH: b"\x00\x07",
        Opt.CLIENT_NDI: b"\x01\x03\x10",
        Opt.UUID_GUID: b"\x00" + bytes(16),
        **(extra or {}),
    }
    return DhcpPacket(xid=i + 1, chaddr=mac + bytes(10), options=options).encode()


def offer_memo(ctx: Context, leases: LeaseTable) -> list[Any]:
    """The service's kept offers, as its DhcpHandler gets them; none in a tree from
    before they existed (`bench.dhcp.instructions --tree`)."""
    try:
        from bootd.dhcp.chain import offer_memo as memo
    except ImportError:
        return []
    return [memo(ctx, leases)]


async def count(n: int, tmp: Path) -> tuple[float, float, int, OpcodeCounter, OpcodeCounter]:
    """Opcodes per DISCOVER and per REQUEST, ACKs sent, and the two counters."""
    (tmp / "tftp").mkdir()
    for name in ("undionly.kpxe", "ipxe.efi"):
        (tmp / "tftp" / name).write_bytes(b"x")
    cfg = {
        "address": SERVER,
        "state_dir": str(tmp),
        "dhcp": {"subnet": "10.77.0.0/16", "pool": "10.77.1.0-10.77.250.250", "router": SERVER,
                 "dns": [SERVER], "domain": "cluster.test"},
        "tftp": {"root": str(tmp / "tftp")},
        "http": {"port": 8080},
    }  # fmt: skip
    db = Database(tmp / "bootd.sqlite3")
    db.open([*leases_store.SCHEMA, *nodes_store.SCHEMA, *timeline_store.SCHEMA])
    try:
        ctx = Context(
            config=parse_config(cfg),
            db=db,
            nodes=nodes_store.NodeInventory(db),
            timeline=timeline_store.TimelineRecorder(db),
            metrics=Metrics(),
            clock=time.time,
        )
        ctx.timeline.load()  # as the daemon does: a MAC it has not seen needs no query
        leases = LeaseTable(db, ctx.clock, lambda ip: None)
        sent: list[bytes] = []
        handler = DhcpHandler(
            ctx,
            leases,
            build_stages(ctx, leases),
            lambda w, d: sent.append(w),
            *offer_memo(ctx, leases),
        )
        handler.auto_flush = False

        def burst(packets: list[bytes]) -> None:
            for p in packets:
                handler.handle(p, ("0.0.0.0", 68), 67)
            handler.flush()

        discover = OpcodeCounter()
        packets = [client_packet(i, MessageType.DISCOVER) for i in range(n)]
        for i in range(0, n, BURST):
            discover.run(burst, packets[i : i + BURST])
        offers = [decode(w) for w in sent]
        sent.clear()
        request = OpcodeCounter()
        packets = [
            client_packet(i, MessageType.REQUEST, {
                Opt.REQUESTED_IP: bytes(map(int, o.yiaddr.split("."))),
                Opt.SERVER_ID: bytes(map(int, SERVER.split("."))),
            })
            for i, o in enumerate(offers)
        ]  # fmt: skip
        for i in range(0, n, BURST):
            request.run(burst, packets[i : i + BURST])
            await asyncio.sleep(0)
        await handler.drain(30)
        return discover.total / n, request.total / n, len(sent), discover, request
    finally:
        db.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=320, help="clients (default 320)")
    ap.add_argument("--top", type=int, default=0, help="list the K busiest functions")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bootd-opcount-") as d:
        per_discover, per_request, acks, discover, request = asyncio.run(count(a.n, Path(d)))
    print(f"opcodes per DISCOVER {per_discover:.0f}, per REQUEST {per_request:.0f} ({acks} ACKs)")
    for label, counter in (("DISCOVER", discover), ("REQUEST", request)):
        for name, ops in counter.by_function.most_common(a.top):
            print(f"  {label:8s} {ops / a.n:7.0f}  {name}")
    return 0 if acks == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
