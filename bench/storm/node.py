"""One virtual node's boot: firmware PXE, iPXE, Linux initramfs, cloud-init, phone-home."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import yaml

from bench.storm import ipxescript, tftpclient
from bench.storm.addresses import AddressBook
from bench.storm.dhcpclient import DhcpFailed, DhcpPort, Lease
from bench.storm.dhcpwire import ClientKind
from bench.storm.httpclient import HttpClient, HttpFailed, Response
from bench.storm.ipxescript import BootSpec, ScriptFailed, ScriptHost
from bench.storm.tftpclient import TftpFailed

STAGES = (
    "dhcp", "tftp", "dhcp-ipxe", "bootscript", "kernel", "initrd",
    "dhcp-linux", "rootfs", "cloud-init", "booted",
)  # fmt: skip
T = TypeVar("T")


class StageFailed(Exception):
    """A stage gave up for good; carries the stage name and the reason."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class NodeSpec:
    """A virtual machine: its MAC, firmware arch (0 BIOS, 7 UEFI) and power-on offset."""

    mac: str
    arch: int
    power_on: float


@dataclass
class NodeRecord:
    """What happened to one node, times relative to the storm's t0."""

    mac: str
    arch: int
    power_on: float
    stages: dict[str, list[float]] = field(default_factory=dict)  # stage → [start, end]
    retries: list[tuple[str, str]] = field(default_factory=list)  # (stage, reason)
    leases: list[tuple[str, str]] = field(default_factory=list)  # (role, ip)
    nbytes: dict[str, int] = field(default_factory=dict)
    failed: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Plain JSON shape for the results file."""
        return {
            "mac": self.mac, "arch": self.arch, "power_on": self.power_on,
            "stages": self.stages, "retries": self.retries, "leases": self.leases,
            "bytes": self.nbytes, "failed": self.failed, "notes": self.notes,
        }  # fmt: skip


@dataclass
class Policy:
    """Retry limits of the clients (the firmware reboots; HTTP clients retry)."""

    http_attempts: int = 6
    http_backoff: float = 0.5
    boot_attempts: int = 3
    script_sleep_cap: float = 5.0


@dataclass
class Env:
    """Everything the nodes of one client process share."""

    dhcp: DhcpPort
    addresses: AddressBook
    t0: float
    policy: Policy = field(default_factory=Policy)
    ipxe_http: HttpClient = field(default_factory=lambda: HttpClient("iPXE/1.21.1+"))
    curl_http: HttpClient = field(default_factory=lambda: HttpClient("curl/7.88.1"))
    ci_http: HttpClient = field(default_factory=lambda: HttpClient("Cloud-Init/22.4.2"))
    on_stage: Callable[[str, str], None] = lambda stage, event: None


class NodeBoot:
    """Drives one node through every stage, recording times, retries and failures."""

    def __init__(self, spec: NodeSpec, env: Env) -> None:
        self.spec = spec
        self.env = env
        self.mac_bytes = bytes.fromhex(spec.mac.replace(":", ""))
        self.rec = NodeRecord(spec.mac, spec.arch, spec.power_on)
        self.ip = ""
        self.last_fetch_error = ""
        self.reported: set[str] = set()  # stages already counted in the live progress

    def now(self) -> float:
        return time.time() - self.env.t0

    def start(self, stage: str) -> None:
        self.rec.stages.setdefault(stage, [self.now(), -1.0])

    def end(self, stage: str, nbytes: int = 0) -> None:
        self.rec.stages.setdefault(stage, [self.now(), -1.0])[1] = self.now()
        if nbytes:
            self.rec.nbytes[stage] = self.rec.nbytes.get(stage, 0) + nbytes
        if stage not in self.reported:
            self.reported.add(stage)
            self.env.on_stage(stage, "end")

    def retry(self, stage: str) -> Callable[[str], None]:
        return lambda reason: self.rec.retries.append((stage, reason))

    async def run(self) -> NodeRecord:
        """The whole boot; never raises (failures land in the record)."""
        delay = self.env.t0 + self.spec.power_on - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stage = "dhcp"
        try:
            for attempt in range(self.env.policy.boot_attempts):
                try:
                    spec = await self.firmware_and_ipxe()
                    break
                except StageFailed as exc:
                    # The machine fails to boot and the firmware tries the network again.
                    if attempt + 1 == self.env.policy.boot_attempts:
                        raise
                    self.rec.retries.append((exc.stage, f"reboot: {exc.reason}"))
                    for s in ("dhcp", "tftp", "dhcp-ipxe", "bootscript", "kernel", "initrd"):
                        self.rec.stages.pop(s, None)
            stage = "dhcp-linux"
            await self.linux(spec)
        except StageFailed as exc:
            self.rec.failed = (exc.stage, exc.reason)
            self.env.on_stage(exc.stage, "failed")
        except Exception as exc:  # a harness bug must show up as a counted failure
            self.rec.failed = (stage, f"client error {type(exc).__name__}: {exc}")
            self.env.on_stage(stage, "failed")
        return self.rec

    async def lease(self, stage: str, role: str) -> Lease:
        self.start(stage)
        try:
            lease = await self.env.dhcp.dora(
                self.mac_bytes, ClientKind(role, self.spec.arch), self.retry(stage)
            )
        except DhcpFailed as exc:
            raise StageFailed(stage, str(exc)) from None
        self.rec.leases.append((role, lease.ip))
        if self.ip and lease.ip != self.ip:
            self.rec.notes.append(f"address changed {self.ip} → {lease.ip} at {stage}")
        self.ip = lease.ip
        await self.env.addresses.ensure(lease.ip, lease.prefixlen)
        self.end(stage)
        return lease

    async def firmware_and_ipxe(self) -> BootSpec:
        """Firmware DORA + TFTP of the NBP, then iPXE's DORA and its script."""
        lease = await self.lease("dhcp", "pxe")
        if not lease.boot_file:
            raise StageFailed("dhcp", "no boot file in the ACK")
        self.start("tftp")
        profile = tftpclient.UEFI if self.spec.arch in (6, 7, 9) else tftpclient.BIOS
        server = (lease.tftp_server, 69)
        try:
            if profile.tsize_probe:
                await tftpclient.probe_tsize(self.ip, server, lease.boot_file, profile)
            n = await tftpclient.fetch(
                self.ip, server, lease.boot_file, profile, self.retry("tftp")
            )
        except TftpFailed as exc:
            raise StageFailed("tftp", f"{lease.boot_file}: {exc}") from None
        self.end("tftp", n)
        ilease = await self.lease("dhcp-ipxe", "ipxe")
        url = ilease.boot_file
        if not url.startswith("http://"):
            raise StageFailed("dhcp-ipxe", f"iPXE got boot file {url!r}, not an HTTP script URL")
        variables = {
            "mac": self.spec.mac, "ip": ilease.ip, "next-server": ilease.reply.siaddr,
            "filename": url, "platform": "efi" if self.spec.arch else "pcbios",
            "buildarch": "x86_64" if self.spec.arch else "i386", "asset": "", "uuid": "",
            "hostname": ilease.reply.options.get(12, b"").decode("latin-1"),
        }  # fmt: skip
        host = ScriptHost(self._script, self._image, self._sleep)
        try:
            text = await self._script(url)
            return await ipxescript.run(url, text, variables, host)
        except ScriptFailed as exc:
            stage = "kernel" if "kernel" in self.rec.stages else "bootscript"
            why = f" (last fetch: {self.last_fetch_error})" if self.last_fetch_error else ""
            raise StageFailed(stage, f"{exc}{why}") from None

    async def _with_retries(self, stage: str, op: Callable[[], Awaitable[T]]) -> T:
        pol = self.env.policy
        for attempt in range(pol.http_attempts):
            try:
                return await op()
            except HttpFailed as exc:
                if attempt + 1 == pol.http_attempts:
                    raise StageFailed(stage, str(exc)) from None
                self.rec.retries.append((stage, str(exc)))
                await asyncio.sleep(pol.http_backoff * 2**attempt * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def _get(
        self, stage: str, client: HttpClient, url: str, keep: bool, expect: str = ""
    ) -> Response:
        async def once() -> Response:
            r = await client.request(self.ip, url, keep=keep)
            if r.status >= 500 or r.status == 429:
                raise HttpFailed(f"HTTP {r.status} for {url}")
            if r.status != 200:
                # Not transient: the server says this node has nothing there.
                raise StageFailed(stage, f"HTTP {r.status} for {url}")
            clen = r.headers.get("content-length")
            if clen is not None and int(clen) != r.nbytes:
                raise HttpFailed(f"short body {r.nbytes}/{clen} for {url}")
            if expect and not r.body.lstrip().startswith(expect.encode()):
                raise StageFailed(stage, f"{url}: body does not start with {expect!r}")
            return r

        return await self._with_retries(stage, once)

    async def _script(self, url: str) -> str:
        self.start("bootscript")
        try:
            r = await self._get("bootscript", self.env.ipxe_http, url, keep=True)
        except StageFailed as exc:
            raise ScriptFailed(exc.reason) from None
        self.end("bootscript", r.nbytes)
        return r.body.decode("utf-8", errors="replace")

    async def _image(self, role: str, url: str) -> bool:
        self.start(role)
        try:
            r = await self._get(role, self.env.ipxe_http, url, keep=False)
        except StageFailed as exc:
            # iPXE reports the failed fetch to the script, which may `|| goto` a retry.
            self.last_fetch_error = exc.reason
            return False
        self.end(role, r.nbytes)
        return True

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, self.env.policy.script_sleep_cap))

    async def linux(self, spec: BootSpec) -> None:
        """The kernel's initramfs: DHCP, root=live: image, cloud-init, phone-home."""
        await self.lease("dhcp-linux", "linux")
        args = dict(a.split("=", 1) for a in spec.kernel_args if "=" in a)
        root = args.get("root", "")
        if not root.startswith("live:"):
            raise StageFailed("rootfs", f"no root=live: URL on the command line ({root!r})")
        self.start("rootfs")
        r = await self._get("rootfs", self.env.curl_http, root[5:], keep=False)
        self.end("rootfs", r.nbytes)
        await self.cloud_init(args)

    async def cloud_init(self, args: dict[str, str]) -> None:
        """NoCloud: meta-data, user-data, vendor-data from the datasource URL, then phone home."""
        base = args.get("ochami_ci_url", "")
        ds = args.get("ds", "")
        for part in ds.split(";"):
            if part.startswith(("s=", "seedfrom=")):
                base = part.split("=", 1)[1]
        if not base:
            raise StageFailed(
                "cloud-init", "no ds=nocloud;s= or ochami_ci_url= on the command line"
            )
        if not base.endswith("/"):
            base += "/"
        self.start("cloud-init")
        docs: dict[str, str] = {}
        total = 0
        for name in ("meta-data", "user-data", "vendor-data"):
            r = await self._get("cloud-init", self.env.ci_http, base + name, keep=True)
            docs[name] = r.body.decode("utf-8", errors="replace")
            total += r.nbytes
        configs = [docs["user-data"], docs["vendor-data"]]
        for doc in list(configs):
            if doc.startswith("#include"):
                for line in doc.splitlines()[1:]:
                    if line.strip() and not line.startswith("#"):
                        r = await self._get("cloud-init", self.env.ci_http, line.strip(), True)
                        configs.append(r.body.decode("utf-8", errors="replace"))
                        total += r.nbytes
        meta = _yaml_map(docs["meta-data"])
        self.end("cloud-init", total)
        iid = str(meta.get("instance-id", "")) or self.spec.mac
        hostname = str(meta.get("local-hostname", "")) or f"node-{self.spec.mac[-5:]}"
        url = ""
        for doc in configs:
            ph = _yaml_map(doc).get("phone_home") if doc.startswith("#cloud-config") else None
            if isinstance(ph, dict) and isinstance(ph.get("url"), str):
                url = ph["url"]
                break
        if not url:
            url = base + "phone-home/$INSTANCE_ID"
            self.rec.notes.append("no phone_home in user-data: used <datasource>/phone-home/")
        url = url.replace("$INSTANCE_ID", quote(iid, safe=""))
        self.start("booted")
        body = urlencode({"instance_id": iid, "hostname": hostname, "fqdn": hostname}).encode()

        async def post() -> Response:
            r = await self.env.ci_http.request(
                self.ip, url, "POST", body, "application/x-www-form-urlencoded"
            )
            if r.status >= 500:
                raise HttpFailed(f"HTTP {r.status} for {url}")
            if not 200 <= r.status < 300:
                raise StageFailed("booted", f"phone-home HTTP {r.status} for {url}")
            return r

        await self._with_retries("booted", post)
        self.end("booted")


def _yaml_map(text: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}
