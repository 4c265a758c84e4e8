"""cloud-init NoCloud documents for one node, in OpenCHAMI's shapes; pure (no I/O)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

from bootd.boot.node import Node

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Group content is operator-written cloud-config; this is far above any real one.
MAX_CONTENT_BYTES = 1024 * 1024

# OpenCHAMI ClusterDefaults keys (JSON spelling, including its `cloud_provider`).
DEFAULTS_KEYS = frozenset(
    {
        "cloud_provider",
        "region",
        "availability-zone",
        "cluster-name",
        "public-keys",
        "base-url",
        "boot-subnet",
        "wg-subnet",
        "short-name",
        "nid-length",
    }
)
# OpenCHAMI OpenCHAMIInstanceInfo keys, plus bootd's `user-data` (the node's own cloud-config).
INFO_KEYS = frozenset(
    {
        "id",
        "instance-id",
        "local-hostname",
        "hostname",
        "cluster-name",
        "region",
        "availability-zone",
        "cloud-provider",
        "instance-type",
        "cloud-init-base-url",
        "public-keys",
        "user-data",
    }
)

_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: object) -> str:
    """Block-style YAML, keys in insertion order (libyaml when available)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


@dataclass(frozen=True)
class GroupData:
    """One group: meta-data for every member, its cloud-config file, and a secret file."""

    name: str
    description: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    content: bytes = b""
    filename: str = ""
    secret: bytes = b""

    @property
    def has_content(self) -> bool:
        """Whether the vendor-data #include list should name this group."""
        return bool(self.content.strip())

    def to_json(self, reveal_secret: bool) -> dict[str, Any]:
        """The OpenCHAMI GroupData shape; the secret only for an authenticated reader."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.meta:
            out["meta-data"] = dict(self.meta)
        out["file"] = _file_json(self.content, self.filename)
        if self.secret:
            out["secret"] = _file_json(self.secret, "") if reveal_secret else {"redacted": True}
        return out


def _file_json(content: bytes, filename: str) -> dict[str, Any]:
    out: dict[str, Any] = {"content": base64.b64encode(content).decode(), "encoding": "base64"}
    if filename:
        out["filename"] = filename
    return out


def check_group_name(name: str) -> str:
    """The name if it can be a group (and a `{group}.yaml` URL); else ValueError."""
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise ValueError(
            f"name: {name!r} is not a valid group name (letters, digits, '_', '.', '-'; ≤64)"
        )
    return name


def _parse_file(obj: object, where: str) -> tuple[bytes, str]:
    """An OpenCHAMI CloudConfigFile: {content, encoding: plain|base64, filename}."""
    if obj is None:
        return b"", ""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with 'content' and 'encoding'")
    unknown = set(obj) - {"content", "encoding", "filename"}
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key")
    content = obj.get("content", "")
    encoding = obj.get("encoding") or "plain"
    filename = obj.get("filename") or ""
    if not isinstance(content, str) or not isinstance(filename, str):
        raise ValueError(f"{where}.content: expected a string")
    if encoding == "plain":
        raw = content.encode()
    elif encoding == "base64":
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}.content: not valid base64") from None
    else:
        raise ValueError(f"{where}.encoding: {encoding!r} is not 'plain' or 'base64'")
    if len(raw) > MAX_CONTENT_BYTES:
        raise ValueError(f"{where}.content: larger than {MAX_CONTENT_BYTES} bytes")
    return raw, filename


def parse_group(obj: object, name: str | None = None) -> GroupData:
    """Validate an admin API GroupData body; `name` from the URL path wins over the body's."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with at least 'name'")
    unknown = set(obj) - {"name", "description", "meta-data", "file", "secret"}
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown key")
    gname = check_group_name(name if name is not None else obj.get("name", ""))
    description = obj.get("description") or ""
    if not isinstance(description, str):
        raise ValueError("description: expected a string")
    meta = obj.get("meta-data") or {}
    if not isinstance(meta, dict):
        raise ValueError("meta-data: expected an object")
    content, filename = _parse_file(obj.get("file"), "file")
    secret, _ = _parse_file(obj.get("secret"), "secret")
    return GroupData(gname, description, meta, content, filename, secret)


def parse_defaults(obj: object) -> dict[str, Any]:
    """Validate an OpenCHAMI ClusterDefaults body."""
    return _parse_keys(obj, DEFAULTS_KEYS, int_keys={"nid-length"})


def parse_instance_info(obj: object, id_: str) -> dict[str, Any]:
    """Validate an OpenCHAMI InstanceInfo body (plus `user-data`); `id` comes from the path."""
    info = _parse_keys(obj, INFO_KEYS, allow_user_data=True)
    info["id"] = id_
    return info


