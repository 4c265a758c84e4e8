"""`bootd cloud-init …`: groups, cluster defaults, instance info and phone-home records."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import click
import yaml

from bootd.cli.client import ApiClient, pass_client
from bootd.cli.inventory import table
from bootd.yamlio import safe_load

ADMIN = "/cloud-init/admin"


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _load_mapping(file: Path) -> dict[str, Any]:
    try:
        data = safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{file}: expected a YAML or JSON mapping")
    return data


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def register(cli: click.Group) -> None:
    """Attach `bootd cloud-init`."""

    @cli.group("cloud-init")
    def ci() -> None:
        """cloud-init data: groups, cluster defaults, instance info, phone-home."""

    @ci.group()
    def groups() -> None:
        """Group cloud-config files (vendor-data #include targets) and meta-data."""

    @groups.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @pass_client
    def groups_list(client: ApiClient, as_json: bool) -> None:
        """Every group with its size; secrets show only with the API token."""
        data = client.ok("GET", f"{ADMIN}/groups")
        if as_json:
            _echo_json(data)
            return
        rows = []
        for name, g in data.items():
            size = len(g.get("file", {}).get("content", "")) * 3 // 4
            secret = (
                "redacted"
                if g.get("secret", {}).get("redacted")
                else ("yes" if "secret" in g else "-")
            )
            rows.append([name, size or "empty", secret, g.get("description", "")])
        click.echo(
            table(rows, ["GROUP", "BYTES", "SECRET", "DESCRIPTION"]) if rows else "no groups"
        )

    @groups.command("get")
    @click.argument("name")
    @click.option("--content", is_flag=True, help="print only the cloud-config file, as written")
    @pass_client
    def groups_get(client: ApiClient, name: str, content: bool) -> None:
        """One group (JSON), or just its file."""
        data = client.ok("GET", f"{ADMIN}/groups/{_q(name)}")
        if content:
            click.echo(base64.b64decode(data["file"]["content"]).decode(errors="replace"), nl=False)
        else:
            _echo_json(data)

    @groups.command("set")
    @click.argument("name")
    @click.option(
        "--file",
        "file_",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="cloud-config file (passed through as written, jinja templates included)",
    )
    @click.option(
        "--secret-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="cloud-config served only on /cloud-init-secure/",
    )
    @click.option("--description", default="")
    @click.option("--meta", multiple=True, metavar="KEY=VALUE", help="group meta-data (repeatable)")
    @pass_client
    def groups_set(
        client: ApiClient,
        name: str,
        file_: Path | None,
        secret_file: Path | None,
        description: str,
        meta: tuple[str, ...],
    ) -> None:
        """Create or replace a group."""
        body: dict[str, Any] = {"name": name, "description": description}
        if file_ is not None:
            body["file"] = {
                "content": file_.read_text(),
                "encoding": "plain",
                "filename": file_.name,
            }
        if secret_file is not None:
            body["secret"] = {"content": secret_file.read_text(), "encoding": "plain"}
        pairs = {}
        for item in meta:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--meta")
            pairs[key] = value
        if pairs:
            body["meta-data"] = pairs
        client.ok("PUT", f"{ADMIN}/groups/{_q(name)}", body)
        click.echo(f"group {name} saved")

    @groups.command("delete")
    @click.argument("name")
    @pass_client
    def groups_delete(client: ApiClient, name: str) -> None:
        """Remove a group."""
        client.ok("DELETE", f"{ADMIN}/groups/{_q(name)}")
        click.echo(f"group {name} deleted")

    @ci.command("defaults")
    @click.option(
        "--set",
        "file_",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="replace them with this YAML/JSON mapping",
    )
    @pass_client
    def defaults(client: ApiClient, file_: Path | None) -> None:
        """Show (or replace) the cluster defaults: cluster-name, public-keys, base-url, …."""
        if file_ is not None:
            client.ok("POST", f"{ADMIN}/cluster-defaults", _load_mapping(file_))
        _echo_json(client.ok("GET", f"{ADMIN}/cluster-defaults"))

    @ci.command("instance-info")
    @click.argument("node_id", metavar="ID")
    @click.option(
        "--set",
        "file_",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="replace it with this YAML/JSON mapping",
    )
    @click.option("--delete", is_flag=True)
    @pass_client
    def instance_info(client: ApiClient, node_id: str, file_: Path | None, delete: bool) -> None:
        """Show, replace or delete one node's overrides (ID: MAC, xname or hostname)."""
        path = f"{ADMIN}/instance-info/{_q(node_id)}"
        if delete:
            client.ok("DELETE", path)
            click.echo(f"instance info for {node_id} deleted")
            return
        if file_ is not None:
            client.ok("PUT", path, _load_mapping(file_))
        _echo_json(client.ok("GET", path))

    @ci.command("show")
    @click.argument("node_id", metavar="ID")
    @click.option(
        "--doc",
        type=click.Choice(["meta-data", "user-data", "vendor-data", "network-config"]),
        default="meta-data",
        show_default=True,
    )
    @pass_client
    def show(client: ApiClient, node_id: str, doc: str) -> None:
        """The document a node would be sent (ID: MAC, xname, hostname or nid)."""
        out = client.ok("GET", f"{ADMIN}/impersonation/{_q(node_id)}/{doc}")
        click.echo(out, nl=not str(out).endswith("\n"))

    @ci.command("phone-home")
    @click.argument("mac")
    @pass_client
    def phone_home(client: ApiClient, mac: str) -> None:
        """When the node last phoned home, and the host keys it sent."""
        _echo_json(client.ok("GET", f"{ADMIN}/phone-home/{_q(mac)}"))
