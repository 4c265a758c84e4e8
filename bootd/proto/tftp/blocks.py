"""Block providers: file bytes → numbered DATA payloads, octet or netascii."""

from __future__ import annotations

from typing import Protocol

from bootd.proto.tftp.packets import encode_data


class ByteSource(Protocol):
    """Random-access read-only bytes (a pread'd file, or bytes in memory)."""

    @property
    def size(self) -> int:
        """Length in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; short only at end of data."""
        ...


class MemorySource:
    """A ByteSource over bytes (generated files, tests)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        """Length in bytes."""
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        """Slice of the data."""
        return self._data[offset : offset + length]


# Blocks read at once when filling a shared packet list (64 x 1468 bytes: about 94 KB).
FILL_BLOCKS = 64


class OctetBlocks:
    """Block i (1-based) is the bytes at (i-1)*blksize; a short (maybe empty) block ends it."""

    def __init__(
        self, source: ByteSource, blksize: int, shared: list[bytes | None] | None = None
    ) -> None:
        self._src = source
        self._blksize = blksize
        # RFC 1350 §6: a block shorter than blksize ends the transfer, so an exact
        # multiple needs one more, empty, block.
        self.last: int | None = source.size // blksize + 1
        # DATA packets depend only on (file, blksize, index): transfers of the same file
        # may share one list of them, filled as the first transfer reads.
        self._shared = shared if shared is not None and len(shared) == self.last else None

    def block(self, index: int) -> bytes:
        """Payload of block `index`."""
        return self._src.read((index - 1) * self._blksize, self._blksize)

    def packet(self, index: int) -> bytes:
        """The DATA datagram for block `index`."""
        shared = self._shared
        if shared is None:
            return encode_data(index, self.block(index))
        pkt = shared[index - 1]
        if pkt is None:
            self._fill(shared, index)
            pkt = shared[index - 1]
            assert pkt is not None
        return pkt

    def _fill(self, shared: list[bytes | None], index: int) -> None:
        # One read fills the slots of the next FILL_BLOCKS blocks: the first transfer of a
        # file then costs one pread per FILL_BLOCKS packets, not one per packet.
        bs = self._blksize
        end = min(index + FILL_BLOCKS, len(shared) + 1)
        data = memoryview(self._src.read((index - 1) * bs, (end - index) * bs))
        for i in range(index, end):
            if shared[i - 1] is None:
                off = (i - index) * bs
                shared[i - 1] = encode_data(i, data[off : off + bs])

    def packets(self, first: int, end: int) -> list[bytes]:
        """DATA datagrams of blocks first..end, in order (a window)."""
        shared = self._shared
        if shared is None:
            return [self.packet(i) for i in range(first, end + 1)]
        out = shared[first - 1 : end]
        if None in out:  # only while the first transfer of the file is reading it
            out = [self.packet(i) for i in range(first, end + 1)]
        return out  # type: ignore[return-value]  # no None left

    def release(self, upto: int) -> None:
        """Blocks ≤ upto will not be asked for again (nothing to free here)."""


class NetasciiBlocks:
    """RFC 1350 netascii (LF → CR LF, CR → CR NUL) generated block by block."""

    def __init__(self, source: ByteSource, blksize: int) -> None:
        self._src = source
        self._blksize = blksize
        self.last: int | None = None
        # Where each not-yet-acknowledged block starts: (source offset, byte carried over
        # from an expansion split across blocks). Bounded by the window: release() prunes.
        self._starts: dict[int, tuple[int, bytes]] = {1: (0, b"")}

    def block(self, index: int) -> bytes:
        """Payload of block `index`; blocks must be asked for in order the first time."""
        offset, carry = self._starts[index]
        out = bytearray(carry)
        while len(out) < self._blksize:
            chunk = self._src.read(offset, self._blksize)
            if not chunk:
                break
            for i, b in enumerate(chunk):
                if len(out) >= self._blksize:
                    chunk = chunk[:i]
                    break
                out += b"\r\n" if b == 0x0A else b"\r\0" if b == 0x0D else bytes((b,))
            offset += len(chunk)
        payload, carry = bytes(out[: self._blksize]), bytes(out[self._blksize :])
        self._starts.setdefault(index + 1, (offset, carry))
        if len(payload) < self._blksize:
            self.last = index
        return payload

    def packet(self, index: int) -> bytes:
        """The DATA datagram for block `index`."""
        return encode_data(index, self.block(index))

    def packets(self, first: int, end: int) -> list[bytes]:
        """DATA datagrams of blocks first..end, in order (a window)."""
        return [self.packet(i) for i in range(first, end + 1)]

    def release(self, upto: int) -> None:
        """Forget start points of acknowledged blocks."""
        for k in [k for k in self._starts if k <= upto]:
            del self._starts[k]