def _parse_keys(
    obj: object,
    allowed: frozenset[str],
    int_keys: frozenset[str] | set[str] = frozenset(),
    allow_user_data: bool = False,
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in allowed:
            raise ValueError(f"{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
        if value is None or value == "":
            continue
        if key == "public-keys":
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise ValueError("public-keys: expected a list of strings")
        elif key in int_keys:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 12:
                raise ValueError(f"{key}: expected an integer 0..12")
        elif key == "user-data" and allow_user_data:
            if not isinstance(value, str | dict):
                raise ValueError("user-data: expected a cloud-config string or object")
        elif not isinstance(value, str):
            raise ValueError(f"{key}: expected a string")
        out[key] = value
    return out


@dataclass(frozen=True)
class NodeSeed:
    """Everything that decides one node's documents."""

    node: Node
    ip: str
    groups: Mapping[str, GroupData]
    defaults: Mapping[str, Any]
    info: Mapping[str, Any]
    cluster_name: str  # config cloud-init.cluster_name, used when defaults name none
    base_url: str  # http://<address>:<port>

    @property
    def instance_id(self) -> str:
        """Operator override, else derived from the MAC: the same on every boot and restart."""
        given = self.info.get("instance-id")
        if given:
            return str(given)
        return "i-" + hashlib.sha256(self.node.mac.encode()).hexdigest()[:12]

    @property
    def local_hostname(self) -> str:
        """Override, inventory hostname, <short-name><nid>, xname, or a MAC-derived name."""
        given = self.info.get("local-hostname")
        if given:
            return str(given)
        if self.node.hostname:
            return self.node.hostname
        short = self.defaults.get("short-name")
        if short and self.node.nid is not None:
            width = int(self.defaults.get("nid-length") or 4)
            return f"{short}{self.node.nid:0{width}d}"
        if self.node.xname:
            return self.node.xname
        return "node-" + self.node.mac.replace(":", "")

    @property
    def ci_base(self) -> str:
        """Where `{group}.yaml` lives: instance override, cluster default, else this server."""
        base = self.info.get("cloud-init-base-url") or self.defaults.get("base-url")
        return str(base).rstrip("/") if base else f"{self.base_url}/cloud-init"

    def member_groups(self) -> list[GroupData]:
        """The node's groups that exist, in inventory order."""
        return [self.groups[g] for g in self.node.groups if g in self.groups]

    def public_keys(self) -> list[str]:
        """Cluster-wide keys, then this node's."""
        keys = [*self.defaults.get("public-keys", []), *self.info.get("public-keys", [])]
        return list(dict.fromkeys(keys))

    def meta_data(self) -> dict[str, Any]:
        """The NoCloud meta-data mapping (OpenCHAMI MetaData shape)."""
        cluster = str(
            self.info.get("cluster-name") or self.defaults.get("cluster-name") or self.cluster_name
        )
        local = self.local_hostname
        keys = self.public_keys()
        groups: dict[str, Any] = {}
        for g in self.member_groups():
            groups[g.name] = {"Description": g.description or "No description Found", **g.meta}
        vendor: dict[str, Any] = {
            "version": "1.0",
            "cloud_init_base_url": self.ci_base,
            "cluster_name": cluster,
            "groups": groups,
        }
        if self.node.nid is not None:
            vendor["nid"] = self.node.nid
        if self.node.xname:
            vendor["location"] = self.node.xname
        v1: dict[str, Any] = {
            "instance_id": self.instance_id,
            "local_hostname": local,
            "hostname": str(self.info.get("hostname") or local),
            "local_ipv4": self.ip,
            "mac": self.node.mac,
        }
        for key, src in (
            (
                "cloud_provider",
                self.info.get("cloud-provider") or self.defaults.get("cloud_provider"),
            ),
            ("region", self.info.get("region") or self.defaults.get("region")),
            (
                "availability_zone",
                self.info.get("availability-zone") or self.defaults.get("availability-zone"),
            ),
            ("instance_type", self.info.get("instance-type")),
        ):
            if src:
                v1[key] = src
        if keys:
            v1["public_keys"] = keys
        v1["vendor_data"] = vendor
        md: dict[str, Any] = {
            "instance-id": self.instance_id,
            "local-hostname": local,
            "hostname": str(self.info.get("hostname") or local),
            "cluster-name": cluster,
        }
        if keys:
            md["public-keys"] = list(keys)  # a copy: a shared list would dump as a YAML alias
        md["instance_data"] = {"v1": v1}
        return md

    def network_config(self) -> dict[str, Any]:
        """Netplan v2: DHCPv4 on the interface with the boot MAC, as the initramfs already did."""
        return {
            "version": 2,
            "ethernets": {
                "boot0": {"match": {"macaddress": self.node.mac}, "dhcp4": True},
            },
        }

    def user_data(self) -> str:
        """The node's own cloud-config, or `#cloud-config` alone."""
        ud = self.info.get("user-data")
        if isinstance(ud, dict):
            return "#cloud-config\n" + dump_yaml(ud)
        if isinstance(ud, str) and ud.strip():
            return ud if ud.endswith("\n") else ud + "\n"
        return "#cloud-config\n"

    def include_urls(self) -> list[str]:
        """`<base>/{group}.yaml` for each of the node's groups that has content."""
        return [f"{self.ci_base}/{g.name}.yaml" for g in self.member_groups() if g.has_content]

    def vendor_data(self) -> str:
        """An `#include` list of the node's non-empty groups (OpenCHAMI vendor-data)."""
        return "#include\n" + "".join(u + "\n" for u in self.include_urls())

    def secure_vendor_data(self) -> bytes:
        """MIME multipart: the public #include list, then each group's secret cloud-config."""
        msg = MIMEMultipart()
        include = MIMEText(self.vendor_data(), "x-include-url")
        include.add_header("Content-Disposition", "attachment", filename="bootd-groups.txt")
        msg.attach(include)
        for g in self.member_groups():
            if g.secret.strip():
                part = MIMEText(g.secret.decode(errors="replace"), "cloud-config")
                part.add_header("Content-Disposition", "attachment", filename=f"{g.name}-secret")
                msg.attach(part)
        return msg.as_bytes()
