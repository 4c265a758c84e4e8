"""The HTTP service: aiohttp runner bound to http.listen:http.port."""

from __future__ import annotations

import errno
import logging

from aiohttp import web

from bootd.config import Config
from bootd.context import Context, StartupError
from bootd.http.app import build_app

log = logging.getLogger("bootd.http")


class HttpService:
    """Serves images, boot scripts, the BSS and cloud-init APIs, metrics and health."""

    name = "http"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.app = build_app(ctx)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        """Bind and serve; a busy port becomes a one-line StartupError."""
        cfg = self.ctx.config.http
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self.ctx.config.shutdown_grace
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, cfg.listen, cfg.port, backlog=4096)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"http: port {cfg.port} on {cfg.listen} is in use — is nginx or another "
                    "bootd running? stop it or set http.port"
                ) from None
            raise StartupError(f"http: cannot listen on {cfg.listen}:{cfg.port}: {exc}") from None

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
