"""`bootd nodes`, `bootd boots`: inventory and timelines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import yaml

from bootd.cli.client import ApiClient, pass_client
from bootd.yamlio import safe_load


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Plain fixed-width table."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def register(cli: click.Group) -> None:
    """Attach the inventory and timeline commands."""

    @cli.group()
    def nodes() -> None:
        """Node inventory (MAC, IP, hostname, nid, xname, groups)."""

    @nodes.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--replace", is_flag=True, help="make the inventory exactly this file")
    @pass_client
    def nodes_import(client: ApiClient, file: Path, replace: bool) -> None:
        """Load nodes from a YAML (or JSON) list."""
        try:
            data = safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{file}: YAML syntax error: {exc}") from None
        q = {"replace": "1"} if replace else {}
        out = client.ok("POST", "/api/v1/nodes", data or [], **q)
        click.echo(f"imported {out['imported']} nodes")

    @nodes.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @pass_client
    def nodes_list(client: ApiClient, as_json: bool) -> None:
        """Show the inventory."""
        data = client.ok("GET", "/api/v1/nodes")
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        rows = [
            [
                n["mac"],
                n["ip"] or "-",
                n["hostname"] or "-",
                n["nid"] if n["nid"] is not None else "-",
                n["xname"] or "-",
                ",".join(n["groups"]) or "-",
            ]
            for n in data
        ]
        click.echo(table(rows, ["MAC", "IP", "HOSTNAME", "NID", "XNAME", "GROUPS"]))

    @cli.command()
    @click.option("--mac", help="only this node")
    @click.option("--watch", is_flag=True, help="refresh every second until interrupted")
    @click.option("--json", "as_json", is_flag=True)
    @pass_client
    def boots(client: ApiClient, mac: str | None, watch: bool, as_json: bool) -> None:
        """Per-node boot timelines: stage, time since power-on, retries."""
        while True:
            data = client.ok("GET", "/api/v1/boots", **({"mac": mac} if mac else {}))
            if as_json:
                click.echo(json.dumps(data, indent=2))
            else:
                if watch:
                    click.clear()
                click.echo(render_boots(data))
            if not watch:
                return
            time.sleep(1)


def render_boots(data: list[dict[str, Any]]) -> str:
    """One line per node, then its stages with offsets from power-on."""
    out: list[str] = []
    for tl in data:
        state = "booted" if tl["booted"] else f"at {tl['current_stage']}"
        out.append(f"{tl['mac']}  boot #{tl['boot_id']}  {state}")
        rows = []
        for s in tl["stages"]:
            end = "-" if s["end"] is None else f"{s['end']:.2f}s"
            dur = "-" if s["duration"] is None else f"{s['duration']:.2f}s"
            rows.append(
                [
                    f"  {s['stage']}",
                    f"+{s['start']:.2f}s",
                    end,
                    dur,
                    s["retries"],
                    s["bytes"] or "",
                    s["detail"],
                ]
            )
        if rows:
            out.append(
                table(rows, ["  STAGE", "START", "END", "TOOK", "RETRIES", "BYTES", "DETAIL"])
            )
    return "\n".join(out) if out else "no boots recorded"
