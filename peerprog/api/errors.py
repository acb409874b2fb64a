"""Errors of the local API, shared by the server (which answers them as JSON) and the
clients (which raise them again from the answer).

Every error answer is ``{"error": <code>, "detail": <one line>}`` with the status of the
class below; :func:`from_answer` maps an answer back to the class by its code.
"""

from __future__ import annotations

from peerprog.errors import PeerprogError


class ApiError(PeerprogError):
    """An error of the local API: answered by the daemon, or met while talking to it."""

    status = 500
    code = "internal error"

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, str]:
        """The JSON body of the error answer."""
        return {"error": self.code, "detail": self.detail}

    def headers(self) -> dict[str, str]:
        """Headers the error answer carries besides its JSON body."""
        return {}


class BadRequest(ApiError):
    """A malformed request: a bad parameter, a bad model name (400)."""

    status = 400
    code = "bad request"


class Unauthorized(ApiError):
    """The TCP listener needs ``Authorization: Bearer <api.token>`` (401)."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="peerprog"'}


class OriginNotAllowed(ApiError):
    """A browser request from an origin not in ``api.cors_origins`` (403)."""

    status = 403
    code = "origin not allowed"


class UnknownModel(ApiError):
    """The node neither holds nor wants a model of that name (404)."""

    status = 404
    code = "unknown model"


class LevelGone(ApiError):
    """A file of a repository's level the node no longer serves: a newer level or version
    replaced it; ask for the tree again (410)."""

    status = 410
    code = "level gone"


class LevelTimeout(ApiError):
    """The level asked for was not reached within ``wait`` seconds (503, ``Retry-After``)."""

    status = 503
    code = "level not reached"

    def __init__(self, detail: str, *, retry_after: int = 1, status: int | None = None) -> None:
        super().__init__(detail, status=status)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DaemonNotRunning(ApiError):
    """No daemon answers on the socket (raised by the clients only)."""

    status = 0
    code = "daemon not running"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls for cls in (BadRequest, Unauthorized, OriginNotAllowed, UnknownModel, LevelGone)
}


def from_answer(status: int, doc: object, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer (``doc`` is its parsed JSON body, if any)."""
    code = doc.get("error") if isinstance(doc, dict) else None
    detail = doc.get("detail") if isinstance(doc, dict) else None
    text = str(detail) if detail else f"HTTP {status}"
    if code == LevelTimeout.code:
        try:
            after = max(0, int(retry_after or "1"))
        except ValueError:
            after = 1
        return LevelTimeout(text, retry_after=after, status=status)
    cls = _BY_CODE.get(str(code))
    if cls is not None:
        return cls(text, status=status)
    return ApiError(f"{code}: {text}" if code else text, status=status)
