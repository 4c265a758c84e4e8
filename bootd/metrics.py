"""Every Prometheus metric bootd exports, on a registry owned by the daemon."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Boot stages are measured from power-on; a storm's last node may take minutes.
STAGE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """The metric families; one instance per daemon, handed to each service."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The daemon process itself, as prometheus-client's default registry has it:
        # process_* (CPU seconds, resident memory, open fds) and python_gc_*.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.dhcp_messages = Counter(
            "bootd_dhcp_messages",
            "DHCP messages by type and result",
            ["type", "result"],
            registry=r,
        )
        self.ipv6_router_solicitations = Counter(
            "bootd_ipv6_router_solicitations",
            "IPv6 router solicitations seen (dhcp.answer_router_solicitations), by result",
            ["result"],
            registry=r,
        )
        self.dhcp_ack_wait_seconds = Histogram(
            "bootd_dhcp_ack_wait_seconds",
            "Per lease write: how long its oldest ACK waited for the lease to be durable "
            "(gathering under load, then the commit and fsync)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.dhcp_active_leases = Gauge(
            "bootd_dhcp_active_leases", "Leases not expired", registry=r
        )
        self.dhcp_free_addresses = Gauge(
            "bootd_dhcp_free_addresses", "Pool addresses free to offer", registry=r
        )
        self.tftp_transfers = Counter(
            "bootd_tftp_transfers", "TFTP transfers by result", ["result"], registry=r
        )
        self.tftp_active = Gauge(
            "bootd_tftp_active_transfers", "TFTP transfers in flight", registry=r
        )
        self.tftp_bytes = Counter("bootd_tftp_bytes", "TFTP payload bytes sent", registry=r)
        self.tftp_retransmits = Counter(
            "bootd_tftp_retransmits", "TFTP blocks sent again after a timeout", registry=r
        )
        self.tftp_errors = Counter(
            "bootd_tftp_errors", "TFTP ERROR packets sent, by code", ["code"], registry=r
        )
        self.http_requests = Counter(
            "bootd_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.http_bytes = Counter("bootd_http_bytes", "HTTP body bytes sent", ["route"], registry=r)
        self.boot_stage_seconds = StageHistogram(
            "bootd_boot_stage_seconds",
            "Time from power-on until a boot stage ended",
            STAGE_BUCKETS,
            r,
        )
        self.nodes_booted = Counter("bootd_nodes_booted", "Boots that phoned home", registry=r)
        self.malformed = Counter(
            "bootd_malformed_input",
            "Rejected input by protocol and reason",
            ["protocol", "reason"],
            registry=r,
        )
        self.bootscript_seconds = Histogram(
            "bootd_bootscript_seconds",
            "Boot-script lookup and rendering time inside bootd (excludes queueing)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        self.cloudinit_seconds = Histogram(
            "bootd_cloudinit_seconds",
            "cloud-init document lookup and rendering time inside bootd (excludes queueing)",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=r,
        )
        self.store_commits = Gauge(
            "bootd_store_commits", "SQLite transactions committed by the group writer", registry=r
        )


class StageHistogram:
    """A histogram labelled by boot stage, kept by hand and exported as one.

    Every node's every stage end is observed (twice a lease in a DHCP storm), and
    prometheus-client's Histogram.observe takes a lock for its bucket and one for its
    sum: ~2.3 us here, against ~0.3 for a bisect and two list updates. It is updated
    and scraped on the event loop only, so it needs no lock.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = sorted(float(b) for b in buckets)
        # Per stage: a count per bucket (an observation lands in the first whose upper
        # bound is >= it; the last is +Inf), then the sum. Stage names come from the
        # services' fixed sets: bounded.
        self._stages: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, stage: str, seconds: float) -> None:
        """One stage ended `seconds` after power-on."""
        counts = self._stages.get(stage)
        if counts is None:
            counts = self._stages[stage] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, seconds)] += 1
        counts[-1] += seconds

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The family without samples (so registering does not collect)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=["stage"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """Cumulative buckets, sum and count per stage, as prometheus-client exports them."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=["stage"])
        # The library's own formatting of an upper bound (it is untyped).
        bounds = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for stage, counts in sorted(self._stages.items()):
            cumulative = list(accumulate(counts[:-1]))
            family.add_metric(
                [stage], list(zip(bounds, cumulative, strict=True)), sum_value=counts[-1]
            )
        yield family
