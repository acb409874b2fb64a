"""A model as a BitTorrent torrent (BEP 52): the store's level files, one piece per chunk.

The torrent of a model is named by its model id and holds the files ``levels/0`` …
``levels/<n>``; its piece length is the manifest's chunk size, so piece *k* of
``levels/<n>`` is the *k*-th chunk of level *n* (each level starts a new chunk, as each v2
file starts a new piece). It is a *hybrid* torrent: v2's file tree and SHA-256 merkle
trees, and v1's file list and SHA-1 piece hashes, with a BEP 47 pad file after each level
file so that v1's pieces are v2's. v1 lets clients without v2 (Transmission) take part; and
stock libtorrent (2.1.1) corrupts v2-only downloads from web seeds where a file's pad is
shorter than 16 KiB, which hybrid torrents avoid (docs/bittorrent.md). The info dictionary
is byte for byte what libtorrent's ``create_torrent`` writes for the same files.

Everything in it follows from the level files' bytes and the manifest, so every node that
holds a model whole builds the same torrent, with the same info-hashes
(:func:`build_torrent`; nothing such as a creation date is added).

The info-hash cannot be in the manifest (the model id is the manifest's hash, and the torrent
is named by it), so the publisher signs it beside: an Ed25519 signature over
``"peerprog torrent v2\n" + model id + "\n" + v2 info-hash``, carried in the torrent's
top-level ``peerprog`` key, which BitTorrent clients ignore. A node that trusts the
publisher trusts a torrent whose signature verifies (:func:`parse_torrent`).
``url-list`` (BEP 19 web seeds) lies outside the info dictionary: nodes may add their own
address to it without touching the info-hashes or the signature.

Pure: bytes in, bytes out; the files are hashed by whoever reads them
(:class:`FileHasher`).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.errors import InputError, VerificationError
from peerprog.manifest import bencode, signing
from peerprog.manifest.bencode import BencodeError, Value
from peerprog.manifest.model import Manifest

BLOCK = 16 * 1024
"""The leaf size of v2's merkle trees."""
MAX_PIECE = 1 << 26
MAX_TORRENT_BYTES = 64 * 1024 * 1024
SIGNED = b"peerprog torrent v2\n"
ZERO = bytes(32)


class NotATorrentModel(InputError):
    """A model that cannot be a v2 torrent (its chunk size is not a piece length)."""


def piece_length_ok(n: int) -> bool:
    """Whether ``n`` is a v2 piece length: a power of two of at least 16 KiB."""
    return BLOCK <= n <= MAX_PIECE and n & (n - 1) == 0


