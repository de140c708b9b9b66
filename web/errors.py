"""The API's one error type: every client mistake becomes JSON `{"error": {"code", "message"}}`."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """A failure the client should see: an HTTP status, a stable code and a one-line message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.extra)
        return {"error": error}


def bad_field(field: str, message: str) -> ApiError:
    """400 naming the field at fault."""
    return ApiError(400, "invalid_field", f"{field}: {message}", field=field)


def dumps(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
