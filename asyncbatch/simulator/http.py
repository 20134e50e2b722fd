"""What the simulated services share on the wire: JSON replies, Azure's error shape, the bearer check, the books."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Books:
    """What the server counts, read by tests: replies by status, requests, answers billed per prompt."""

    statuses: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    requests: int = 0

    def error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
        """Azure's error body (``{"error": {"code", "message"}}``), counted under its status."""
        self.statuses[str(status)] += 1
        return json_response(status, {"error": {"code": code, "message": message}}, headers)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


def bearer_ok(request: web.Request, key: str) -> bool:
    """The request carries ``Authorization: Bearer <key>``."""
    return request.headers.get("Authorization") == f"Bearer {key}"
