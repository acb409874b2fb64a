"""Node configuration (TOML), validated at start, and written back by :meth:`Config.to_toml`.

Every section and key is a frozen dataclass field with its docstring; an unknown key or a
value of the wrong type is refused with an :class:`InputError` that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerprog.errors import InputError
from peerprog.manifest import parse_public_key, valid_name
from peerprog.swarm import PeerTableConfig, VersionConfig
from peerprog.urls import valid_url


@dataclass(frozen=True)
class NodeSection:
    name: str = "peerprog-node"
    """A name for this node, shown to peers and in logs."""
    data_dir: str = "./peerprog-data"
    """The node's store folder: manifests, level files, the record of verified chunks,
    names, and the lock file ``daemon.pid`` (one daemon per folder)."""
    listen: str = "127.0.0.1:7070"
    """``host:port`` of the peer protocol server; port 0 picks a free one."""
    public_url: str = ""
    """The URL peers should use to reach this node; default ``http://<listen>``. Peers dial
    it back to find out whether it works; a node they cannot dial uploads over reverse
    channels."""


@dataclass(frozen=True)
class ApiSection:
    socket: str = "./peerprog-api.sock"
    """Path of the local API's unix socket (mode 0600: only the daemon's user)."""
    socket_group: str = ""
    """A group whose members may use the API socket too (mode 0660); the daemon's user
    must be in it (as with the systemd unit's ``peerprog`` group)."""
    listen_tcp: str = ""
    """Optional ``host:port`` (loopback) for browser apps; requires ``token``."""
    token: str = ""
    """Bearer token required on the TCP listener."""
    cors_origins: list[str] = field(default_factory=list)
    """Origins allowed by CORS on the TCP listener."""


@dataclass(frozen=True)
class TrustSection:
    publishers: list[str] = field(default_factory=list)
    """Publisher keys (``ed25519:<base64url>``) whose manifests are accepted."""


@dataclass(frozen=True)
class PeersSection(PeerTableConfig, VersionConfig):
    """``[peers]``: also the settings of the peer table and of the version policy (their
    keys are documented in :mod:`peerprog.swarm.peertable` and :mod:`peerprog.swarm.versions`)."""

    bootstrap: list[str] = field(default_factory=list)
    """Base URLs of peers to announce to at start (``http://host:port``)."""
    web_seeds: list[str] = field(default_factory=list)
    """Base URLs of static servers holding a published store."""
    announce_interval: float = 10.0
    """Seconds between periodic announcements."""
    have_poll_interval: float = 1.0
    """Seconds between polls of a peer's ``have`` bitfield while fetching from it."""

    def __post_init__(self) -> None:
        # a dataclass runs only the first base's __post_init__: both bases check their keys
        PeerTableConfig.__post_init__(self)
        VersionConfig.__post_init__(self)


@dataclass(frozen=True)
class ModelsSection:
    want: list[str] = field(default_factory=list)
    """Names of models to fetch at start."""
    keep_versions: int = 0
    """Older versions of a name kept once a newer one is exact (0: drop them)."""
    rescan_interval: float = 5.0
    """Seconds between looks into the store for models published there while the node
    runs (0: only when told, by ``peerprog publish --socket``)."""


@dataclass(frozen=True)
class LimitsSection:
    upload_bytes_per_s: int = 0
    """Upload cap of the peer server (0: no limit)."""
    download_bytes_per_s: int = 0
    """Download cap across all sources (0: no limit)."""
    max_in_flight: int = 64
    """Most chunk requests in flight per model."""
    max_connections: int = 64
    """Most simultaneous outgoing connections (0: no limit)."""
    max_connections_per_peer: int = 32
    """Most simultaneous outgoing connections to one peer or web seed (0: no limit)."""
    max_request_bytes: int = 1 << 20
    """Largest request body accepted (announce)."""
    request_timeout: float = 30.0
    """Upper bound on any single network wait, in seconds."""
    name_timeout: float = 10.0
    """Longest wait for a ``names/<name>`` answer, in seconds (at most ``request_timeout``)."""
    disk_full_pause: float = 2.0
    """Seconds without new chunk requests after the store refused a write."""
    header_timeout: float = 10.0
    """Seconds a client may take to send a request's header, on the peer port and the
    API's TCP address; slower connections are closed."""
    keepalive_timeout: float = 75.0
    """Seconds an idle keep-alive connection to the peer port or API's TCP address stays open."""
    max_connections_per_address: int = 128
    """Most connections one remote address may hold open to the peer port or the API's TCP
    address (0: no limit); more are answered 503 and closed."""
    upload_slots: int = 4
    """Chunk uploads the peer server sends at once (at least 1); with an upload cap
    (``upload_bytes_per_s``), one per 6.25 MB/s of it if that is more."""
    upload_queue: int = 2
    """Chunk requests that may wait for an upload slot; more are answered 503 with
    ``Retry-After`` (the requester tries another peer meanwhile). A client that is no
    peerprog node (a BitTorrent client using the node as a web seed) always waits."""


@dataclass(frozen=True)
class SwarmSection:
    """``[swarm]``: how the origin of a model shares it."""

    super_seeding: bool = True
    """On the origin of a model (the node it was published into), show each edge only
    the chunks offered to it, so that each chunk leaves the origin about once and the
    edges trade the rest (:mod:`peerprog.swarm.seeding`)."""


@dataclass(frozen=True)
class BitTorrentSection:
    """``[bittorrent]``: the node in the BitTorrent network (needs the ``bittorrent``
    extra, libtorrent). It seeds every model it holds whole, from the store's level files,
    and fetches the missing chunks of a model it holds in part from BitTorrent peers too
    (beside peerprog peers and web seeds), level 0 first, each checked against the signed
    manifest."""

    enabled: bool = False
    """Run a BitTorrent session (libtorrent) beside the peer protocol."""
    listen: str = "0.0.0.0:6881"
    """``host:port`` the session listens on (TCP and uTP); port 0 picks a free one."""
    dht: bool = True
    """Take part in the mainline DHT (BEP 5): find BitTorrent peers with no tracker."""
    lsd: bool = False
    """Local service discovery (BEP 14): find BitTorrent peers on the local network."""
    trackers: list[str] = field(default_factory=list)
    """Tracker URLs (``http(s)://`` or ``udp://``) every torrent is announced to."""
    peers: list[str] = field(default_factory=list)
    """``host:port`` of BitTorrent peers to connect to (for each torrent), as
    ``peers.bootstrap`` is for peerprog peers."""


@dataclass(frozen=True)
class Config:
    """A whole node configuration."""

    node: NodeSection = field(default_factory=NodeSection)
    api: ApiSection = field(default_factory=ApiSection)
    trust: TrustSection = field(default_factory=TrustSection)
    peers: PeersSection = field(default_factory=PeersSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    bittorrent: BitTorrentSection = field(default_factory=BitTorrentSection)

    @property
    def base_dir(self) -> Path:
        return Path(self.node.data_dir)

    def to_toml(self, comment: str = "") -> str:
        """This config as a TOML document that :func:`parse_config` reads back equal."""
        lines = [f"# {line}" for line in comment.splitlines()]
        for section in dataclasses.fields(self):
            lines += ["", f"[{section.name}]"]
            values = getattr(self, section.name)
            lines += [
                f"{f.name} = {_toml(getattr(values, f.name))}" for f in dataclasses.fields(values)
            ]
        return "\n".join(lines).lstrip("\n") + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped,
    everything else as it is (TOML files are UTF-8; a ``\\u`` escape of a character beyond
    U+FFFF, as JSON writes it, would be a surrogate, which TOML refuses)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _check(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise InputError(f"config: {key} must be a list")
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise InputError(f"config: {key} must be true or false")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"config: {key} must be a number")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"config: {key} must be a finite number, not negative")
        return float(value)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config: {key} must be an integer")
        if value < 0:
            raise InputError(f"config: {key} must not be negative")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise InputError(f"config: {key} must be a string")
        return value
    raise AssertionError(f"unhandled config type {typ} for {key}")  # pragma: no cover


def _section(cls: type, raw: Any, name: str) -> Any:
    if not isinstance(raw, dict):
        raise InputError(f"config: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise InputError(
                f"config: unknown key {name}.{key} (known: {', '.join(sorted(known))})"
            )
    try:
        return cls(**{k: _check(v, hints[k], f"{name}.{k}") for k, v in raw.items()})
    except ValueError as e:  # a section's own check
        raise InputError(f"config: [{name}]: {e}") from None


def parse_config(raw: dict[str, Any], base: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths are taken from ``base``."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in sections:
            raise InputError(f"config: unknown section [{key}] (known: {', '.join(sections)})")
    hints = typing.get_type_hints(Config)
    parts = {k: _section(hints[k], v, k) for k, v in raw.items()}
    cfg = Config(**parts)
    return _validate(_resolve_paths(cfg, base) if base else cfg)


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def rel(p: str) -> str:
        return str(base / p) if p and not Path(p).is_absolute() else p

    return dataclasses.replace(
        cfg,
        node=dataclasses.replace(cfg.node, data_dir=rel(cfg.node.data_dir)),
        api=dataclasses.replace(cfg.api, socket=rel(cfg.api.socket)),
    )


def split_host_port(text: str, key: str) -> tuple[str, int]:
    """``host:port`` → (host, port); :class:`InputError` naming ``key`` if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise InputError(f"config: {key} must be host:port, not {text!r}")
    return host.strip("[]"), int(port)


def _validate(cfg: Config) -> Config:
    split_host_port(cfg.node.listen, "node.listen")
    for key, path in (("node.data_dir", cfg.node.data_dir), ("api.socket", cfg.api.socket)):
        if "\x00" in path:
            raise InputError(f"config: {key} must not contain a NUL character")
    if cfg.node.public_url and not valid_url(cfg.node.public_url):
        raise InputError(f"config: node.public_url {cfg.node.public_url!r} is not an http(s) URL")
    for i, p in enumerate(cfg.trust.publishers):
        try:
            parse_public_key(p)
        except Exception:
            raise InputError(
                f"config: trust.publishers[{i}] is not an ed25519:<base64url> key"
            ) from None
    for key, urls in (
        ("peers.bootstrap", cfg.peers.bootstrap),
        ("peers.web_seeds", cfg.peers.web_seeds),
    ):
        for i, u in enumerate(urls):
            if not valid_url(u):
                raise InputError(f"config: {key}[{i}] must be an http(s) URL, not {u!r}")
    split_host_port(cfg.bittorrent.listen, "bittorrent.listen")
    for i, peer in enumerate(cfg.bittorrent.peers):
        split_host_port(peer, f"bittorrent.peers[{i}]")
    for i, u in enumerate(cfg.bittorrent.trackers):
        if not (valid_url(u) or (u.startswith("udp://") and valid_url("http" + u[3:]))):
            raise InputError(
                f"config: bittorrent.trackers[{i}] must be an http(s):// or udp:// URL, not {u!r}"
            )
    for i, n in enumerate(cfg.models.want):
        if not valid_name(n):
            raise InputError(f"config: models.want[{i}] {n!r} is not a valid model name")
    if cfg.api.listen_tcp:
        host, _ = split_host_port(cfg.api.listen_tcp, "api.listen_tcp")
        if not cfg.api.token:
            raise InputError("config: api.listen_tcp needs api.token to be set")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise InputError("config: api.listen_tcp must be a loopback address")
    for key, value in (
        ("peers.announce_interval", cfg.peers.announce_interval),
        ("peers.have_poll_interval", cfg.peers.have_poll_interval),
        ("limits.request_timeout", cfg.limits.request_timeout),
        ("limits.name_timeout", cfg.limits.name_timeout),
        ("limits.max_in_flight", cfg.limits.max_in_flight),
        ("limits.header_timeout", cfg.limits.header_timeout),
        ("limits.keepalive_timeout", cfg.limits.keepalive_timeout),
        ("limits.upload_slots", cfg.limits.upload_slots),
    ):
        if value <= 0:
            raise InputError(f"config: {key} must be positive")
    if cfg.models.rescan_interval < 0:
        raise InputError("config: models.rescan_interval must be 0 (never) or more")
    if cfg.limits.max_connections_per_address < 0:
        raise InputError("config: limits.max_connections_per_address must be 0 (no limit) or more")
    return cfg


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file; relative paths are from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid TOML (nested too deeply)") from None
    try:
        return parse_config(raw, path.parent.resolve())
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
