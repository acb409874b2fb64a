"""What a ``best`` or ``tree`` request is answered with: a model's decoded level on disk
(a safetensors file, or a repository's folder).

The node keeps each model's newest decoded level as a safetensors file (built as levels
complete, or when first asked for); every request for that model and level is answered
from that one file by ``sendfile``, so a client costs neither a copy of the model nor a
decode of its own. A request that comes while the file is being built is sent it as it is
written, tensor by tensor, so the app's download overlaps the decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peerprog.api.view import GrowingView
from peerprog.codec import exact_at
from peerprog.manifest import Manifest

PIECE = 1 << 20
"""Bytes sent at a time to a client of the TCP listener (paced by its reading)."""


@dataclass(frozen=True)
class BestFile:
    """One model at one level, as a decoded safetensors file."""

    model_id: str
    name: str
    version: int
    codec: str
    level: int
    levels_total: int
    bytes_received: int
    """Bytes of the levels decoded (0..level), as published."""
    bytes_total: int
    path: Path
    """The decoded safetensors file, or a repository's folder."""
    size: int
    manifest: Manifest
    growing: GrowingView | None = None
    """Set while :attr:`path` is still being built: its bytes are sent as they become
    final."""

    @property
    def repository(self) -> bool:
        """A repository: served as a tree of files, not one safetensors file."""
        return self.manifest.is_repository

    @property
    def etag(self) -> str:
        """The strong entity tag: one per model id and level."""
        return etag_of(self.model_id, self.level)

    @property
    def last(self) -> bool:
        """Whether this is the model's last level (nothing better will come)."""
        return self.level == self.levels_total - 1

    @property
    def exact(self) -> bool:
        """Bit for bit the published model (a lossy codec's never is)."""
        return exact_at(self.codec, self.level, self.levels_total)

    def headers(self) -> dict[str, str]:
        """The ``Peerprog-*`` headers, and ``ETag``."""
        return {
            "ETag": self.etag,
            "Peerprog-Model-Id": self.model_id,
            "Peerprog-Level": str(self.level),
            "Peerprog-Levels-Total": str(self.levels_total),
            "Peerprog-Bytes-Received": str(self.bytes_received),
            "Peerprog-Bytes-Total": str(self.bytes_total),
        }


def etag_of(model_id: str, level: int) -> str:
    """The ``ETag`` of a model id at a level."""
    return f'"{model_id}.{level}"'
