"""The `cloud-init:` section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CloudInitConfig(BaseModel):
    """cloud-init data service settings."""

    model_config = ConfigDict(extra="forbid")
    cluster_name: str = "cluster"
    # Only these peers may set X-Forwarded-For (CIDRs or addresses).
    trusted_proxies: list[str] = Field(default_factory=list)
    # Lifetime of the per-boot token for /cloud-init-secure/.
    secure_token_ttl: int = Field(default=1800, ge=10)
