"""Storm results → summary numbers, a markdown table and a PNG plot."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.storm.node import STAGES

_NOISE = [
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"([0-9a-f]{2}[:-]){5}[0-9a-f]{2}", re.I), "<mac>"),
    (re.compile(r"\b\d+\.\d+\.\d+\.\d+\b"), "<ip>"),
    (re.compile(r"\b\d+(/\d+)?\b"), "<n>"),
]


def normalize(reason: str) -> str:
    """A reason without the per-node parts, so equal causes count together."""
    for pat, rep in _NOISE:
        reason = pat.sub(rep, reason)
    return reason[:160]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    v = sorted(values)
    k = max(0, min(len(v) - 1, round(q / 100 * len(v) + 0.5) - 1))
    return v[k]


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Per-stage latencies, completion times, failures, retries, duplicates, throughput."""
    nodes: list[dict[str, Any]] = doc["nodes"]
    stages: dict[str, Any] = {}
    for st in STAGES:
        durs = [n["stages"][st][1] - n["stages"][st][0] for n in nodes if _ended(n, st)]
        ends = [n["stages"][st][1] for n in nodes if _ended(n, st)]
        stages[st] = {
            "nodes": len(durs),
            "p50": round(pct(durs, 50), 3),
            "p95": round(pct(durs, 95), 3),
            "max": round(max(durs, default=0.0), 3),
            "last_done_at": round(max(ends, default=0.0), 3),
        }
    failures = Counter(
        f"{n['failed'][0]}: {normalize(n['failed'][1])}" for n in nodes if n["failed"]
    )
    retries = Counter(f"{s}: {normalize(r)}" for n in nodes for s, r in n["retries"])
    holders: dict[str, set[str]] = defaultdict(set)
    for n in nodes:
        for _role, ip in n["leases"]:
            holders[ip].add(n["mac"])
    dup = {ip: sorted(m) for ip, m in holders.items() if len(m) > 1}
    changed = sum(1 for n in nodes if len({ip for _, ip in n["leases"]}) > 1)
    booted = [n for n in nodes if _ended(n, "booted")]
    last = max((n["stages"]["booted"][1] for n in booted), default=0.0)
    total_bytes = sum(sum(n["bytes"].values()) for n in nodes)
    return {
        "nodes": len(nodes),
        "booted": len(booted),
        "failed_nodes": sum(1 for n in nodes if n["failed"]),
        "time_to_last_boot": round(last, 3) if len(booted) == len(nodes) else None,
        "last_boot_seen": round(last, 3),
        "stages": stages,
        "failures": dict(failures.most_common()),
        "retries": dict(retries.most_common(30)),
        "retry_count": sum(retries.values()),
        "duplicate_addresses": dup,
        "address_changed_nodes": changed,
        "bytes": total_bytes,
        "bytes_per_s": round(total_bytes / last) if last else 0,
    }


def _ended(n: dict[str, Any], st: str) -> bool:
    return st in n["stages"] and n["stages"][st][1] >= 0


def markdown(results: dict[str, Any]) -> str:
    """One table per stack plus the headline comparison."""
    out = [f"# Boot storm: {results['config']['nodes']} nodes", ""]
    out.append(f"Config: `{results['config']}`")
    out.append("")
    runs: dict[str, Any] = results["stacks"]
    out.append(
        "| stack | booted | failed | time to last boot (s) | retries | dup addrs | MB/s |"
        " server CPU (s) | server peak RSS (MB) | client CPU (s) |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        if "skipped" in r:
            out.append(f"| {name} | skipped: {r['skipped']} |||||||||")
            continue
        s = r["summary"]
        srv = r.get("server", {})
        cpu = sum(v["cpu_s"] for v in srv.values())
        rss = sum(v["peak_rss_kb"] for v in srv.values()) / 1024
        cl = r.get("client", {})
        out.append(
            f"| {name} | {s['booted']}/{s['nodes']} | {s['failed_nodes']} | "
            f"{s['time_to_last_boot'] if s['time_to_last_boot'] is not None else '—'} | "
            f"{s['retry_count']} | {len(s['duplicate_addresses'])} | "
            f"{s['bytes_per_s'] / 1e6:.0f} | {cpu:.1f} | {rss:.0f} | "
            f"{cl.get('cpu_user', 0) + cl.get('cpu_sys', 0):.1f} |"
        )
    if results.get("ratio") is not None:
        out += ["", f"**time-to-last-boot bootd/anchor = {results['ratio']:.2f}** (target ≤ 0.8)"]
    for name, r in runs.items():
        if "skipped" in r:
            continue
        s = r["summary"]
        out += [
            "",
            f"## {name}",
            "",
            "| stage | nodes | p50 (s) | p95 (s) | max (s) | last done at (s) |",
            "|---|---|---|---|---|---|",
        ]
        for st, v in s["stages"].items():
            out.append(
                f"| {st} | {v['nodes']} | {v['p50']} | {v['p95']} | {v['max']} | {v['last_done_at']} |"
            )
        if s["failures"]:
            out += ["", "Failures:", *(f"- {n} × {k}" for k, n in s["failures"].items())]
        if s["retries"]:
            out += ["", "Retries:", *(f"- {n} × {k}" for k, n in s["retries"].items())]
        if len(r.get("rounds", [])) > 1:
            out += ["", f"Rounds (time to last boot, s; the median round is shown): {r['rounds']}"]
        if r.get("qemu"):
            out += ["", "Real QEMU machines in the same storm:"]
            for m in r["qemu"]:
                tail = f" — {' | '.join(m['console_tail'])}" if m["console_tail"] else ""
                out.append(
                    f"- {m['name']} ({m['firmware']}, {m['accel']}): {m['result']} in {m['seconds']} s{tail}"
                )
        if r.get("events"):
            out += ["", "Events:", *(f"- {e}" for e in r["events"])]
    return "\n".join(out) + "\n"


def plot(
    results: dict[str, Any], nodes_by_stack: dict[str, list[dict[str, Any]]], path: Path
) -> None:
    """Nodes that finished each stage over time; bootd solid, anchor dashed, same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5))
    cmap = plt.get_cmap("tab10")
    styles = {"bootd": "-", "anchor": "--"}
    for name, nodes in nodes_by_stack.items():
        for i, st in enumerate(STAGES):
            ends = sorted(n["stages"][st][1] for n in nodes if _ended(n, st))
            if not ends:
                continue
            ax.step(
                [0.0, *ends], [0, *range(1, len(ends) + 1)], where="post",
                linestyle=styles.get(name, ":"), color=cmap(i % 10),
                label=f"{name}: {st}",
            )  # fmt: skip
    ax.set_xlabel("seconds since power-on")
    ax.set_ylabel("nodes that finished the stage")
    ratio = results.get("ratio")
    title = f"Boot storm, {results['config']['nodes']} nodes"
    if ratio is not None:
        title += f" — time to last boot bootd/anchor = {ratio:.2f}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
