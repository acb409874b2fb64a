"""The clients apps use: :class:`Client` (sync) and :class:`AsyncClient` (asyncio).

Both talk HTTP to the local daemon over its unix socket (``$PEERPROG_SOCKET``, else
``/run/peerprog/api.sock``) and offer the same calls::

    client = peerprog.Client()
    model = client.best("digits-cnn", min_level=2, wait=30)   # numpy arrays
    client.load_into(net, "digits-cnn")                       # a torch module
    for model in client.watch("digits-cnn"):                  # each better level
        ...
    d = client.best_dir("bert-base", "models/bert")           # a repository, as a folder
    AutoModel.from_pretrained(d.path)
    for d in client.watch("bert-base", dest="models/bert"):   # swapped in at each level
        ...

Errors are typed (:mod:`peerprog.api.errors`): :class:`UnknownModel`, :class:`LevelTimeout`,
:class:`DaemonNotRunning` (its message names the socket), :class:`BadRequest`.
:class:`Client` uses only the standard library (``http.client``); :class:`AsyncClient`
imports aiohttp when first used; torch is imported only by the torch calls.
"""

from __future__ import annotations

import http.client
import os
import socket as _socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar, overload

from peerprog.api.errors import ApiError, LevelTimeout
from peerprog.api.model import PIECE, BestModel, BestSink
from peerprog.api.tree import Answer, BestDir, best_dir_calls
from peerprog.api.wire import (
    Event,
    EventParser,
    Level,
    best_path,
    default_socket,
    error_of,
    json_body,
    model_path,
    not_running,
    remove_path,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AsyncClient", "BestDir", "BestModel", "Client"]

WATCH_WAIT = 60.0
PathArg = str | os.PathLike[str]


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` over a unix socket at ``path``."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _read_into(resp: http.client.HTTPResponse, sink: BinaryIO | None = None) -> bytearray:
    """The whole body, read straight into one buffer when its length is known — or, with
    ``sink`` and a 200 answer, into that file (the body returned is then empty)."""
    if sink is not None and resp.status == 200:
        buf = bytearray(PIECE)
        view = memoryview(buf)
        got = 0
        while n := resp.readinto(view):
            sink.write(view[:n])
            got += n
        return bytearray()
    if resp.length is None:
        return bytearray(resp.read())
    buf = bytearray(resp.length)
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = resp.readinto(view[got:])
        if not n:
            raise ApiError(f"the daemon closed the connection after {got} of {len(buf)} bytes")
        got += n
    return buf


class Client:
    """A blocking client of the local daemon (safe to share between threads: each call
    opens its own connection)."""

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        """``socket``: the daemon's ``api.socket`` (default ``$PEERPROG_SOCKET``, else
        ``/run/peerprog/api.sock``). ``timeout``: seconds to wait for an answer, on top of
        any ``wait`` asked of the daemon."""
        self.socket = default_socket() if socket is None else os.fspath(socket)
        self.timeout = timeout

    def _request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        wait: float | None = None,
        sink: BinaryIO | None = None,
    ) -> Answer:
        timeout = self.timeout + (wait or 0.0)
        conn = UnixHTTPConnection(self.socket, timeout)
        try:
            try:
                conn.connect()
            except OSError as e:
                raise not_running(self.socket, e) from None
            conn.request(method, target, headers=dict(headers or {}))
            resp = conn.getresponse()
            body = _read_into(resp, sink)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except TimeoutError:
            raise ApiError(
                f"no answer from the daemon at {self.socket} within {timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(f"talking to the daemon at {self.socket}: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, target: str) -> Any:
        status, headers, body = self._request(method, target)
        if status >= 400:
            raise error_of(status, body, headers.get("retry-after"))
        return json_body(body)

    def models(self) -> list[dict[str, Any]]:
        """Every model the node holds or wants: ``GET /v1/models``."""
        docs: list[dict[str, Any]] = self._json("GET", "/v1/models")
        return docs

    def status(self, name: str) -> dict[str, Any]:
        """The status JSON of one model (its newest version)."""
        doc: dict[str, Any] = self._json("GET", model_path(name))
        return doc

    def node_status(self) -> dict[str, Any]:
        """The node's status JSON: ``GET /v1/status``."""
        doc: dict[str, Any] = self._json("GET", "/v1/status")
        return doc

    def metrics(self) -> str:
        """The Prometheus text of ``GET /metrics``."""
        status, headers, body = self._request("GET", "/metrics")
        if status >= 400:
            raise error_of(status, body, headers.get("retry-after"))
        return body.decode()

    def want(self, name: str) -> dict[str, Any]:
        """Ask the node to fetch ``name`` (and keep it up to date); returns its status."""
        doc: dict[str, Any] = self._json("PUT", model_path(name))
        return doc

    def remove(self, name: str, *, keep_data: bool = False) -> dict[str, Any]:
        """Stop fetching ``name`` and delete it from the node's store (with ``keep_data``:
        only stop fetching). Returns ``{"name", "removed": [model ids], "kept_data"}``."""
        doc: dict[str, Any] = self._json("DELETE", remove_path(name, keep_data))
        return doc

    def rescan(self) -> list[str]:
        """Tell the node to take up what was published into its store; the new model ids."""
        found: list[str] = self._json("POST", "/v1/store/rescan")["found"]
        return found

    def best(self, name: str, min_level: Level = None, wait: float | None = None) -> BestModel:
        """The best approximation of ``name`` the node has now, as numpy arrays that map
        a temporary file (no copy of the model in memory; writable, copy-on-write).

        With ``min_level`` (a level or ``"max"``), waits up to ``wait`` seconds for it;
        raises :class:`LevelTimeout` if it is not reached, :class:`UnknownModel` if the
        node neither holds nor wants ``name``.
        """
        model = self._best(name, min_level, wait, None)
        assert model is not None
        return model

    def best_path(
        self,
        name: str,
        path: str | os.PathLike[str],
        min_level: Level = None,
        wait: float | None = None,
    ) -> BestModel:
        """Like :meth:`best`, written to ``path`` (a safetensors file, fsynced and renamed
        into place when whole); the arrays map that file."""
        model = self._best(name, min_level, wait, None, Path(path))
        assert model is not None
        return model

    def _best(
        self,
        name: str,
        min_level: Level,
        wait: float | None,
        etag: str | None,
        path: Path | None = None,
    ) -> BestModel | None:
        headers = {"If-None-Match": etag} if etag else None
        with BestSink(path) as sink:
            status, got, body = self._request(
                "GET", best_path(name, min_level, wait), headers=headers, wait=wait, sink=sink.file
            )
            return _best_answer(status, got, body, sink)

    def best_dir(
        self, name: str, dest: PathArg, min_level: Level = None, wait: float | None = None
    ) -> BestDir:
        """The best level of the repository ``name`` as the directory ``dest``, which an
        app's library loads (``from_pretrained(dest)``). Each file is streamed to disk;
        the directory is swapped into place whole (a reader sees the old level or the new,
        never half), and files carried whole that ``dest`` already holds are linked, not
        fetched again. ``dest`` must be new, empty, or a directory peerprog wrote.
        ``min_level`` and ``wait`` as for :meth:`best`."""
        got = self._best_dir(name, Path(dest), min_level, wait, None)
        assert got is not None
        return got

    def _best_dir(
        self, name: str, dest: Path, min_level: Level, wait: float | None, etag: str | None
    ) -> BestDir | None:
        calls = best_dir_calls(name, dest, min_level, wait, etag)
        try:
            call = next(calls)
            while True:
                answer = self._request(
                    "GET", call.target, headers=call.headers, wait=call.wait, sink=call.sink
                )
                call = calls.send(answer)
        except StopIteration as done:
            result: BestDir | None = done.value
            return result
        finally:
            calls.close()  # on an error here: the half-written folder is removed

    def best_torch(
        self, name: str, min_level: Level = None, wait: float | None = None
    ) -> dict[str, Any]:
        """Like :meth:`best`, as a state dict of ``torch.Tensor``s."""
        return self.best(name, min_level, wait).torch_tensors()

    def load_into(
        self,
        module: Any,
        name: str,
        min_level: Level = None,
        wait: float | None = None,
        *,
        strict: bool = True,
    ) -> BestModel:
        """Load the best approximation of ``name`` into a torch ``module``; returns it."""
        model = self.best(name, min_level, wait)
        model.load_into(module, strict=strict)
        return model

    @overload
    def watch(
        self, name: str, *, wait: float = ..., until_last: bool = ..., dest: None = None
    ) -> Iterator[BestModel]: ...
    @overload
    def watch(
        self, name: str, *, wait: float = ..., until_last: bool = ..., dest: PathArg
    ) -> Iterator[BestDir]: ...
    def watch(
        self,
        name: str,
        *,
        wait: float = WATCH_WAIT,
        until_last: bool = True,
        dest: PathArg | None = None,
    ) -> Iterator[BestModel] | Iterator[BestDir]:
        """Each new best model of ``name`` as the node gets it: the current one first,
        then one per level (or new version) reached, until the last level (with
        ``until_last``). With ``dest``, a repository: each is the directory ``dest``
        (:meth:`best_dir`), swapped to the new level. Long-polls; never busy-waits."""
        if dest is not None:
            return self._watch_dir(name, Path(dest), wait, until_last)
        return self._watch(name, wait, until_last)

    def _watch(self, name: str, wait: float, until_last: bool) -> Iterator[BestModel]:
        return _watching(lambda etag: self._best(name, None, max(1.0, wait), etag), until_last)

    def _watch_dir(self, name: str, dest: Path, wait: float, until_last: bool) -> Iterator[BestDir]:
        return _watching(
            lambda etag: self._best_dir(name, dest, None, max(1.0, wait), etag), until_last
        )


class Watched(Protocol):
    """What a watch yields: a model or a directory, each with its tag and whether it is
    the last level."""

    @property
    def etag(self) -> str: ...
    @property
    def last(self) -> bool: ...


W = TypeVar("W", bound=Watched)


def _watching(get: Callable[[str | None], W | None], until_last: bool) -> Iterator[W]:
    """Long-poll ``get(etag)`` for each newer answer (None: not modified), until the last
    level with ``until_last``."""
    etag: str | None = None
    while True:
        try:
            got = get(etag)
        except LevelTimeout:
            continue
        if got is None:
            continue
        etag = got.etag
        yield got
        if until_last and got.last:
            return


async def _awatching(
    get: Callable[[str | None], Awaitable[W | None]], until_last: bool
) -> AsyncIterator[W]:
    """As :func:`_watching`, for the asyncio client."""
    etag: str | None = None
    while True:
        try:
            got = await get(etag)
        except LevelTimeout:
            continue
        if got is None:
            continue
        etag = got.etag
        yield got
        if until_last and got.last:
            return


def _best_answer(
    status: int, headers: Mapping[str, str], body: bytearray, sink: BestSink
) -> BestModel | None:
    if status == 304:
        return None
    if status >= 400:
        raise error_of(status, body, headers.get("retry-after"))
    return sink.finish(headers)


class AsyncClient:
    """The asyncio client of the local daemon; ``async with AsyncClient() as c: ...``."""

    def __init__(self, socket: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        """Arguments as for :class:`Client`."""
        self.socket = default_socket() if socket is None else os.fspath(socket)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (the client can be used again afterwards)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.socket, limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _request(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        wait: float | None = None,
        sink: BinaryIO | None = None,
    ) -> Answer:
        import aiohttp

        total = self.timeout + (wait or 0.0)
        session = self._get_session()
        try:
            async with session.request(
                method,
                "http://localhost" + target,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=total),
            ) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                if sink is not None and resp.status == 200:
                    async for piece in resp.content.iter_chunked(PIECE):
                        sink.write(piece)
                    return resp.status, headers, bytearray()
                return resp.status, headers, await _read_all(resp)
        except aiohttp.ClientConnectorError as e:
            raise not_running(self.socket, e.os_error) from None
        except TimeoutError:
            raise ApiError(
                f"no answer from the daemon at {self.socket} within {total:g} s"
            ) from None
        except aiohttp.ClientError as e:
            raise ApiError(f"talking to the daemon at {self.socket}: {e}") from None

    async def _json(self, method: str, target: str) -> Any:
        status, headers, body = await self._request(method, target)
        if status >= 400:
            raise error_of(status, body, headers.get("retry-after"))
        return json_body(body)

    async def models(self) -> list[dict[str, Any]]:
        """As :meth:`Client.models`."""
        docs: list[dict[str, Any]] = await self._json("GET", "/v1/models")
        return docs

    async def status(self, name: str) -> dict[str, Any]:
        """As :meth:`Client.status`."""
        doc: dict[str, Any] = await self._json("GET", model_path(name))
        return doc

    async def node_status(self) -> dict[str, Any]:
        """As :meth:`Client.node_status`."""
        doc: dict[str, Any] = await self._json("GET", "/v1/status")
        return doc

    async def metrics(self) -> str:
        """As :meth:`Client.metrics`."""
        status, headers, body = await self._request("GET", "/metrics")
        if status >= 400:
            raise error_of(status, body, headers.get("retry-after"))
        return body.decode()

    async def want(self, name: str) -> dict[str, Any]:
        """As :meth:`Client.want`."""
        doc: dict[str, Any] = await self._json("PUT", model_path(name))
        return doc

    async def remove(self, name: str, *, keep_data: bool = False) -> dict[str, Any]:
        """As :meth:`Client.remove`."""
        doc: dict[str, Any] = await self._json("DELETE", remove_path(name, keep_data))
        return doc

    async def rescan(self) -> list[str]:
        """As :meth:`Client.rescan`."""
        found: list[str] = (await self._json("POST", "/v1/store/rescan"))["found"]
        return found

    async def best(
        self, name: str, min_level: Level = None, wait: float | None = None
    ) -> BestModel:
        """As :meth:`Client.best`."""
        model = await self._best(name, min_level, wait, None)
        assert model is not None
        return model

    async def best_path(
        self,
        name: str,
        path: str | os.PathLike[str],
        min_level: Level = None,
        wait: float | None = None,
    ) -> BestModel:
        """As :meth:`Client.best_path`."""
        model = await self._best(name, min_level, wait, None, Path(path))
        assert model is not None
        return model

    async def _best(
        self,
        name: str,
        min_level: Level,
        wait: float | None,
        etag: str | None,
        path: Path | None = None,
    ) -> BestModel | None:
        headers = {"If-None-Match": etag} if etag else None
        with BestSink(path) as sink:
            status, got, body = await self._request(
                "GET", best_path(name, min_level, wait), headers=headers, wait=wait, sink=sink.file
            )
            return _best_answer(status, got, body, sink)

    async def best_dir(
        self, name: str, dest: PathArg, min_level: Level = None, wait: float | None = None
    ) -> BestDir:
        """As :meth:`Client.best_dir`."""
        got = await self._best_dir(name, Path(dest), min_level, wait, None)
        assert got is not None
        return got

    async def _best_dir(
        self, name: str, dest: Path, min_level: Level, wait: float | None, etag: str | None
    ) -> BestDir | None:
        calls = best_dir_calls(name, dest, min_level, wait, etag)
        try:
            call = next(calls)
            while True:
                answer = await self._request(
                    "GET", call.target, headers=call.headers, wait=call.wait, sink=call.sink
                )
                call = calls.send(answer)
        except StopIteration as done:
            result: BestDir | None = done.value
            return result
        finally:
            calls.close()

    async def best_torch(
        self, name: str, min_level: Level = None, wait: float | None = None
    ) -> dict[str, Any]:
        """As :meth:`Client.best_torch`."""
        return (await self.best(name, min_level, wait)).torch_tensors()

    async def load_into(
        self,
        module: Any,
        name: str,
        min_level: Level = None,
        wait: float | None = None,
        *,
        strict: bool = True,
    ) -> BestModel:
        """As :meth:`Client.load_into`."""
        model = await self.best(name, min_level, wait)
        model.load_into(module, strict=strict)
        return model

    def watch(
        self, name: str, *, wait: float = WATCH_WAIT, until_last: bool = True
    ) -> AsyncIterator[BestModel]:
        """As :meth:`Client.watch`: ``async for model in client.watch(name)``."""
        return _awatching(lambda etag: self._best(name, None, max(1.0, wait), etag), until_last)

    def watch_dir(
        self, name: str, dest: PathArg, *, wait: float = WATCH_WAIT, until_last: bool = True
    ) -> AsyncIterator[BestDir]:
        """As :meth:`Client.watch` with ``dest``: ``async for d in c.watch_dir(name, dest)``."""
        target = Path(dest)
        return _awatching(
            lambda etag: self._best_dir(name, target, None, max(1.0, wait), etag), until_last
        )

    async def events(self, name: str) -> AsyncIterator[Event]:
        """The server-sent events of ``name`` (``level`` …, then ``complete``)."""
        import aiohttp

        session = self._get_session()
        parser = EventParser()
        try:
            async with session.get(
                "http://localhost" + model_path(name, "events"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
            ) as resp:
                if resp.status >= 400:
                    raise error_of(resp.status, await resp.read(), resp.headers.get("retry-after"))
                async for raw in resp.content:
                    event = parser.feed(raw.decode().rstrip("\r\n"))
                    if event is not None:
                        yield event
        except aiohttp.ClientConnectorError as e:
            raise not_running(self.socket, e.os_error) from None
        except aiohttp.ClientError as e:
            raise ApiError(f"talking to the daemon at {self.socket}: {e}") from None


async def _read_all(resp: aiohttp.ClientResponse) -> bytearray:
    """The whole body, copied once into one buffer when its length is known."""
    n = resp.content_length
    if n is None:
        return bytearray(await resp.read())
    buf = bytearray(n)
    pos = 0
    async for chunk in resp.content.iter_any():
        end = pos + len(chunk)
        if end > n:
            raise ApiError("the daemon sent more bytes than it announced")
        buf[pos:end] = chunk
        pos = end
    if pos != n:
        raise ApiError(f"the daemon closed the connection after {pos} of {n} bytes")
    return buf
