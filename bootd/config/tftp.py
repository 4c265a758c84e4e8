"""The `tftp:` section."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TftpConfig(BaseModel):
    """TFTP service settings."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    port: int = Field(default=69, ge=1, le=65535)
    root: Path = Path("/usr/lib/ipxe")
    # RFC 2348: largest block we grant; 1468 fits a 1500-byte MTU with IP/UDP/TFTP headers.
    max_blksize: int = Field(default=1468, ge=8, le=65464)
    # RFC 7440: largest window we grant.
    max_windowsize: int = Field(default=64, ge=1, le=65535)
    timeout: float = Field(default=1.0, gt=0, le=255)
    retries: int = Field(default=5, ge=1, le=100)
    # Transfers in flight at once; above it new requests get an error, and it is counted.
    max_transfers: int = Field(default=2048, ge=1)
    # Serve every transfer from the listening port instead of an ephemeral TID.
    single_port: bool = False
