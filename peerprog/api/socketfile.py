"""The API's unix socket file: created mode 0600 (or 0660 for ``api.socket_group``) from
the start, a stale one replaced, a live one refused.

The socket is bound under a temporary name, made 0600, then renamed into place, so no
other user can ever connect to it, and a daemon killed without cleanup is replaced
atomically. A socket some other process still answers on is left alone.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import secrets
import socket
import stat
from pathlib import Path

from peerprog.errors import InputError

log = logging.getLogger("peerprog.api")
SUN_PATH_MAX = 107
"""Longest unix socket path Linux accepts (108 bytes with the terminating NUL)."""


def bind_unix_socket(path: Path, group: str = "") -> tuple[socket.socket, int]:
    """A listening unix socket at ``path`` (mode 0600; with ``group``, owned by that group
    and mode 0660) and its inode number.

    The folder is created (mode 0700, or 0750 for the group) if missing. Raises
    :class:`InputError` when another daemon answers on ``path``, when ``path`` is something
    other than a socket, when it cannot be created, or when the group cannot be given it.
    """
    path = Path(path)
    gid = _group_id(group) if group else None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    if len(os.fsencode(tmp)) > SUN_PATH_MAX:
        raise InputError(
            f"api.socket {str(path)!r} is too long for a unix socket (keep it under "
            f"{SUN_PATH_MAX - 8} bytes)"
        )
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700 if gid is None else 0o750)
            if gid is not None:
                os.chown(path.parent, -1, gid)
    except OSError as e:
        raise InputError(
            f"{path.parent}: cannot create the API socket's folder ({e.strerror})"
        ) from None
    remove_if_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsencode(tmp))
        os.chmod(tmp, 0o600)
        if gid is not None:
            os.chown(tmp, -1, gid)
            os.chmod(tmp, 0o660)
        os.replace(tmp, path)
        sock.listen(128)
        sock.setblocking(False)
        inode = os.stat(path).st_ino
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(f"{path}: cannot create the API socket ({e.strerror or e})") from None
    return sock, inode


def _group_id(group: str) -> int:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise InputError(f"api.socket_group {group!r}: no such group") from None
    if gid not in os.getgroups() and gid != os.getegid() and os.geteuid() != 0:
        raise InputError(
            f"api.socket_group {group!r}: the daemon's user is not in that group, so it "
            "cannot give it the socket (add the user to the group, e.g. usermod -aG)"
        )
    return gid


def remove_if_stale(path: Path) -> None:
    """Remove ``path`` if it is a socket nobody answers on; refuse anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InputError(
            f"{path} exists and is not a socket: remove it or choose another api.socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(os.fsencode(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing the stale API socket %s (its daemon is gone)", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except PermissionError:
        raise InputError(
            f"{path}: a socket of another user is there; choose another api.socket"
        ) from None
    except OSError as e:
        raise InputError(f"{path}: a socket that does not answer properly is there ({e})") from None
    finally:
        probe.close()
    raise InputError(
        f"{path}: another peerprog daemon is serving its local API there; "
        "stop it first or choose another api.socket"
    )


def remove_socket(path: Path, inode: int) -> None:
    """Remove the socket file at ``path`` if it is still ours (same inode)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            path.unlink()
