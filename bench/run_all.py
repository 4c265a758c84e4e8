"""`make bench`: the boot storm (plain, 2 % loss, bootd restart) and every per-protocol bench.

Each bench runs as its own process and writes into bench/results/; a bench that is not
on this branch yet is skipped with a message. Exit status 1 if any bench failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_BENCHES = ("dhcp", "tftp", "http", "cloudinit")
STORMS: tuple[tuple[str, list[str]], ...] = (
    ("storm", ["--repeat", "3"]),
    ("storm-loss2", ["--loss", "2", "--qemu", "0"]),
    ("storm-restart", ["--restart-mid-storm", "--stacks", "bootd", "--qemu", "0"]),
)


def available(name: str) -> bool:
    """bench.<name> exists and can be run with -m."""
    try:
        return importlib.util.find_spec(f"bench.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


def run(label: str, argv: list[str], log: list[str]) -> bool:
    """One bench process with its output passing through; records the outcome."""
    print(f"\n=== {label}: {' '.join(argv)}", flush=True)
    t = time.monotonic()
    rc = subprocess.run([sys.executable, *argv], cwd=REPO).returncode
    line = f"{label}: {'ok' if rc == 0 else f'exit {rc}'} in {time.monotonic() - t:.0f}s"
    log.append(line)
    return rc == 0


def main(argv: list[str] | None = None) -> int:
    """Run everything; print a one-line outcome per bench at the end."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--only", default="", help="comma-separated subset, e.g. storm,dhcp")
    p.add_argument("--nodes", type=int, default=640, help="storm size")
    args = p.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    ok = True
    for name, extra in STORMS:
        if only and name not in only and "storm" not in only:
            continue
        ok &= run(
            name,
            [
                "-m",
                "bench.storm",
                "--nodes",
                str(args.nodes),
                "--name",
                name,
                "--no-progress",
                *extra,
            ],
            log,
        )
    for name in PROTOCOL_BENCHES:
        if only and name not in only:
            continue
        if not available(name):
            msg = f"{name}: skipped, bench.{name} is not on this branch yet (no bench/{name}/__main__.py)"
            print(f"\n=== {msg}", flush=True)
            log.append(msg)
            continue
        ok &= run(name, ["-m", f"bench.{name}"], log)
    if not only or "e2e_boot" in only:
        # Real firmware in QEMU through dnsmasq+nginx and through bootd, same run.
        ok &= run("e2e_boot", ["-m", "bench.e2e_boot"], log)
    print("\n=== summary (results in bench/results/)")
    print("\n".join(log))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
