"""The servers bootd is measured against, and process plumbing shared by the bench."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until something answers HTTP on the port (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no answer on port {port}")


def start_nginx(work: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"user root; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err; daemon off;\n"
        "events { worker_connections 4096; }\n"
        "http { access_log off; sendfile on; tcp_nopush on; default_type text/plain;\n"
        f"  server {{ listen 127.0.0.1:{port} backlog=4096;\n"
        f"    location /cloud-init/ {{ root {root}/$remote_addr; }} }} }}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_http(port, "/", proc)
    return proc, port


AIOHTTP_FLOOR = """
import sys
from pathlib import Path
from aiohttp import web
root, port = Path(sys.argv[1]), int(sys.argv[2])
seeds = {(d.parent.parent.name, d.name): d.read_bytes() for d in root.glob("*/cloud-init/*")}
async def doc(request):
    body = seeds.get((request.remote, request.match_info["doc"]))
    if body is None:
        raise web.HTTPNotFound()
    return web.Response(body=body, content_type="text/plain")
app = web.Application()
app.router.add_get("/cloud-init/{doc}", doc)
web.run_app(app, host="127.0.0.1", port=port, access_log=None, backlog=4096, print=None)
"""


def start_aiohttp_floor(work: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A bare aiohttp app answering from a dict by source IP: the framework's own ceiling."""
    port = free_port()
    script = work / "aiohttp_floor.py"
    script.write_text(AIOHTTP_FLOOR)
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(port)])
    wait_http(port, "/", proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
