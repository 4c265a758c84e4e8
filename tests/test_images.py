"""/images/ against a running bootd, checked with real curl: ranges, validators, jail, timeline."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BootdProcess, base_config, write_config

FIVE_GIB = 5 * 1024**3


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl; returns (status, headers of the last response, body)."""
    r = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "/dev/stderr", *args],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    head = r.stdout.decode().split("\r\n\r\n")[-2]
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, r.stderr


@pytest.fixture
def images(cfg_dict: dict[str, Any]) -> Path:
    return Path(cfg_dict["http"]["images"])


def metric(proc: BootdProcess, name: str, labels: str) -> float:
    with urllib.request.urlopen(proc.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_ranges_and_conditionals_with_curl(bootd_proc: BootdProcess, images: Path) -> None:
    data = os.urandom(1_000_003)
    (images / "vmlinuz").write_bytes(data)
    url = bootd_proc.url + "/images/vmlinuz"
    status, h, body = curl(url)
    assert (status, body, int(h["content-length"])) == (200, data, len(data))
    etag, lm = h["etag"], h["last-modified"]
    status, h, body = curl("-r", "100-199", url)
    assert (status, body, h["content-range"]) == (206, data[100:200], f"bytes 100-199/{len(data)}")
    assert h["content-length"] == "100"
    status, _, body = curl("-r", "-7", url)
    assert (status, body) == (206, data[-7:])
    status, _, body = curl("-r", "999990-", url)
    assert (status, body) == (206, data[999990:])
    status, h, body = curl("-r", "2000000-", url)
    assert (status, body, h["content-range"]) == (416, b"", f"bytes */{len(data)}")
    status, _, body = curl("-r", "0-1,5-6", url)  # multiple ranges: whole file
    assert (status, body) == (200, data)
    status, h, body = curl("-H", f"If-None-Match: {etag}", url)
    assert (status, body) == (304, b"") and h["etag"] == etag
    status, _, body = curl("-H", f"If-Modified-Since: {lm}", url)
    assert (status, body) == (304, b"")
    status, _, body = curl("-H", "If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT", url)
    assert (status, body) == (200, data)
    status, _, body = curl("-H", f"If-Range: {etag}", "-r", "5-9", url)
    assert (status, body) == (206, data[5:10])
    status, _, body = curl("-H", 'If-Range: "stale"', "-r", "5-9", url)
    assert (status, body) == (200, data)
    status, _, body = curl("-H", f"If-Range: {lm}", "-r", "5-9", url)
    assert (status, body) == (206, data[5:10])
    status, h, _ = curl("-I", url)  # HEAD: curl prints the headers as the body
    assert (status, h["content-length"]) == (200, str(len(data)))
    assert curl(bootd_proc.url + "/images/missing")[0] == 404


def test_sparse_5gib_file(bootd_proc: BootdProcess, images: Path) -> None:
    tail = b"end-of-a-5GiB-file"
    with open(images / "rootfs.squashfs", "wb") as f:
        f.truncate(FIVE_GIB)
        f.seek(FIVE_GIB - len(tail))
        f.write(tail)
    url = bootd_proc.url + "/images/rootfs.squashfs"
    status, h, _ = curl("-I", url)
    assert (status, int(h["content-length"])) == (200, FIVE_GIB)
    start = FIVE_GIB - 100
    status, h, body = curl("-r", f"{start}-", url)
    assert status == 206 and h["content-range"] == f"bytes {start}-{FIVE_GIB - 1}/{FIVE_GIB}"
    assert body == bytes(100 - len(tail)) + tail
    status, _, body = curl("-r", f"{2**32 - 3}-{2**32 + 2}", url)  # across the 4 GiB line
    assert (status, body) == (206, bytes(6))


def test_traversal_and_symlinks_are_404_and_counted(
    bootd_proc: BootdProcess, images: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("do not serve")
    (images / "ok").write_text("fine")
    (images / "escape").symlink_to(tmp_path / "secret")
    (images / "inside").symlink_to(images / "ok")
    u = bootd_proc.url
    for path in (
        "/images/../api-token",
        "/images/sub/../../api-token",
        "/images/%2e%2e/api-token",
        "/images/%2E%2E%2Fapi-token",
        "/images/..%5capi-token",
        "/images/%2Fetc%2Fpasswd",
    ):
        status, _, body = curl("--path-as-is", u + path)
        assert status == 404 and b"test-token" not in body, path
    status, _, body = curl(u + "/images/escape")
    assert status == 404 and b"do not serve" not in body
    assert curl(u + "/images/inside")[2] == b"fine"
    counted = sum(
        metric(bootd_proc, "bootd_malformed_input_total", f'protocol="http",reason="{r}"')
        for r in ("traversal", "encoded-traversal", "symlink-escape")
    )
    assert counted == 7
    assert (
        metric(bootd_proc, "bootd_malformed_input_total", 'protocol="http",reason="symlink-escape"')
        == 1
    )


def test_a_redeployed_image_is_served_within_seconds_and_never_torn(
    bootd_proc: BootdProcess, images: Path
) -> None:
    # Kept files are checked again after a second (nginx's open_file_cache, but shorter).
    old, new = os.urandom(300_000), os.urandom(500_000)
    (images / "initrd.img").write_bytes(old)
    url = bootd_proc.url + "/images/initrd.img"
    assert curl(url)[2] == old
    staged = images / ".initrd.img.new"
    staged.write_bytes(new)
    staged.rename(images / "initrd.img")  # a deploy: new inode, same name
    deadline = time.monotonic() + 10
    while True:
        status, h, body = curl(url)
        assert status == 200 and body in (old, new) and int(h["content-length"]) == len(body)
        if body == new or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body == new
    (images / "initrd.img").unlink()
    deadline = time.monotonic() + 10
    while curl(url)[0] != 404:
        assert time.monotonic() < deadline, "a deleted image is still served"
        time.sleep(0.2)


def api(proc: BootdProcess, method: str, path: str, body: Any) -> Any:
    req = urllib.request.Request(
        proc.url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": "Bearer test-token", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_timeline_records_kernel_initrd_rootfs(bootd_proc: BootdProcess, images: Path) -> None:
    mac = "52:54:00:00:00:01"
    api(bootd_proc, "POST", "/api/v1/nodes", [{"mac": mac, "ip": "127.0.0.1", "xname": "x1"}])
    api(bootd_proc, "POST", "/boot/v1/bootparameters", {
        "hosts": ["x1"], "kernel": "n/k.bin", "initrd": "n/i.bin",
        "params": f"root=live:{bootd_proc.url}/images/n/r.bin",
    })  # fmt: skip
    (images / "n").mkdir()
    sizes = {"k": 300_000, "i": 500_000, "r": 64 * 1024 * 1024}
    for name, size in sizes.items():
        with open(images / "n" / f"{name}.bin", "wb") as f:
            f.truncate(size)
    for name in ("k", "i"):
        assert curl(f"{bootd_proc.url}/images/n/{name}.bin")[0] == 200
    # Drop the rootfs download after the first bytes: the stage ends 'aborted' with partial bytes.
    with socket.create_connection(("127.0.0.1", bootd_proc.cfg["http"]["port"])) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /images/n/r.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536)
        time.sleep(0.3)
    stages: dict[str, Any] = {}
    for _ in range(100):
        tl = bootd_proc.get_json(f"/api/v1/boots?mac={mac}")
        stages = {s["stage"]: s for s in tl[0]["stages"]} if tl else {}
        if stages.get("rootfs", {}).get("end") is not None:
            break
        time.sleep(0.1)
    assert stages["kernel"]["bytes"] == sizes["k"] and stages["kernel"]["end"] is not None
    assert stages["initrd"]["bytes"] == sizes["i"]
    assert stages["rootfs"]["detail"] == "aborted"
    assert 0 < stages["rootfs"]["bytes"] < sizes["r"]
    assert metric(bootd_proc, "bootd_http_bytes_total", 'route="/images/{path}"') >= 800_000
    # A client hanging up is routine, not an error with a traceback.
    assert "Traceback" not in bootd_proc.log() and "Error handling" not in bootd_proc.log()


def pump_children(pid: int) -> list[int]:
    """bootd's sendfile worker processes, from /proc."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids if b"bootd.http.pump" in Path(f"/proc/{k}/cmdline").read_bytes()]


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("ending", ["sigterm", "sigkill"])
def test_sendfile_workers_stream_and_leave_with_the_daemon(tmp_path: Path, ending: str) -> None:
    """http.sendfile_workers: 2 → two pump processes serve the bytes; none outlives bootd."""
    cfg = base_config(tmp_path, http={"sendfile_workers": 2})
    body = os.urandom(3 * 1024 * 1024 + 7)
    (Path(cfg["http"]["images"]) / "big.bin").write_bytes(body)
    proc = BootdProcess(write_config(tmp_path, cfg), cfg)
    try:
        proc.wait_ready()
        workers = pump_children(proc.proc.pid)
        assert len(workers) == 2
        url = f"{proc.url}/images/big.bin"
        assert curl(url)[2] == body
        assert curl("-r", "1000-2000999", url)[2] == body[1000:2001000]
    finally:
        if ending == "sigterm":
            # systemctl stop signals the whole cgroup: workers wait for the daemon's word.
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)
            assert all(running(p) for p in workers)
            assert proc.stop() == 0
        else:
            proc.kill()
    # Stopped or killed, the daemon takes its workers with it (EOF on their control socket).
    assert gone(workers)


def test_sendfile_workers_zero_streams_in_process(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, http={"sendfile_workers": 0})
    (Path(cfg["http"]["images"]) / "a.bin").write_bytes(b"x" * 100_000)
    proc = BootdProcess(write_config(tmp_path, cfg), cfg)
    try:
        proc.wait_ready()
        assert pump_children(proc.proc.pid) == []
        assert curl(f"{proc.url}/images/a.bin")[2] == b"x" * 100_000
    finally:
        proc.stop()
