"""The HTTP service: aiohttp runner bound to http.listen:http.port."""

from __future__ import annotations

import asyncio
import errno
import logging

from aiohttp import web

from bootd.config import Config
from bootd.context import Context, StartupError
from bootd.eventloop import BootdLoop
from bootd.http.app import build_app
from bootd.http.streamers import SendfileWorkers, auto_workers

log = logging.getLogger("bootd.http")


class HttpService:
    """Serves images, boot scripts, the BSS and cloud-init APIs, metrics and health."""

    name = "http"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.app = build_app(ctx)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._workers: SendfileWorkers | None = None

    async def start(self) -> None:
        """Bind and serve; a busy port becomes a one-line StartupError."""
        cfg = self.ctx.config.http
        self._start_workers()
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.ctx.config.shutdown_grace
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, cfg.listen, cfg.port, backlog=4096)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._stop_workers()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"http: port {cfg.port} on {cfg.listen} is in use — is nginx or another "
                    "bootd running? stop it or set http.port"
                ) from None
            raise StartupError(f"http: cannot listen on {cfg.listen}:{cfg.port}: {exc}") from None

    def _start_workers(self) -> None:
        # Only the daemon's own loop knows how to hand a transfer over.
        loop = asyncio.get_running_loop()
        want = self.ctx.config.http.sendfile_workers
        count = auto_workers() if want == "auto" else want
        if not isinstance(loop, BootdLoop) or count == 0:
            return
        self._workers = SendfileWorkers(loop, count)
        try:
            self._workers.start()
        except OSError as exc:
            log.warning("http: cannot start sendfile workers (%s); streaming in-process", exc)
            self._workers.close()
            self._workers = None
            return
        loop.sendfile_workers = self._workers

    def _stop_workers(self) -> None:
        if self._workers is not None:
            loop = self._workers.loop
            if isinstance(loop, BootdLoop):
                loop.sendfile_workers = None
            self._workers.close()
            self._workers = None

    def listening(self) -> list[str]:
        """Bound address."""
        cfg = self.ctx.config.http
        return [f"http://{cfg.listen}:{cfg.port}"]

    def reload(self, config: Config) -> None:
        """Nothing cached: routes read ctx.config and the token file per request."""

    async def stop(self, grace: float) -> None:
        """Stop accepting; in-flight responses get `grace` seconds."""
        if self._runner is not None:
            self._runner._shutdown_timeout = grace
            await self._runner.cleanup()
            self._runner = None
        self._stop_workers()
