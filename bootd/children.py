"""Child processes the daemon starts (sendfile workers, the store writer)."""

from __future__ import annotations

import subprocess


def reap(proc: subprocess.Popen[bytes], grace: float) -> int:
    """Wait up to `grace` seconds for a child told to leave (its socket closed), then kill it.

    Returns its exit code.
    """
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
