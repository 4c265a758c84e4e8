"""Leased addresses go onto the client veth in batches (one `ip -batch` per burst)."""

from __future__ import annotations

import asyncio


class AddressBook:
    """Adds each leased address to the interface once; concurrent callers share one batch."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        # Bounded by the number of virtual nodes (one address each, plus changed leases).
        self.added: set[str] = set()
        self._pending: dict[str, tuple[int, list[asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.errors: list[str] = []

    async def ensure(self, ip: str, prefixlen: int) -> None:
        """Return once ip/prefixlen is on the interface."""
        if ip in self.added:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(ip, (prefixlen, []))[1].append(fut)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            script = "".join(
                f"address add {ip}/{pl} dev {self.ifname}\n" for ip, (pl, _) in batch.items()
            )
            proc = await asyncio.create_subprocess_exec(
                "ip", "-force", "-batch", "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate(script.encode())
            self.batches += 1
            for line in err.decode(errors="replace").splitlines():
                # "File exists" is an address a previous stage already added.
                if "File exists" not in line and len(self.errors) < 20:
                    self.errors.append(line)
            for ip, (_, futs) in batch.items():
                self.added.add(ip)
                for f in futs:
                    if not f.done():
                        f.set_result(None)
