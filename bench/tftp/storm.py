"""`python -m bench.tftp.storm`: N concurrent fetches of one file; prints JSON."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json

from bench.tftp.client import storm


def main() -> None:
    """Run one storm and print a JSON summary (wall time, bytes, digests, errors)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=69)
    ap.add_argument("--file", required=True)
    ap.add_argument("-n", type=int, default=640)
    ap.add_argument("--blksize", type=int, default=0)
    ap.add_argument("--windowsize", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--retries", type=int, default=10)
    a = ap.parse_args()
    wall, results = asyncio.run(
        storm(
            (a.server, a.port),
            a.file,
            a.n,
            blksize=a.blksize or None,
            windowsize=a.windowsize or None,
            timeout=a.timeout,
            retries=a.retries,
        )
    )
    ok = [r for r in results if r.ok]
    print(
        json.dumps(
            {
                "n": a.n,
                "ok": len(ok),
                "wall": wall,
                "bytes": sum(r.size for r in ok),
                "sha256": sorted({r.sha256 for r in ok}),
                "errors": dict(collections.Counter(r.error for r in results if not r.ok)),
                "client_resends": sum(r.resent for r in results),
                "options": results[0].options if results else {},
                "slowest": max((r.seconds for r in results), default=0.0),
            }
        )
    )


if __name__ == "__main__":
    main()
