"""A small synchronous client of bootd's HTTP API for the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


@dataclass
class ApiClient:
    """Base URL plus the optional bearer token."""

    url: str
    token: str | None

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Send one request; returns (status, parsed JSON or text). Problem docs are returned too."""
        url = self.url.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read(), exc.headers.get_content_type())
        except urllib.error.URLError as exc:
            raise click.ClickException(
                f"cannot reach bootd at {self.url}: {exc.reason} — is it running? set --url or BOOTD_URL"
            ) from None

    def ok(self, method: str, path: str, body: Any = None, **query: str) -> Any:
        """Like request, but a 4xx/5xx becomes a ClickException with the problem's detail."""
        status, data = self.request(method, path, body, query or None)
        if status >= 400:
            if isinstance(data, dict):
                msg = f"{data.get('title', 'error')}: {data.get('detail', '')}".rstrip(": ")
            else:
                msg = str(data)
            raise click.ClickException(f"HTTP {status}: {msg}")
        return data


def _decode(raw: bytes, ctype: str) -> Any:
    if ctype.endswith("json"):
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode(errors="replace")


def make_client(url: str | None, token_file: Path | None) -> ApiClient:
    """Resolve --url/BOOTD_URL and --token-file/BOOTD_TOKEN."""
    base = url or os.environ.get("BOOTD_URL") or "http://127.0.0.1:8080"
    token = os.environ.get("BOOTD_TOKEN")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise click.ClickException(
                f"cannot read token file {token_file}: {exc.strerror}"
            ) from None
    return ApiClient(base, token)


pass_client = click.make_pass_decorator(ApiClient)
