"""Map a requested TFTP file name to a path inside tftp.root, or refuse it."""

from __future__ import annotations

import os
from pathlib import Path

from bootd.proto.tftp.packets import ErrorCode


class Refused(Exception):
    """The request cannot be served: TFTP error `code`, `message` for the client, `reason` label."""

    def __init__(self, code: ErrorCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def clean(filename: str) -> str:
    """The requested name as a path relative to the root; Refused(ACCESS_VIOLATION) if it
    cannot be one (checked in the loop, before anything touches the filesystem)."""
    # PXE ROMs written for Windows servers send backslashes; '..\\' must not slip through.
    name = filename.replace("\\", "/")
    if "\0" in name:
        raise Refused(ErrorCode.ACCESS_VIOLATION, "NUL byte in file name", "nul")
    # "/ipxe.efi" means the file at the top of the root; anything still absolute is refused.
    name = name.removeprefix("/")
    if name.startswith("/"):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "absolute path refused", "absolute")
    if ".." in name.split("/"):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "'..' in path refused", "traversal")
    return name


def jailed(root: Path, filename: str) -> tuple[str, str]:
    """(real root, real path of `filename` under it); Refused(ACCESS_VIOLATION) if it escapes."""
    name = clean(filename)
    try:
        real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(real_root, name))
    except OSError as exc:  # a symlink loop, say
        raise Refused(ErrorCode.ACCESS_VIOLATION, exc.strerror or "bad path", "denied") from None
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise Refused(ErrorCode.ACCESS_VIOLATION, "path leads outside the TFTP root", "symlink")
    return real_root, real
