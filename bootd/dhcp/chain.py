"""The reply chains, built in one place: server mode and proxy mode are two stage lists."""

from __future__ import annotations

from bootd.config import Config
from bootd.context import Context
from bootd.dhcp.address import AddressStage, SubnetIndex
from bootd.dhcp.exchange import Exchange, Stage, run_stages
from bootd.dhcp.netboot import BootFiles, NetbootStage
from bootd.dhcp.offers import OfferMemo
from bootd.dhcp.stages import (
    GroupOptions,
    hostname,
    inventory,
    network_options,
    proxy_skeleton,
    relay_agent_echo,
    server_identity,
    skeleton,
)
from bootd.store.leases import LeaseTable


def build_stages(
    ctx: Context, leases: LeaseTable, subnets: SubnetIndex | None = None
) -> list[Stage]:
    """skeleton → inventory (the node, looked up once) → identity → address → group
    options → network options → netboot → hostname → option 82 echo."""

    def config() -> Config:
        return ctx.config

    netboot = NetbootStage(config, BootFiles())
    node = inventory(config, ctx.nodes)
    if ctx.config.dhcp.mode == "proxy":
        return [proxy_skeleton(config), node, server_identity(config), netboot.__call__]
    # Bound __call__ methods rather than the instances: calling an instance goes
    # through its type's slot lookup every time, on every stage of every packet.
    return [
        skeleton,
        node,
        server_identity(config),
        AddressStage(config, leases, subnets).__call__,
        GroupOptions(config).__call__,
        network_options,
        netboot.__call__,
        hostname,
        relay_agent_echo,
    ]


def offer_memo(
    ctx: Context, leases: LeaseTable, subnets: SubnetIndex | None = None
) -> OfferMemo | None:
    """Server mode keeps its OFFERs for the REQUESTs that take them; proxy mode leases nothing."""
    if ctx.config.dhcp.mode == "proxy":
        return None
    return OfferMemo(lambda: ctx.config, ctx.nodes, leases, subnets)


def explain(stages: list[Stage], ex: Exchange) -> Exchange:
    """Run the chain without touching the lease table (for `bootd explain`)."""
    ex.dry_run = True
    return run_stages(stages, ex)
