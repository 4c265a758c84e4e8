"""RFC 9457 problem documents, bearer-token checks and JSON bodies shared by every route."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"


def problem(status: int, title: str, detail: str = "", **extra: object) -> web.Response:
    """A JSON problem document response."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_TYPE)


class ProblemError(web.HTTPException):
    """Raise from a handler to answer with a problem document."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps(
                {"type": "about:blank", "title": title, "status": status, "detail": detail}
            ),
            content_type=PROBLEM_TYPE,
        )


def read_token(path: Path | None) -> bytes | None:
    """The API token from its file (stripped), or None when writes are not configured."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError:
        return None
    return token.encode() or None


def check_bearer(request: web.Request, token: bytes | None) -> None:
    """Raise 401/403 unless the request carries the configured bearer token."""
    if token is None:
        raise ProblemError(403, "Writes disabled", "set api.token_file to allow API writes")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ProblemError(401, "Unauthorized", "send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token):
        raise ProblemError(403, "Forbidden", "the bearer token is not valid")


async def json_body(request: web.Request) -> Any:
    """The request body as JSON; a 400 problem when it is not."""
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, "Bad JSON", str(exc)) from None


async def json_list_body(request: web.Request, title: str, what: str) -> list[Any]:
    """The request body as a JSON list; a 400 problem (`title`) when it is not one."""
    data = await json_body(request)
    if not isinstance(data, list):
        raise ProblemError(400, title, f"expected a JSON list of {what}")
    return data
