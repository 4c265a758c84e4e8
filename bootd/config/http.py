"""The `http:` and `api:` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class HttpConfig(BaseModel):
    """HTTP service settings."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    listen: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    images: Path = Path("/srv/bootd/images")
    # Operator's own Jinja2 template for iPXE boot scripts (sandboxed, StrictUndefined).
    script_template: Path | None = None
    # Boot-script retry policy: bounded exponential backoff with jitter, then `exit`.
    script_retries: int = Field(default=6, ge=0, le=100)
    script_retry_base: float = Field(default=2.0, gt=0, le=600)
    script_retry_max: float = Field(default=60.0, gt=0, le=3600)
    # Processes that stream image bytes (sendfile) beside the event loop, as nginx's
    # workers do; 0 streams in the daemon itself. auto: one per CPU beyond the first, ≤ 4.
    sendfile_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"


class ApiConfig(BaseModel):
    """Write access to the API."""

    model_config = ConfigDict(extra="forbid")
    token_file: Path | None = None
