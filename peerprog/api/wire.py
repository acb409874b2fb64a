"""What the clients send and how they read answers (pure, shared by :class:`Client` and
:class:`AsyncClient`): request paths, the default socket, error answers, server-sent
events."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from peerprog.api.errors import ApiError, BadRequest, DaemonNotRunning, from_answer

DEFAULT_SOCKET = "/run/peerprog/api.sock"
"""The socket of the packaged config (``configs/edge.toml``, the systemd unit)."""

SOCKET_ENV = "PEERPROG_SOCKET"

Level = int | str | None
"""A ``min_level``: a level number, ``"max"``, or None for any level."""


def default_socket() -> str:
    """``$PEERPROG_SOCKET`` if set, else :data:`DEFAULT_SOCKET`."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def model_path(name: str, tail: str = "") -> str:
    """``/v1/models/<name>[/tail]`` with the name quoted."""
    return f"/v1/models/{quote(name, safe='')}" + (f"/{tail}" if tail else "")


def remove_path(name: str, keep_data: bool) -> str:
    """The path and query of a ``DELETE`` of a model."""
    return model_path(name) + ("?keep_data=true" if keep_data else "")


def best_path(name: str, min_level: Level = None, wait: float | None = None) -> str:
    """The path and query of a ``best`` request."""
    return level_path(name, "best", min_level, wait)


def tree_path(name: str, min_level: Level = None, wait: float | None = None) -> str:
    """The path and query of a ``tree`` request (a repository's best level)."""
    return level_path(name, "tree", min_level, wait)


def file_path(name: str, path: str, model_id: str, level: int) -> str:
    """The path and query of one file of a repository's level."""
    query = urlencode({"model_id": model_id, "level": str(level)})
    return model_path(name, "files/" + quote(path, safe="/")) + "?" + query


def level_path(name: str, tail: str, min_level: Level, wait: float | None) -> str:
    """``/v1/models/<name>/<tail>`` with ``min_level`` and ``wait`` checked into its query."""
    query: dict[str, str] = {}
    if min_level is not None:
        if min_level != "max" and not (isinstance(min_level, int) and min_level >= 0):
            raise BadRequest(f"min_level must be a level number ≥ 0 or 'max', not {min_level!r}")
        query["min_level"] = str(min_level)
    if wait is not None:
        if wait < 0:
            raise BadRequest(f"wait must be ≥ 0 seconds, not {wait!r}")
        query["wait"] = f"{wait:g}"
    path = model_path(name, tail)
    return f"{path}?{urlencode(query)}" if query else path


def error_of(status: int, body: bytes | bytearray, retry_after: str | None) -> ApiError:
    """The exception for an error answer."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    return from_answer(status, doc, retry_after)


def not_running(socket: str, reason: OSError) -> ApiError:
    """The exception for a failed connect to ``socket``."""
    why = reason.strerror or str(reason)
    if isinstance(reason, PermissionError):
        return ApiError(
            f"cannot connect to the daemon at {socket}: {why} (only the daemon's user, and "
            "the members of its api.socket_group if it has one, may use the socket)"
        )
    return DaemonNotRunning(
        f"no peerprog daemon answers on {socket} ({why}); start one with "
        f"'peerprog daemon --config FILE', or point {SOCKET_ENV} or --socket at its api.socket"
    )


def json_body(body: bytes | bytearray) -> Any:
    """A JSON answer's document; :class:`ApiError` if it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("the daemon's answer is not JSON") from None


@dataclass(frozen=True)
class Event:
    """One server-sent event."""

    event: str
    data: Any
    id: str | None = None


class EventParser:
    """Turns the lines of a ``text/event-stream`` into :class:`Event`s."""

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line (without its newline); returns an event when one is complete."""
        if not line:
            if not self._data:
                self._event = "message"
                return None
            text = "\n".join(self._data)
            try:
                data: Any = json.loads(text)
            except ValueError:
                data = text
            ev = Event(self._event, data, self._id)
            self._event, self._data = "message", []
            return ev
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            self._event = value
        elif key == "data":
            self._data.append(value)
        elif key == "id":
            self._id = value
        return None
