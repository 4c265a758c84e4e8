"""iPXE boot scripts from boot parameters: pure rendering, no I/O; time and jitter come in."""

from __future__ import annotations

import fnmatch
import math
import posixpath
import urllib.parse
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment

from bootd.boot.bootparams import BootData


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: base·2^n seconds capped at `cap`, jittered, `retries` times."""

    retries: int
    base: float
    cap: float

    def delay(self, attempt: int, jitter: float) -> int:
        """Whole seconds to sleep before attempt+1; jitter ∈ [0, 1) spreads a storm (50–100 %)."""
        raw: float = min(self.cap, self.base * 2.0 ** min(attempt, 30))
        return max(1, math.ceil(raw * (0.5 + jitter / 2)))


@dataclass(frozen=True)
class ScriptRequest:
    """Everything one boot-script answer depends on."""

    base_url: str  # http://<address>:<port> as nodes see bootd
    mac: str | None
    name: str | None
    nid: int | None
    retry: int
    arch: str | None
    data: BootData | None  # None: nothing found, not even Default
    source: str  # which key matched, e.g. 'mac aa:bb:…', for the script comment and JSON
    policy: RetryPolicy
    jitter: float
    ci_token: str | None = None


def image_url(base_url: str, ref: str) -> str:
    """An absolute URL stays as it is; a relative path is served from bootd's own /images/."""
    if "://" in ref:
        return ref
    return f"{base_url}/images/{urllib.parse.quote(ref.lstrip('/'), safe='/~.-_+')}"


def _has(params: list[str], prefix: str) -> bool:
    return any(p.startswith(prefix) for p in params)


def kernel_cmdline(req: ScriptRequest, data: BootData) -> str:
    """The kernel command line: params plus initrd=, BOOTIF=, xname=/nid=, datasource, token."""
    words = data.params.split()
    if data.initrd:
        # iPXE names the image 'initrd'; the EFI stub loads it by that name (as BSS writes it).
        words = ["initrd=initrd", *(w for w in words if not w.startswith("initrd="))]
    if req.mac and not _has(words, "BOOTIF="):
        words.append("BOOTIF=01-" + req.mac.replace(":", "-"))
    if req.name and not _has(words, "xname="):
        words.append(f"xname={req.name}")
    if req.nid is not None and not _has(words, "nid="):
        words.append(f"nid={req.nid}")
    if not _has(words, "ds=") and not _has(words, "ochami_ci_url="):
        # nocloud-net: an http seed must be read in cloud-init's network stage (dsmode net);
        # plain `nocloud` makes Debian 12's cloud-init skip user-data after the local stage.
        words.append(f"ds=nocloud-net;s={req.base_url}/cloud-init/")
    if req.ci_token:
        words.append(f"bootd_ci_token={req.ci_token}")
    return " ".join(words)


def chain_url(req: ScriptRequest, retry: int) -> str:
    """This same boot-script URL with the next retry count."""
    q: dict[str, str] = {}
    if req.mac:
        q["mac"] = req.mac
    elif req.name:
        q["name"] = req.name
    elif req.nid is not None:
        q["nid"] = str(req.nid)
    if req.arch:
        q["arch"] = req.arch
    q["retry"] = str(retry)
    return f"{req.base_url}/boot/v1/bootscript?{urllib.parse.urlencode(q, safe=':')}"


def template_vars(req: ScriptRequest) -> dict[str, Any]:
    """The variables a boot-script template sees (the default one and operators' own)."""
    data = req.data
    if data is None:
        reason = f"no boot parameters for {req.source} and no Default entry"
    elif not data.kernel:
        reason = f"boot parameters for {req.source} have no kernel"
    else:
        reason = ""
    bootable = data is not None and not reason
    return {
        "mac": req.mac,
        "name": req.name,
        "nid": req.nid,
        "arch": req.arch,
        "source": req.source,
        "found": bootable,
        "reason": reason,
        "kernel_url": image_url(req.base_url, data.kernel) if data and data.kernel else "",
        "initrd_url": image_url(req.base_url, data.initrd) if data and data.initrd else "",
        "params": kernel_cmdline(req, data) if data and bootable else "",
        "retry": req.retry,
        "retries": req.policy.retries,
        "exhausted": req.retry >= req.policy.retries,
        "delay": req.policy.delay(req.retry, req.jitter),
        "next_retry": req.retry + 1,
        "chain_url": chain_url(req, req.retry + 1),
        "base_url": req.base_url,
    }


def _retry_tail(v: dict[str, Any], what: str) -> list[str]:
    if v["exhausted"]:
        return [
            f"echo bootd: {what}; giving up after {v['retries']} retries, trying the next boot device",
            "exit 1",
        ]
    return [
        f"echo bootd: {what}; retry {v['next_retry']} of {v['retries']} in {v['delay']} s",
        f"sleep {v['delay']}",
        f"chain --autofree {v['chain_url']} || exit 1",
    ]


def render_default(v: dict[str, Any]) -> str:
    """bootd's own script: kernel/initrd/boot, then bounded backoff and `exit`."""
    lines = ["#!ipxe"]
    if not v["found"]:
        lines += _retry_tail(v, v["reason"])
        return "\n".join(lines) + "\n"
    lines.append(f"# bootd: boot parameters from {v['source']}")
    lines.append(f"kernel --name kernel {v['kernel_url']} {v['params']} || goto boot_retry")
    if v["initrd_url"]:
        lines.append(f"initrd --name initrd {v['initrd_url']} || goto boot_retry")
    lines += ["boot || goto boot_retry", ":boot_retry"]
    lines += _retry_tail(v, "boot failed")
    return "\n".join(lines) + "\n"


def compile_template(text: str) -> Template:
    """An operator template: sandboxed, undefined variables are errors, nothing escaped."""
    env = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    return env.from_string(text)


def render_script(req: ScriptRequest, template: Template | None = None) -> str:
    """The iPXE script for this request (jinja2 errors propagate to the caller)."""
    v = template_vars(req)
    if template is None:
        return render_default(v)
    return template.render(**v)


# Name heuristics when a file is not named by the node's own boot parameters.
_STAGE_GLOBS = (
    ("kernel", ("vmlinuz*", "vmlinux*", "bzimage*", "kernel*", "*.efi")),
    ("initrd", ("initr*", "*initramfs*")),
    ("rootfs", ("rootfs*", "*.squashfs", "*.sqfs", "squashfs*")),
)


def _url_paths(ref: str) -> set[str]:
    if "://" in ref:
        paths = {urllib.parse.urlsplit(ref).path}
    else:  # relative to /images/, or (root=live:/…) a path on bootd itself
        paths = {"/images/" + ref.lstrip("/"), "/" + ref.lstrip("/")}
    return {posixpath.normpath(urllib.parse.unquote(p)) for p in paths}


def stage_for_image(rel: str, data: BootData | None) -> str | None:
    """Which boot stage serving /images/<rel> is: kernel, initrd, rootfs, or None."""
    want = posixpath.normpath("/images/" + rel)
    if data is not None:
        live = [
            w.removeprefix("root=live:") for w in data.params.split() if w.startswith("root=live:")
        ]
        refs = [("kernel", data.kernel), ("initrd", data.initrd), *(("rootfs", w) for w in live)]
        for stage, ref in refs:
            if ref and _url_paths(ref) & {want, want.removeprefix("/images")}:
                return stage
    base = posixpath.basename(rel).lower()
    for stage, globs in _STAGE_GLOBS:
        if any(fnmatch.fnmatch(base, g) for g in globs):
            return stage
    return None
