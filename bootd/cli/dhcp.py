"""`bootd leases` and `bootd explain`."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import click

from bootd.cli.client import ApiClient, pass_client
from bootd.cli.inventory import table
from bootd.cli.leasefiles import LeaseFileError, parse


def register(cli: click.Group) -> None:
    """Attach the DHCP commands."""

    @cli.group(invoke_without_command=True)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def leases(ctx: click.Context, as_json: bool) -> None:
        """Current DHCP leases (`delete MAC` forgets one, `import FILE` takes over another
        server's)."""
        if ctx.invoked_subcommand is None:
            ctx.invoke(leases_list, as_json=as_json)

    @leases.command("delete")
    @click.argument("mac")
    @pass_client
    def leases_delete(client: ApiClient, mac: str) -> None:
        """Forget MAC's lease: its address is free again (a swapped NIC, a retired node)."""
        gone = client.ok("DELETE", f"/api/v1/leases/{urllib.parse.quote(mac, safe='')}")
        click.echo(f"deleted the lease of {gone['mac']} on {gone['ip']}")

    @leases.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["auto", "dnsmasq", "kea", "json"]),
        default="auto",
        show_default=True,
        help="dnsmasq's lease file, Kea's memfile CSV, or bootd's own JSON list",
    )
    @pass_client
    def leases_import(client: ApiClient, file: Path, fmt: str) -> None:
        """Take over the leases of the server bootd replaces, so nodes keep their addresses.

        All or none: a lease whose address is another client's here, or outside bootd's
        subnets, stops the import and is named.
        """
        try:
            data = parse(file.read_text(), fmt, time.time())
        except (LeaseFileError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{file}: {exc}") from None
        out = client.ok("POST", "/api/v1/leases", data)
        click.echo(f"imported {out['imported']} leases")

    @leases.command("list", hidden=True)
    @click.option("--json", "as_json", is_flag=True)
    @pass_client
    def leases_list(client: ApiClient, as_json: bool) -> None:
        """Current DHCP leases."""
        data = client.ok("GET", "/api/v1/leases")
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        rows = [
            [
                x["ip"],
                x["mac"],
                x["hostname"] or "-",
                "active" if x["active"] else "expired",
                f"{x['remaining']}s",
            ]
            for x in data
        ]
        click.echo(
            table(rows, ["IP", "MAC", "HOSTNAME", "STATE", "REMAINING"]) if rows else "no leases"
        )

    @cli.command()
    @click.option("--mac", required=True, help="the client's MAC address")
    @click.option(
        "--arch",
        type=int,
        help="client architecture (option 93): 0 BIOS, 7 x86-64 UEFI, 16 HTTP boot",
    )
    @click.option("--ipxe", is_flag=True, help="ask as iPXE (user-class iPXE)")
    @click.option("--json", "as_json", is_flag=True)
    @pass_client
    def explain(client: ApiClient, mac: str, arch: int | None, ipxe: bool, as_json: bool) -> None:
        """What DHCP would answer this client, and why; then the boot script it would get."""
        q = {"mac": mac, "ipxe": "1" if ipxe else "0"}
        if arch is not None:
            q["arch"] = str(arch)
        data = client.ok("GET", "/api/v1/explain", **q)
        script = _script(client, data)
        if as_json:
            click.echo(json.dumps({**data, "script": script}, indent=2))
            return
        click.echo(render_explain(data, script))


def _script(client: ApiClient, data: dict[str, Any]) -> str | None:
    """Fetch the boot script when the answer points iPXE at /boot/v1/bootscript."""
    url = str(data.get("file") or data.get("options", {}).get("67 bootfile") or "")
    parsed = urllib.parse.urlsplit(url)
    if not parsed.path.endswith("/boot/v1/bootscript"):
        return None
    query = dict(urllib.parse.parse_qsl(parsed.query))
    status, body = client.request("GET", parsed.path, query=query)
    return body if status == 200 and isinstance(body, str) else None


def render_explain(data: dict[str, Any], script: str | None) -> str:
    """Plain-text explanation."""
    out = [f"client {data['mac']} ({data['phase']}), dhcp mode {data['mode']}"]
    node = data.get("node")
    out.append(
        f"inventory: {node['hostname'] or '-'} {node['ip'] or '-'}"
        if node
        else "inventory: not listed"
    )
    if data.get("reply") is None:
        out.append("answer: none")
    else:
        out.append(
            f"answer: {data['reply']}  yiaddr {data['yiaddr']}  next-server {data['siaddr']}"
        )
        out.append(f"boot file: {data['file'] or '-'}")
        for name, value in data["options"].items():
            out.append(f"  option {name}: {value}")
    out.append("why:")
    out.extend(f"  - {w}" for w in data["why"])
    if script is not None:
        out.append("boot script:")
        out.extend(f"  {line}" for line in script.splitlines())
    return "\n".join(out)
