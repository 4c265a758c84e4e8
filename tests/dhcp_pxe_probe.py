"""A PXE client's two proxyDHCP questions, asked from inside the client netns; prints JSON.

usage: python -m tests.dhcp_pxe_probe IFACE SERVER_IP
"""

from __future__ import annotations

import json
import socket
import sys

from bootd.proto.dhcp import DhcpPacket, MessageType, Opt, decode

PXE = {Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016", Opt.CLIENT_ARCH: b"\x00\x07"}
MAC = bytes.fromhex("525400ee0001")


def ask(sock: socket.socket, mt: MessageType, dst: tuple[str, int], **kw: str) -> DhcpPacket:
    """Send one request and wait for the reply with our xid."""
    req = DhcpPacket(
        xid=0x5058 + mt, flags=0x8000, chaddr=MAC + bytes(10),
        options={Opt.MESSAGE_TYPE: bytes([mt]), **PXE}, **kw,
    )  # fmt: skip
    sock.sendto(req.encode(), dst)
    while True:
        reply = decode(sock.recv(4096))
        if reply.xid == req.xid and reply.op == 2:
            return reply


def main() -> None:
    iface, server = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", 68))
    s.settimeout(10)
    out = {}
    offer = ask(s, MessageType.DISCOVER, ("255.255.255.255", 67))
    out["offer"] = {"yiaddr": offer.yiaddr, "file": offer.file.decode(), "vc": offer.vendor_class}
    ack = ask(s, MessageType.REQUEST, (server, 4011), ciaddr="10.77.0.2")
    out["ack"] = {
        "yiaddr": ack.yiaddr,
        "file": ack.file.decode(),
        "type": int(ack.message_type or 0),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
