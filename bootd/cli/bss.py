"""`bootd bss`: boot parameters through the BSS API, and the script a node would get."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from bootd.cli.client import ApiClient, pass_client
from bootd.yamlio import safe_load

payload_option = click.option(
    "--payload",
    "-p",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="BootParams as YAML or JSON (macs, hosts, nids, kernel, initrd, params, cloud-init); "
    "a list sends each entry",
)


def load_payload(path: Path | None, required: bool) -> Any:
    """The payload file parsed with MACs kept as strings; ClickException when unusable."""
    if path is None:
        if required:
            raise click.ClickException("--payload FILE is required")
        return None
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path}: YAML syntax error: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(data, dict | list) or not all(
        isinstance(d, dict) for d in (data if isinstance(data, list) else [data])
    ):
        raise click.ClickException(
            f"{path}: expected a BootParams mapping (macs, kernel, …) or a list"
        )
    return data


def one_payload(path: Path | None) -> Any:
    """An optional payload that must be a single mapping (selections for get/delete)."""
    data = load_payload(path, required=False)
    if isinstance(data, list):
        raise click.ClickException(f"{path}: give one mapping (macs, hosts, nids), not a list")
    return data


def register(cli: click.Group) -> None:
    """Attach `bootd bss …`."""

    @cli.group()
    def bss() -> None:
        """Boot parameters (OpenCHAMI BSS API) and boot scripts."""

    def write_command(name: str, method: str, verb: str) -> None:
        @bss.command(name, help=f"{verb} boot parameters ({method} /boot/v1/bootparameters).")
        @payload_option
        @pass_client
        def cmd(client: ApiClient, payload: Path | None) -> None:
            data = load_payload(payload, required=True)
            for entry in data if isinstance(data, list) else [data]:
                client.ok(method, "/boot/v1/bootparameters", entry)
                keys = [str(k) for f in ("macs", "hosts", "nids") for k in entry.get(f) or []]
                click.echo(f"{verb.lower()}: {', '.join(keys) or 'nothing'}")

    write_command("add", "POST", "Added")
    write_command("set", "PUT", "Set")
    write_command("update", "PATCH", "Updated")

    @bss.command("delete")
    @payload_option
    @click.option("--mac", help="comma-separated MACs")
    @click.option("--name", help="comma-separated host names / xnames")
    @click.option("--nid", help="comma-separated nids")
    @pass_client
    def delete(
        client: ApiClient, payload: Path | None, mac: str | None, name: str | None, nid: str | None
    ) -> None:
        """Delete boot parameters by macs, hosts or nids."""
        data = one_payload(payload)
        if data is None and not (mac or name or nid):
            raise click.ClickException("give --payload FILE or --mac/--name/--nid")
        q = {k: v for k, v in (("mac", mac), ("name", name), ("nid", nid)) if v}
        out = client.ok("DELETE", "/boot/v1/bootparameters", data, **q)
        click.echo(f"deleted {out.get('deleted', 0)} entries")

    @bss.command("get")
    @payload_option
    @click.option("--mac", help="comma-separated MACs")
    @click.option("--name", help="comma-separated host names / xnames")
    @click.option("--nid", help="comma-separated nids")
    @pass_client
    def get(
        client: ApiClient, payload: Path | None, mac: str | None, name: str | None, nid: str | None
    ) -> None:
        """Show boot parameters (all, or those of the given nodes) as JSON."""
        data = one_payload(payload)
        q = {k: v for k, v in (("mac", mac), ("name", name), ("nid", nid)) if v}
        click.echo(json.dumps(client.ok("GET", "/boot/v1/bootparameters", data, **q), indent=2))

    @bss.command("script")
    @click.option("--mac", help="the node's MAC")
    @click.option("--name", help="the node's host name or xname")
    @click.option("--nid", help="the node's nid")
    @click.option("--json", "as_json", is_flag=True, help="the JSON form (URLs, cmdline, source)")
    @pass_client
    def script(
        client: ApiClient, mac: str | None, name: str | None, nid: str | None, as_json: bool
    ) -> None:
        """Print the iPXE script that node would get."""
        q = {k: v for k, v in (("mac", mac), ("name", name), ("nid", nid)) if v}
        if not q:
            raise click.ClickException("give --mac, --name or --nid")
        if as_json:
            q["json"] = "1"
        out = client.ok("GET", "/boot/v1/bootscript", None, **q)
        click.echo(json.dumps(out, indent=2) if as_json else str(out).rstrip("\n"))
