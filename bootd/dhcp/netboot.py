"""The netboot stage: boot file by architecture, iPXE script URL, HTTP boot (RFC 4578)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bootd.dhcp.exchange import Exchange
from bootd.dhcp.stages import ConfigSource
from bootd.proto.dhcp import Opt
from bootd.proto.dhcp.options import ip_bytes

# RFC 4578 §2.1: architecture 16 is x86-64 UEFI HTTP boot.
ARCH_HTTP = 16
# PXE 2.1 §2.4.4: PXE_DISCOVERY_CONTROL (tag 6) bit 3 = boot from the file name
# in this reply, skip boot-server discovery. Then END (255).
PXE_VENDOR_OPTIONS = bytes((6, 1, 8, 255))
# iPXE's encapsulated options (175), no-pxedhcp (176) = 1: this offer already names the
# boot script, so iPXE requests at once instead of waiting 2 s for ProxyDHCP offers
# (DHCP_DISC_PROXY_TIMEOUT_SEC in iPXE's config/dhcp.h) and skips the ProxyDHCP step.
IPXE_NO_PXEDHCP = bytes((176, 1, 1))
# How long a "file exists under tftp.root" answer is reused: the check is on the
# per-packet path, and the boot files change only when an operator installs them.
EXISTS_TTL = 5.0


class BootFiles:
    """Which configured boot files exist under tftp.root (cached briefly)."""

    def __init__(self) -> None:
        # Keyed by (root, name): names come only from dhcp.boot_files, so it stays small.
        self._seen: dict[tuple[Path, str], tuple[float, bool]] = {}

    def exists(self, root: Path, name: str) -> bool:
        """The file is present (and a regular file) under root."""
        now = time.monotonic()
        hit = self._seen.get((root, name))
        if hit is not None and now - hit[0] < EXISTS_TTL:
            return hit[1]
        path = root / name
        ok = path.resolve().is_relative_to(root.resolve()) and os.path.isfile(path)
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[(root, name)] = (now, ok)
        return ok


def bootscript_url(base: str, mac: str) -> str:
    """Where iPXE fetches its per-node script (OpenCHAMI BSS shape)."""
    return f"{base}/boot/v1/bootscript?mac={mac}"


def arch_of(ex: Exchange) -> int | None:
    """Option 93, else the 'PXEClient:Arch:NNNNN' field of option 60."""
    arch = ex.request.client_arch
    if arch is not None:
        return arch
    parts = ex.request.vendor_class.split(":")
    if len(parts) >= 3 and parts[1] == "Arch" and parts[2].isdigit():
        return int(parts[2])
    return None


class NetbootStage:
    """Boot file or URL, siaddr/next-server, option 60 echo, PXE vendor options."""

    def __init__(self, config: ConfigSource, files: BootFiles) -> None:
        self._config = config
        self._files = files

    def __call__(self, ex: Exchange) -> None:
        """Add boot information for PXE, HTTP-boot and iPXE clients; others get none."""
        reply = ex.reply
        if reply is None:
            return
        cfg = self._config()
        req = ex.request
        vc = req.vendor_class_id
        if ex.phase == "dhcp-ipxe":  # set by the skeleton from user-class/option 175
            url = bootscript_url(cfg.http_base_url, ex.mac)
            self._set_file(ex, url.encode(), cfg.address)
            ex.note(f"iPXE client (user-class iPXE or option 175): boot script {url}")
            if cfg.dhcp.mode == "proxy":
                # iPXE takes an offer without an address as a ProxyDHCP offer only
                # when it carries option 60 "PXEClient" (iPXE's dhcp_discovery_rx);
                # without the echo it would ignore us and boot what the other server
                # named.
                if vc.startswith(b"PXEClient"):
                    reply.options[Opt.VENDOR_CLASS] = b"PXEClient"
                    reply.options[Opt.VENDOR_SPECIFIC] = PXE_VENDOR_OPTIONS
            else:
                reply.options[Opt.IPXE_ENCAP] = IPXE_NO_PXEDHCP
                ex.note("option 175.176 no-pxedhcp: iPXE need not wait for ProxyDHCP")
            return
        http_client = vc.startswith(b"HTTPClient")
        if not (http_client or vc.startswith(b"PXEClient")):
            ex.note("not a PXE or HTTP-boot client (option 60): no boot file")
            return
        arch = arch_of(ex)
        if arch is None:
            arch = 0
            ex.note("no client architecture (option 93): assuming 0 (BIOS)")
        name = self._group_file(ex, cfg.dhcp.group_boot_files, arch)
        if name is None:
            name = cfg.dhcp.boot_files.get(arch)
        if name is None:
            ex.note(f"architecture {arch} has no entry in dhcp.boot_files: no boot file")
            return
        if not self._files.exists(cfg.tftp.root, name):
            ex.note(f"{name} for architecture {arch} is not under {cfg.tftp.root}: no boot file")
            return
        if http_client or arch == ARCH_HTTP:
            url = f"{cfg.http_base_url}/tftp/{name}"
            reply.options[Opt.VENDOR_CLASS] = b"HTTPClient"
            self._set_file(ex, url.encode(), cfg.address)
            ex.note(f"HTTP boot (arch {arch}): {url}, option 60 HTTPClient echoed")
        else:
            reply.options[Opt.VENDOR_CLASS] = b"PXEClient"
            reply.options[Opt.VENDOR_SPECIFIC] = PXE_VENDOR_OPTIONS
            self._set_file(ex, name.encode(), cfg.address)
            ex.note(f"PXE architecture {arch}: TFTP {name} from {cfg.address}")
        guid = req.options.get(Opt.UUID_GUID)
        if guid is not None:
            # PXE 2.1 §2.2.5: the server echoes the client machine identifier.
            reply.options[Opt.UUID_GUID] = guid

    def _group_file(
        self, ex: Exchange, by_group: dict[str, dict[int, str]], arch: int
    ) -> str | None:
        """dhcp.group_boot_files: the first of the node's groups that names this arch."""
        if not by_group:
            return None
        node = ex.node
        for group in node.groups if node is not None else ():
            name = by_group.get(group, {}).get(arch)
            if name is not None:
                ex.note(f"group {group}: boot file {name} for architecture {arch}")
                return name
        return None

    @staticmethod
    def _set_file(ex: Exchange, file: bytes, address: str) -> None:
        reply = ex.reply
        assert reply is not None
        reply.siaddr = address
        requested = ex.request.options.get(Opt.PARAM_REQUEST, b"")
        if len(file) < 128:
            reply.file = file
        if len(file) >= 128 or Opt.BOOTFILE in requested:
            reply.options[Opt.BOOTFILE] = file
        if Opt.TFTP_SERVER in requested:
            reply.options[Opt.TFTP_SERVER] = address.encode()
        reply.options.setdefault(Opt.SERVER_ID, ip_bytes(address))
