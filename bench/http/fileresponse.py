"""Reference server for the bench: stock aiohttp FileResponse over the same images.

python -m bench.http.fileresponse ROOT PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    """Serve ROOT under /images/ on 127.0.0.1:PORT until killed."""
    root, port = Path(sys.argv[1]), int(sys.argv[2])

    async def image(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/images/{name}", image)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
