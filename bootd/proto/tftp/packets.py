"""TFTP wire codec (RFC 1350, OACK from RFC 2347); one decode error type."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from bootd.proto.errors import DecodeError

# RFC 2347 §2: a request with options must still fit the 512-byte classic limit.
MAX_REQUEST = 512
_HDR = struct.Struct("!HH")


class Opcode(IntEnum):
    """RFC 1350 §5 opcodes, plus OACK (RFC 2347)."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    """RFC 1350 appendix error codes, plus 8 (RFC 2347 option negotiation)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class TftpDecodeError(DecodeError):
    """A datagram is not a well-formed TFTP packet; `reason` is a short metric label."""


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ; option names lower-cased, first occurrence wins."""

    opcode: Opcode
    filename: str
    mode: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    """DATA: block number and payload."""

    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK of a block number."""

    block: int


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR: code and message."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    """OACK: the options the server granted."""

    options: dict[str, str]


Packet = Request | Data | Ack | Error | OptionAck


def _text(raw: bytes, what: str) -> str:
    # RFC 1350 says netascii; accept UTF-8 (a superset of ASCII) and nothing else.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TftpDecodeError("bad_text", f"{what} is not ASCII/UTF-8") from None


def _decode_request(op: Opcode, buf: bytes) -> Request:
    if len(buf) > MAX_REQUEST:
        raise TftpDecodeError("oversized", f"request of {len(buf)} bytes")
    if not buf.endswith(b"\0"):
        raise TftpDecodeError("unterminated", "request does not end with NUL")
    fields = buf[2:-1].split(b"\0")
    if len(fields) < 2:
        raise TftpDecodeError("truncated", "request without a mode")
    filename = _text(fields[0], "filename")
    if not filename:
        raise TftpDecodeError("empty_filename")
    mode = _text(fields[1], "mode").lower()
    rest = fields[2:]
    if len(rest) % 2:
        raise TftpDecodeError("bad_options", "option without a value")
    options: dict[str, str] = {}
    for i in range(0, len(rest), 2):
        name = _text(rest[i], "option name").lower()
        if not name:
            raise TftpDecodeError("bad_options", "empty option name")
        options.setdefault(name, _text(rest[i + 1], "option value"))
    return Request(op, filename, mode, options)


def _decode_oack(buf: bytes) -> OptionAck:
    if len(buf) == 2:
        return OptionAck({})
    if not buf.endswith(b"\0"):
        raise TftpDecodeError("unterminated", "OACK does not end with NUL")
    fields = buf[2:-1].split(b"\0")
    if len(fields) % 2:
        raise TftpDecodeError("bad_options", "option without a value")
    opts: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        opts.setdefault(_text(fields[i], "option name").lower(), _text(fields[i + 1], "value"))
    return OptionAck(opts)


def decode(buf: bytes) -> Packet:
    """Parse one datagram; raises TftpDecodeError and nothing else."""
    if len(buf) < 2:
        raise TftpDecodeError("truncated", f"{len(buf)} bytes")
    raw_op = buf[0] << 8 | buf[1]
    try:
        op = Opcode(raw_op)
    except ValueError:
        raise TftpDecodeError("bad_opcode", str(raw_op)) from None
    if op is Opcode.RRQ or op is Opcode.WRQ:
        return _decode_request(op, buf)
    if op is Opcode.OACK:
        return _decode_oack(buf)
    if len(buf) < 4:
        raise TftpDecodeError("truncated", f"{op.name} of {len(buf)} bytes")
    num = buf[2] << 8 | buf[3]
    if op is Opcode.DATA:
        return Data(num, bytes(buf[4:]))
    if op is Opcode.ACK:
        if len(buf) != 4:
            raise TftpDecodeError("bad_length", f"ACK of {len(buf)} bytes")
        return Ack(num)
    # ERROR: the message should end with NUL; be lenient with clients that omit it.
    msg = bytes(buf[4:]).split(b"\0", 1)[0]
    return Error(num, msg.decode("utf-8", "replace"))


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    """DATA packet; `block` is taken modulo 2**16 (RFC 1350 has no rollover rule)."""
    return _HDR.pack(Opcode.DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    """ACK packet."""
    return _HDR.pack(Opcode.ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    """ERROR packet with a NUL-terminated message."""
    return _HDR.pack(Opcode.ERROR, code) + message.encode("utf-8", "replace") + b"\0"


def _pairs(options: dict[str, str]) -> bytes:
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())


def encode(p: Packet) -> bytes:
    """Serialise any packet."""
    if isinstance(p, Request):
        head = p.filename.encode() + b"\0" + p.mode.encode() + b"\0"
        return struct.pack("!H", p.opcode) + head + _pairs(p.options)
    if isinstance(p, Data):
        return encode_data(p.block, p.payload)
    if isinstance(p, Ack):
        return encode_ack(p.block)
    if isinstance(p, Error):
        return encode_error(p.code, p.message)
    return struct.pack("!H", Opcode.OACK) + _pairs(p.options)