def _h(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(a + b).digest()


def _zero_root(height: int) -> bytes:
    """The root of a subtree of ``2**height`` zero leaves."""
    node = ZERO
    for _ in range(height):
        node = _h(node, node)
    return node


def merkle_root(leaves: Sequence[bytes], pad: bytes, width: int) -> bytes:
    """The root over ``leaves`` padded with ``pad`` to ``width`` (a power of two ≥ len)."""
    layer = list(leaves) + [pad] * (width - len(leaves))
    while len(layer) > 1:
        pad = _h(pad, pad)
        layer = [_h(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0] if layer else pad


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


@dataclass(frozen=True)
class FileHashes:
    """One file's hashes: v2's merkle root and piece layer, and v1's piece hashes."""

    length: int
    root: bytes
    """``pieces root`` (empty for an empty file)."""
    layer: bytes
    """Its v2 piece layer: each piece's subtree root, concatenated (empty unless the file is
    longer than a piece)."""
    v1: bytes
    """SHA-1 of each of its pieces, the last one padded with zeros to the piece length (as
    the pad file after it makes it in v1; not in a torrent of one file), concatenated."""


class FileHasher:
    """The hashes of one file, fed its bytes in order (memory: one piece's leaf hashes, and
    a few hashes per piece)."""

    def __init__(self, piece_length: int, *, padded: bool = True) -> None:
        """``padded``: v1 pads the file's last piece (a pad file follows every file of a
        torrent of more than one)."""
        if not piece_length_ok(piece_length):
            raise ValueError(f"{piece_length} is not a v2 piece length")
        self._padded = padded
        self._piece = piece_length
        self._per_piece = piece_length // BLOCK
        self._leaves: list[bytes] = []
        self._pieces: list[bytes] = []
        self._v1: list[bytes] = []
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._partial = bytearray()
        self.length = 0

    def update(self, data: bytes | memoryview) -> None:
        """The file's next bytes."""
        view = memoryview(data)
        self.length += len(view)
        if self._partial:
            take = min(BLOCK - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < BLOCK:
                return
            self._block(self._partial)
            self._partial.clear()
        whole = len(view) - len(view) % BLOCK
        for i in range(0, whole, BLOCK):
            self._block(view[i : i + BLOCK])
        self._partial += view[whole:]

    def _block(self, block: bytes | bytearray | memoryview) -> None:
        self._leaves.append(hashlib.sha256(block).digest())
        self._sha1.update(block)
        if len(self._leaves) == self._per_piece:
            self._end_piece()

    def _end_piece(self) -> None:
        self._pieces.append(merkle_root(self._leaves, ZERO, self._per_piece))
        self._v1.append(self._sha1.digest())
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._leaves.clear()

    def finish(self) -> FileHashes:
        """The file's hashes (the hasher is spent)."""
        if self.length == 0:
            return FileHashes(0, b"", b"", b"")
        blocks = -(-self.length // BLOCK)
        if self._partial or self._leaves:  # the last piece: v1 pads it with zeros
            tail = self.length % self._piece
            if self._partial:
                self._leaves.append(hashlib.sha256(self._partial).digest())
            self._sha1.update(self._partial)
            if self._padded:
                self._sha1.update(bytes(self._piece - tail))
            self._partial.clear()
            if blocks <= self._per_piece:  # one piece or less: no layer
                root = merkle_root(self._leaves, ZERO, _pow2_at_least(blocks))
                return FileHashes(self.length, root, b"", self._sha1.digest())
            self._end_piece()
        elif blocks == self._per_piece:  # exactly one piece
            return FileHashes(self.length, self._pieces[0], b"", b"".join(self._v1))
        pad = _zero_root(self._per_piece.bit_length() - 1)
        root = merkle_root(self._pieces, pad, _pow2_at_least(len(self._pieces)))
        return FileHashes(self.length, root, b"".join(self._pieces), b"".join(self._v1))


def hash_file(data: bytes | memoryview, piece_length: int, *, padded: bool = True) -> FileHashes:
    """The hashes of a whole file held in memory (``padded`` as for :class:`FileHasher`)."""
    h = FileHasher(piece_length, padded=padded)
    h.update(data)
    return h.finish()


@dataclass(frozen=True)
class Attestation:
    """The publisher's signature of a model's info-hash."""

    publisher: str
    signature: bytes


@dataclass(frozen=True)
class Torrent:
    """A model's torrent."""

    model_id: str
    info: bytes
    """The bencoded info dictionary."""
    piece_layers: dict[bytes, bytes]
    web_seeds: tuple[str, ...] = ()
    attestation: Attestation | None = field(default=None)

    @property
    def info_hash(self) -> bytes:
        """The v2 info-hash: SHA-256 of the info dictionary."""
        return hashlib.sha256(self.info).digest()

    @property
    def info_hash_v1(self) -> bytes:
        """The v1 info-hash: SHA-1 of the info dictionary."""
        return hashlib.sha1(self.info, usedforsecurity=False).digest()

    def magnet(self) -> str:
        """The magnet link: both info-hashes (``urn:btih``, v1; ``urn:btmh``, v2 as a
        multihash) and the model id as its name."""
        name = urllib.parse.quote(self.model_id, safe="")
        return (
            f"magnet:?xt=urn:btih:{self.info_hash_v1.hex()}"
            f"&xt=urn:btmh:1220{self.info_hash.hex()}&dn={name}"
        )

    def with_web_seeds(self, urls: Sequence[str]) -> Torrent:
        """The torrent with ``urls`` added to its web seeds (those not in it yet)."""
        more = tuple(u for u in urls if u not in self.web_seeds)
        return replace(self, web_seeds=self.web_seeds + more) if more else self

    def signed(self, key: Ed25519PrivateKey) -> Torrent:
        """The torrent with its info-hash signed by ``key`` (the model's publisher)."""
        publisher = signing.public_key_string(key.public_key())
        sig = signing.sign(key, attested_bytes(self.model_id, self.info_hash))
        return replace(self, attestation=Attestation(publisher, sig))

    def to_bytes(self) -> bytes:
        """The ``.torrent`` file."""
        doc: dict[str, object] = {
            "info": _Raw(self.info),
            "piece layers": dict(self.piece_layers),
        }
        if self.web_seeds:
            doc["url-list"] = list(self.web_seeds)
        if self.attestation is not None:
            doc["peerprog"] = {
                "publisher": self.attestation.publisher,
                "signature": self.attestation.signature,
            }
        return _encode_with_raw(doc)


class _Raw(bytes):
    """Bytes already bencoded (the info dictionary, kept as it hashes)."""


def _encode_with_raw(doc: dict[str, object]) -> bytes:
    parts = [b"d"]
    for key in sorted(doc):
        parts.append(bencode.encode(key))
        value = doc[key]
        parts.append(bytes(value) if isinstance(value, _Raw) else bencode.encode(value))
    parts.append(b"e")
    return b"".join(parts)


def attested_bytes(model_id: str, info_hash: bytes) -> bytes:
    """What the publisher signs for a model's torrent."""
    return SIGNED + model_id.encode() + b"\n" + info_hash


def build_torrent(
    manifest: Manifest, model_id: str, files: Sequence[FileHashes], web_seeds: Sequence[str] = ()
) -> Torrent:
    """The torrent of ``manifest`` (id ``model_id``) from its level files' hashes, in level
    order. :class:`NotATorrentModel` if its chunk size is not a piece length;
    ``ValueError`` if ``files`` do not match the levels."""
    if not piece_length_ok(manifest.chunk_size):
        raise NotATorrentModel(
            f"{manifest.name}: chunk size {manifest.chunk_size} is not a BitTorrent v2 piece "
            "length (a power of two from 16 KiB); publish it with such a --chunk-size"
        )
    if [f.length for f in files] != [lv.bytes for lv in manifest.levels]:
        raise ValueError("the files' lengths are not the levels' sizes")
    tree: dict[str, object] = {}
    layers: dict[bytes, bytes] = {}
    v1_files: list[dict[str, object]] = []
    for n, f in enumerate(files):
        entry: dict[str, object] = {"length": f.length}
        if f.length:
            entry["pieces root"] = f.root
        tree[str(n)] = {"": entry}
        if f.layer:
            layers[f.root] = f.layer
        v1_files.append({"length": f.length, "path": ["levels", str(n)]})
        pad = -f.length % manifest.chunk_size if len(files) > 1 else 0
        if pad:  # BEP 47: v1 pieces of a file end where its v2 pieces do
            v1_files.append({"attr": "p", "length": pad, "path": [".pad", str(pad)]})
    info = {
        "file tree": {"levels": tree},
        "files": v1_files,
        "meta version": 2,
        "name": model_id,
        "piece length": manifest.chunk_size,
        "pieces": b"".join(f.v1 for f in files),
    }
    return Torrent(model_id, bencode.encode(info), layers, tuple(web_seeds))


def parse_torrent(
    data: bytes, manifest: Manifest, model_id: str, publisher: str, *, signed_only: bool = False
) -> Torrent:
    """A model's ``.torrent`` file, checked against its manifest: the info dictionary must be
    exactly the one :func:`build_torrent` writes for it (name, piece length, files and their
    sizes; each piece layer must hash to its file's root), and a ``peerprog`` signature, if
    it has one, must verify by ``publisher`` (the manifest's); with ``signed_only`` it must
    have one. :class:`VerificationError` naming what is wrong."""
    if len(data) > MAX_TORRENT_BYTES:
        raise VerificationError("torrent: too large")
    try:
        doc = bencode.decode(data)
    except BencodeError as e:
        raise VerificationError(f"torrent: {e}") from None
    info = doc.get(b"info") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(info, dict):
        raise VerificationError("torrent: no info dictionary")
    info_raw = bencode.encode(info)
    layers = doc.get(b"piece layers", {})
    if not isinstance(layers, dict):
        raise VerificationError("torrent: piece layers is not a dictionary")
    v1 = info.get(b"pieces")
    counts = [-(-lv.bytes // manifest.chunk_size) for lv in manifest.levels]
    if not isinstance(v1, bytes) or len(v1) != 20 * sum(counts):
        raise VerificationError(f"torrent: pieces is not {sum(counts)} SHA-1 hashes")
    files = []
    for lv, count in zip(manifest.levels, counts, strict=True):
        f = _file_of(info, layers, manifest, lv.level)
        start = 20 * sum(counts[: lv.level])
        files.append(replace(f, v1=v1[start : start + 20 * count]))
    torrent = build_torrent(manifest, model_id, files)
    if torrent.info != info_raw:
        raise VerificationError(
            f"torrent: its info dictionary is not model {model_id[:16]}…'s (name, piece "
            "length, files and their pad files)"
        )
    seeds = doc.get(b"url-list", [])
    seeds = [seeds] if isinstance(seeds, bytes) else seeds
    if not isinstance(seeds, list) or not all(isinstance(u, bytes) for u in seeds):
        raise VerificationError("torrent: url-list is not a list of URLs")
    torrent = torrent.with_web_seeds([u.decode(errors="replace") for u in seeds])  # type: ignore[union-attr]
    att = doc.get(b"peerprog")
    if att is None:
        if signed_only:
            raise VerificationError("torrent: its info-hash is not signed by the model's publisher")
        return torrent
    who = att.get(b"publisher") if isinstance(att, dict) else None
    sig = att.get(b"signature") if isinstance(att, dict) else None
    if not isinstance(who, bytes) or not isinstance(sig, bytes):
        raise VerificationError("torrent: its peerprog signature is malformed")
    if who.decode(errors="replace") != publisher:
        raise VerificationError("torrent: signed by another key than the model's publisher")
    try:
        signing.verify(publisher, attested_bytes(model_id, torrent.info_hash), sig)
    except VerificationError:
        raise VerificationError("torrent: the publisher's signature does not verify") from None
    return replace(torrent, attestation=Attestation(publisher, sig))


def _file_of(
    info: dict[bytes, Value], layers: dict[bytes, Value], m: Manifest, n: int
) -> FileHashes:
    """Level ``n``'s file entry and piece layer in a torrent, checked."""
    tree = info.get(b"file tree")
    folder = tree.get(b"levels") if isinstance(tree, dict) else None
    node = folder.get(str(n).encode()) if isinstance(folder, dict) else None
    entry = node.get(b"") if isinstance(node, dict) else None
    size = m.levels[n].bytes
    if not isinstance(entry, dict) or entry.get(b"length") != size:
        raise VerificationError(f"torrent: no file levels/{n} of {size} bytes")
    root = entry.get(b"pieces root", b"")
    if not isinstance(root, bytes) or len(root) != (32 if size else 0):
        raise VerificationError(f"torrent: levels/{n} has no proper pieces root")
    if size <= m.chunk_size:
        return FileHashes(size, root, b"", b"")
    pieces = -(-size // m.chunk_size)
    layer = layers.get(root)
    if not isinstance(layer, bytes) or len(layer) != 32 * pieces:
        raise VerificationError(f"torrent: levels/{n} has no piece layer of {pieces} hashes")
    hashes = [layer[i : i + 32] for i in range(0, len(layer), 32)]
    pad = _zero_root((m.chunk_size // BLOCK).bit_length() - 1)
    if merkle_root(hashes, pad, _pow2_at_least(pieces)) != root:
        raise VerificationError(f"torrent: levels/{n}'s piece layer does not hash to its root")
    return FileHashes(size, root, layer, b"")
