"""Sockets of one transfer: its TID port, the block size its path allows, the fd limit."""

from __future__ import annotations

import resource
import socket

from bootd.proto.tftp.options import MAX_BLKSIZE
from bootd.tftp.session import Address

IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux: the path MTU of a connected socket
# IPv4 (no options), UDP and TFTP DATA headers: a block of path MTU - 32 is not fragmented.
BLOCK_OVERHEAD = 20 + 8 + 4


def path_blksize(connected: socket.socket | None, peer: Address) -> int:
    """The largest block that reaches `peer` unfragmented: its path MTU less the headers.

    The kernel knows the path MTU of a connected socket (the route's MTU, else what
    PMTU discovery learned, else the interface's). In single-port mode a throwaway
    socket is connected to ask: connecting a UDP socket sends nothing.
    """
    try:
        if connected is not None:
            mtu = connected.getsockopt(socket.IPPROTO_IP, IP_MTU)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(peer)
                mtu = probe.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        mtu = 1500  # no route known: assume Ethernet
    return max(8, min(MAX_BLKSIZE, mtu - BLOCK_OVERHEAD))


def tid_socket(local_ip: str) -> socket.socket:
    """RFC 1350 §4: a fresh TID (port) for one transfer, on the address the client asked."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.bind((local_ip, 0))
    except OSError:
        s.close()
        raise
    return s


def tid_pair(local_ip: str, peer: Address) -> tuple[socket.socket, socket.socket]:
    """A fresh TID port with two sockets: one connected to the peer, one for strangers.

    The kernel gives a datagram to the best-matching socket: the connected one for the
    peer, the unconnected one for anyone else (RFC 1350 §4 wants those answered with
    error 5). The port is picked without SO_REUSEADDR, so no earlier socket shares it;
    the flag is on only while the second socket binds, then cleared on both, so no
    later socket (another local user's, say) can bind the port and hijack the transfer.
    """
    stranger = tid_socket(local_ip)
    try:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        stranger.close()
        raise
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(stranger.getsockname())
        sock.connect(peer)
        for s in (stranger, sock):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except OSError:
        sock.close()
        stranger.close()
        raise
    return sock, stranger


def raise_fd_limit(wanted: int) -> None:
    """Each transfer holds sockets; the usual soft limit of 1024 is below a storm."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
