"""A DHCP client for many MACs at once; logs every ACK it sees (run inside the client netns).

usage: python -m tests.dhcp_storm_client IFACE COUNT SECONDS ACKFILE
"""

from __future__ import annotations

import select
import socket
import sys
import time

from bootd.proto.dhcp import DhcpDecodeError, DhcpPacket, MessageType, Opt, decode


def main() -> None:
    iface, count, seconds, ackfile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", 68))
    macs = [bytes([0x52, 0x54, 0x01, i >> 16 & 255, i >> 8 & 255, i & 255]) for i in range(count)]
    state: dict[int, tuple[str, str, float]] = {}  # xid → (phase, ip, last sent)
    out = open(ackfile, "a", buffering=1)  # noqa: SIM115
    end = time.monotonic() + seconds
    next_new = 0

    def send(i: int, mt: MessageType, ip: str = "", server: bytes = b"") -> None:
        opts = {Opt.MESSAGE_TYPE: bytes([mt])}
        if ip:
            opts[Opt.REQUESTED_IP] = bytes(map(int, ip.split(".")))
            opts[Opt.SERVER_ID] = server
        p = DhcpPacket(xid=i + 1, flags=0x8000, chaddr=macs[i] + bytes(10), options=opts)
        s.sendto(p.encode(), ("255.255.255.255", 67))

    servers: dict[int, bytes] = {}
    done = 0
    while time.monotonic() < end and done < count:
        now = time.monotonic()
        # New clients at ~2000/s; retransmit anything unanswered for 0.5 s.
        for _ in range(20):
            if next_new < count:
                send(next_new, MessageType.DISCOVER)
                state[next_new + 1] = ("discover", "", now)
                next_new += 1
        for xid, (phase, ip, last) in list(state.items()):
            if phase != "done" and now - last > 0.5:
                if phase == "discover":
                    send(xid - 1, MessageType.DISCOVER)
                else:
                    send(xid - 1, MessageType.REQUEST, ip, servers[xid])
                state[xid] = (phase, ip, now)
        while select.select([s], [], [], 0.01)[0]:
            data = s.recv(4096)
            try:
                p = decode(data)
            except DhcpDecodeError:
                continue
            cur = state.get(p.xid)
            if p.op != 2 or cur is None:
                continue
            if p.message_type is MessageType.OFFER and cur[0] == "discover":
                servers[p.xid] = p.options[Opt.SERVER_ID]
                send(p.xid - 1, MessageType.REQUEST, p.yiaddr, servers[p.xid])
                state[p.xid] = ("request", p.yiaddr, time.monotonic())
            elif p.message_type is MessageType.ACK and cur[0] == "request":
                out.write(f"{p.mac} {p.yiaddr}\n")
                state[p.xid] = ("done", p.yiaddr, 0.0)
                done += 1
            elif p.message_type is MessageType.NAK:
                state[p.xid] = ("discover", "", 0.0)
    out.close()


if __name__ == "__main__":
    main()
