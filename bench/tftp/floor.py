"""`python -m bench.tftp.floor ROOT ADDRESS [PORT]`: the least a Python TFTP server does per block.

Not a server to run: a yardstick for `bench.tftp --servers ...,pyfloor`. It
serves lockstep RRQs with nothing but the system calls a block needs and the
fewest Python opcodes around them: one epoll for every transfer, a TID socket
connected to its client, `recv_into` for the ACK, `send` of a DATA packet built
before the transfer began. No timers, retransmission, path checks, metrics or
timeline. A Python server that does its job cannot spend less CPU per block than
this, so if this loop falls short of dnsmasq at windowsize 1, no Python data path
reaches dnsmasq there: the gap is the interpreter's and the kernel's, not bootd's.
"""

from __future__ import annotations

import select
import socket
import sys
from pathlib import Path
from typing import Any


def packets(data: bytes, blksize: int) -> list[bytes]:
    """Every DATA datagram of a file (a short, maybe empty, block ends it)."""
    count = len(data) // blksize + 1
    return [
        b"\x00\x03" + (i + 1 & 0xFFFF).to_bytes(2, "big") + data[i * blksize : (i + 1) * blksize]
        for i in range(count)
    ]


def serve(root: Path, address: str, port: int = 69) -> None:
    """Answer RRQs on address:port until killed."""
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # As bootd's listening socket: a storm's 640 RRQs fit, none is dropped and resent.
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listen.bind((address, port))
    listen.setblocking(False)
    ep = select.epoll()
    ep.register(listen.fileno(), select.EPOLLIN)
    cache: dict[tuple[str, int], list[bytes]] = {}
    # fd -> [socket, packets, index of the block in flight]
    live: dict[int, list[Any]] = {}
    buf = bytearray(1600)
    lfd = listen.fileno()
    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        data, peer = listen.recvfrom(1600)
                    except BlockingIOError:
                        break
                    parts = data[2:].split(b"\0")
                    opts = dict(zip(parts[2:-1:2], parts[3:-1:2], strict=False))
                    blksize = int(opts.get(b"blksize", b"512"))
                    key = (parts[0].decode(), blksize)
                    if key not in cache:
                        cache[key] = packets((root / key[0]).read_bytes(), blksize)
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((address, 0))
                    s.connect(peer)
                    s.setblocking(False)
                    ep.register(s.fileno(), select.EPOLLIN)
                    if b"blksize" in opts:
                        s.send(b"\x00\x06blksize\x00" + str(blksize).encode() + b"\x00")
                        live[s.fileno()] = [s, cache[key], -1]
                    else:
                        s.send(cache[key][0])
                        live[s.fileno()] = [s, cache[key], 0]
                continue
            t = live[fd]
            s, pkts, i = t
            n = s.recv_into(buf)
            if n != 4 or buf[1] != 4 or (buf[2] << 8 | buf[3]) != (i + 1) & 0xFFFF:
                continue
            i += 1
            if i >= len(pkts):
                ep.unregister(fd)
                s.close()
                del live[fd]
                continue
            t[2] = i
            s.send(pkts[i])


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 69)
