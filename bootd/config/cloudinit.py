"""The `cloud-init:` section."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CloudInitConfig(BaseModel):
    """cloud-init data service settings."""

    model_config = ConfigDict(extra="forbid")
    cluster_name: str = "cluster"
    # Only these peers may set X-Forwarded-For (CIDRs or addresses).
    trusted_proxies: list[str] = Field(default_factory=list)
    # Lifetime of the per-boot token for /cloud-init-secure/.
    secure_token_ttl: int = Field(default=1800, ge=10)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for i, entry in enumerate(v):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"[{i}]: {entry!r} is not an address or CIDR") from None
        return v
