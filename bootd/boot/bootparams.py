"""OpenCHAMI BSS `BootParams`: the API payload, validated, and the per-key boot data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bootd.boot.node import normalize_mac

# BSS's catch-all entry: `hosts: [Default]` boots any node without its own entry.
DEFAULT_HOST = "Default"

# Go's encoding of an empty BSS PhoneHome struct; kept so clients see the same JSON.
EMPTY_PHONE_HOME: dict[str, str] = {
    "pub_key_dsa": "",
    "pub_key_rsa": "",
    "pub_key_ecdsa": "",
    "instance_id": "",
    "hostname": "",
    "fqdn": "",
}


class CloudInitData(BaseModel):
    """BSS `cloud-init`: free-form meta-data and user-data, plus phone-home keys."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    meta_data: dict[str, Any] | None = Field(default=None, alias="meta-data")
    user_data: dict[str, Any] | None = Field(default=None, alias="user-data")
    phone_home: dict[str, str] | None = Field(default=None, alias="phone-home")


class BootParams(BaseModel):
    """The BSS payload; unknown keys are ignored as BSS (Go's JSON decoder) does."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    macs: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    nids: list[int] = Field(default_factory=list)
    params: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cloud_init: CloudInitData | None = Field(default=None, alias="cloud-init")

    @field_validator("macs", mode="before")
    @classmethod
    def _normalise_macs(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("expected a list of MAC addresses")
        return [normalize_mac(m) for m in v]

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(h, str) and h.strip() for h in v):
            raise ValueError("expected a list of host names")
        return [h.strip() for h in v]

    @field_validator("nids", mode="before")
    @classmethod
    def _nids(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in v
        ):
            raise ValueError("expected a list of non-negative integers (int32)")
        return v

    def keys(self) -> list[tuple[str, str]]:
        """Every (kind, key) this payload names: ('mac', …), ('host', …), ('nid', …)."""
        return (
            [("mac", m) for m in self.macs]
            + [("host", h) for h in self.hosts]
            + [("nid", str(n)) for n in self.nids]
        )

    def data(self) -> BootData:
        """The boot data this payload carries (missing fields empty)."""
        return BootData(
            kernel=self.kernel or "",
            initrd=self.initrd or "",
            params=self.params or "",
            cloud_init=_cloud_init_json(self.cloud_init),
        )

    def patch(self, old: BootData) -> BootData:
        """`old` with only the fields this payload gave replaced (BSS PATCH)."""
        given = self.model_fields_set
        return BootData(
            kernel=(self.kernel or "") if "kernel" in given else old.kernel,
            initrd=(self.initrd or "") if "initrd" in given else old.initrd,
            params=(self.params or "") if "params" in given else old.params,
            cloud_init=_cloud_init_json(self.cloud_init)
            if "cloud_init" in given
            else old.cloud_init,
        )


def _cloud_init_json(ci: CloudInitData | None) -> str:
    if ci is None:
        return "{}"
    return json.dumps(ci.model_dump(by_alias=True, exclude_none=True), sort_keys=True)


@dataclass(frozen=True)
class BootData:
    """What one key (a MAC, host or nid) boots: kernel, initrd, cmdline, cloud-init."""

    kernel: str = ""
    initrd: str = ""
    params: str = ""
    cloud_init: str = "{}"  # canonical JSON, so equal data compares equal

    def cloud_init_dict(self) -> dict[str, Any]:
        """BSS JSON shape of `cloud-init` (meta-data, user-data, phone-home always present)."""
        ci: dict[str, Any] = json.loads(self.cloud_init)
        return {
            "meta-data": ci.get("meta-data"),
            "user-data": ci.get("user-data"),
            "phone-home": {**EMPTY_PHONE_HOME, **(ci.get("phone-home") or {})},
        }


def bootparams_json(keys: list[tuple[str, str]], data: BootData) -> dict[str, Any]:
    """One BSS BootParams object for these keys sharing the same data (Go omitempty rules)."""
    out: dict[str, Any] = {}
    hosts = [k for kind, k in keys if kind == "host"]
    macs = [k for kind, k in keys if kind == "mac"]
    nids = [int(k) for kind, k in keys if kind == "nid"]
    if hosts:
        out["hosts"] = sorted(hosts)
    if macs:
        out["macs"] = sorted(macs)
    if nids:
        out["nids"] = sorted(nids)
    for name in ("params", "kernel", "initrd"):
        if getattr(data, name):
            out[name] = getattr(data, name)
    out["cloud-init"] = data.cloud_init_dict()
    return out


def parse_bootparams(data: Any) -> BootParams:
    """Validate a decoded payload; ValueError carries 'key.path: message' lines."""
    if not isinstance(data, dict):
        raise ValueError("(top level): expected a JSON object with macs, hosts or nids")
    try:
        return BootParams.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ValueError("; ".join(lines)) from None
