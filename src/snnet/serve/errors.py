"""The one error type of the serving side: what a refused request is answered with."""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """A request the server refuses: an HTTP status, a short code and a message naming the
    problem (and, for overload, how many seconds to wait before retrying). Answered as JSON
    ``{"error": {"code", "message"}}`` with the status.

    Example:
        >>> raise ServeError(400, "unknown_stitch", "no stitch '7:99-3:1' in this network")
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}
