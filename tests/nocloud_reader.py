"""Run by Debian's /usr/bin/python3: cloud-init's own NoCloud-Net datasource reads a seed URL.

Usage: nocloud_reader.py SEED SOURCE_IP WORKDIR [PHONE_HOME_URL] → JSON on stdout.
SEED is a seedfrom URL, or `cmdline:<kernel command line>` to have cloud-init
find `ds=nocloud-net;s=…` there itself.
With PHONE_HOME_URL, cloud-init's phone_home module then posts the host keys
found under WORKDIR/ssh/ (standing in for the node's /etc/ssh/).
Every HTTP connection cloud-init opens is bound to SOURCE_IP, so the server
sees the request coming from the node that owns that address.
"""

from __future__ import annotations

import json
import os
import sys

import urllib3.connection


def bind_source(ip: str) -> None:
    """Make every urllib3 connection (what requests, hence cloud-init, uses) leave from ip."""
    orig = urllib3.connection.HTTPConnection.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        kw["source_address"] = (ip, 0)
        orig(self, *args, **kw)

    urllib3.connection.HTTPConnection.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    seed, src, workdir = sys.argv[1:4]
    bind_source(src)
    from cloudinit import distros, helpers
    from cloudinit.sources.DataSourceNoCloud import DataSourceNoCloudNet

    paths = helpers.Paths(
        {
            "cloud_dir": os.path.join(workdir, "cloud"),
            "run_dir": os.path.join(workdir, "run"),
            "templates_dir": "/etc/cloud/templates",
        }
    )
    if seed.startswith("cmdline:"):
        # The node's kernel command line, parsed by cloud-init's own `ds=nocloud-net;s=…` code.
        from cloudinit import util

        cmdline = seed.removeprefix("cmdline:")
        util.get_cmdline = lambda: cmdline
        sys_cfg: dict[str, object] = {"datasource": {"NoCloud": {"fs_label": None}}}
    else:
        # seedfrom in the datasource config: what `ds=nocloud-net;s=URL` on a command line does.
        sys_cfg = {"datasource": {"NoCloud": {"seedfrom": seed, "fs_label": None}}}
    distro = distros.fetch("debian")("debian", {}, paths)
    ds = DataSourceNoCloudNet(sys_cfg, distro, paths)
    ok = ds.get_data()
    vendor_parts = []
    if ok:
        # Resolves the vendor-data #include list by fetching each URL, like a booting node.
        msg = ds.get_vendordata()
        for part in msg.walk():
            if part.get_content_maintype() == "multipart":
                continue
            payload = part.get_payload(decode=True)
            vendor_parts.append(payload.decode() if payload is not None else "")
    with open(paths.get_runpath("instance_data")) as f:
        instance_data = json.load(f) if ok else {}
    out = {
        "ok": ok,
        "seed": ds.seed,
        "metadata": ds.metadata,
        "userdata_raw": (ds.userdata_raw or b"").decode()
        if isinstance(ds.userdata_raw, bytes)
        else ds.userdata_raw,
        "vendordata_raw": (ds.vendordata_raw or b"").decode()
        if isinstance(ds.vendordata_raw, bytes)
        else ds.vendordata_raw,
        "vendor_parts": vendor_parts,
        "public_keys": ds.get_public_ssh_keys(),
        "instance_id": ds.get_instance_id(),
        "v1": instance_data.get("v1", {}),
    }
    if ok and not seed.startswith("cmdline:"):
        out["network"] = network_config(seed)
    if ok and len(sys.argv) > 4:
        out["phone_home"] = phone_home(ds, paths, distro, sys.argv[4], workdir)
    json.dump(out, sys.stdout, default=str)


def network_config(seed: str) -> dict[str, object]:
    """Fetch <seed>network-config (newer cloud-init does) and run it through cloud-init's parser."""
    from cloudinit import url_helper, util
    from cloudinit.net import network_state

    resp = url_helper.read_file_or_url(seed + "network-config", timeout=5, retries=0)
    cfg = util.load_yaml(resp.contents)
    state = network_state.parse_net_config_data(cfg)
    return {
        "config": cfg,
        "interfaces": {
            i["name"]: {
                "mac": i.get("mac_address"),
                "subnets": [s.get("type") for s in i["subnets"]],
            }
            for i in state.iter_interfaces()
        },
    }


def phone_home(ds, paths, distro, url: str, workdir: str) -> bool:  # type: ignore[no-untyped-def]
    """cc_phone_home.handle as cloud-init's final stage runs it."""
    import logging

    from cloudinit import cloud, util
    from cloudinit.config import cc_phone_home

    real_load = util.load_file

    def load_file(fname, *a, **kw):  # type: ignore[no-untyped-def]
        if str(fname).startswith("/etc/ssh/"):
            fname = os.path.join(workdir, "ssh", os.path.basename(fname))
        return real_load(fname, *a, **kw)

    util.load_file = load_file
    c = cloud.Cloud(ds, paths, {}, distro, None)
    cfg = {"phone_home": {"url": url, "post": "all", "tries": 1}}
    cc_phone_home.handle("phone_home", cfg, c, logging.getLogger("phone_home"), [])
    return True


if __name__ == "__main__":
    main()
