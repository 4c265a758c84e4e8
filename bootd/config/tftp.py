"""The `tftp:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class TftpConfig(BaseModel):
    """TFTP service settings."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    port: int = Field(default=69, ge=1, le=65535)
    root: Path = Path("/usr/lib/ipxe")
    # RFC 2348: largest block we grant. "auto": what the path MTU toward each client
    # allows after the IP, UDP and TFTP headers (1468 on a 1500-byte link, 8968 with
    # jumbo frames), so no block is fragmented. A number: that, whatever the MTU.
    max_blksize: Annotated[int, Field(ge=8, le=65464)] | Literal["auto"] = "auto"
    # RFC 7440: largest window we grant.
    max_windowsize: int = Field(default=64, ge=1, le=65535)
    timeout: float = Field(default=1.0, gt=0, le=255)
    retries: int = Field(default=5, ge=1, le=100)
    # Transfers in flight at once; above it new requests get an error, and it is counted.
    max_transfers: int = Field(default=2048, ge=1)
    # Serve every transfer from the listening port instead of an ephemeral TID.
    single_port: bool = False
