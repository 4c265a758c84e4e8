"""The `bootd` command: run the daemon, or talk to a running one through its API."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from bootd import __version__
from bootd.cli import bss, dhcp, inventory
from bootd.cli import cloudinit as cloudinit_cli
from bootd.cli.client import make_client
from bootd.config import ConfigError, load_config
from bootd.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bootd")
@click.option(
    "--url", envvar="BOOTD_URL", help="bootd API base URL [default: http://127.0.0.1:8080]"
)
@click.option(
    "--token-file", type=click.Path(path_type=Path), help="file holding the API bearer token"
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token_file: Path | None) -> None:
    """Network-boot diskless nodes: DHCP/PXE, TFTP, HTTP, iPXE scripts, cloud-init."""
    if ctx.invoked_subcommand not in ("serve", "check-config"):
        ctx.obj = make_client(url, token_file)


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="bootd YAML config file",
)


@cli.command()
@config_option
def serve(config_path: Path) -> None:
    """Run the daemon in the foreground (what systemd runs)."""
    from bootd.daemon import run
    from bootd.eventloop import BootdLoop

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
    setup_logging(config.log.format, config.log.level)
    with asyncio.Runner(loop_factory=BootdLoop) as runner:
        code = runner.run(run(config, config_path))
    sys.exit(code)


@cli.command("check-config")
@config_option
def check_config(config_path: Path) -> None:
    """Validate a config file; print each error with its key path."""
    from bootd.daemon import load_inventory_file

    try:
        config = load_config(config_path)
        if config.nodes is not None:
            load_inventory_file(config.nodes)
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
    click.echo(f"{config_path}: ok")


inventory.register(cli)
dhcp.register(cli)
bss.register(cli)
cloudinit_cli.register(cli)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bootd")
