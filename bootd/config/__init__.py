"""YAML → typed, validated config; every error names its key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootd.config.cloudinit import CloudInitConfig
from bootd.config.dhcp import DhcpConfig
from bootd.config.http import ApiConfig, HttpConfig
from bootd.config.tftp import TftpConfig
from bootd.yamlio import safe_load


class ConfigError(Exception):
    """Config could not be loaded; `errors` holds one 'key.path: message' line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class LogConfig(BaseModel):
    """Logging: format and level."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(BaseModel):
    """The whole bootd configuration file."""

    model_config = ConfigDict(extra="forbid")
    interface: str | None = None
    address: str = "127.0.0.1"
    state_dir: Path = Path("/var/lib/bootd")
    nodes: Path | None = None
    shutdown_grace: float = Field(default=10.0, ge=0, le=3600)
    log: LogConfig = LogConfig()
    dhcp: DhcpConfig = DhcpConfig()
    tftp: TftpConfig = TftpConfig()
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()
    cloud_init: CloudInitConfig = Field(default_factory=CloudInitConfig, alias="cloud-init")

    @field_validator("address")
    @classmethod
    def _address_is_ipv4(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    @model_validator(mode="after")
    def _router_solicitations_need_an_interface(self) -> Config:
        if self.dhcp.enabled and self.dhcp.answer_router_solicitations and not self.interface:
            raise ValueError(
                "dhcp.answer_router_solicitations needs `interface`: the answers go out on it"
            )
        return self

    @property
    def http_base_url(self) -> str:
        """Base URL that nodes use to reach bootd's HTTP server."""
        return f"http://{self.address}:{self.http.port}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One 'key.path: message' line per pydantic error."""
    lines = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not str(x).startswith("function-"))
        path = _key_path(loc)
        if prefix:
            path = f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config/bootd.example.yaml)"
        lines.append(f"{path}: {msg}")
    return lines


def parse_config(data: Any) -> Config:
    """Validate already-parsed YAML data; raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config file must be a YAML mapping"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_yaml(path: Path) -> Any:
    """Read a YAML file; syntax errors become ConfigError with line and column."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{where}: YAML syntax error: {problem}"]) from None


def load_config(path: Path) -> Config:
    """Load and validate a config file; raises ConfigError."""
    return parse_config(load_yaml(path))
