"""The assembler: the best prefix of complete levels, decoded into an approximate model.

Levels are handed to the codec's incremental decoder as they complete, so reaching level n
costs about the size of level n, not a decode from scratch.
"""

from __future__ import annotations

from collections.abc import Callable

from peerprog.codec import RawTensor, get_codec
from peerprog.codec.base import Decoder
from peerprog.errors import FormatError, InputError
from peerprog.manifest import Manifest, verify_chunk

ChunkReader = Callable[[int], bytes | None]


class Assembler:
    """Decodes one model level by level from chunks read through ``read_chunk``.

    With ``verify``, every chunk read is checked against the manifest first (for stores
    whose files may have been tampered with since they were written).
    """

    def __init__(self, manifest: Manifest, read_chunk: ChunkReader, *, verify: bool = False):
        self.manifest = manifest
        self._read = read_chunk
        self._verify = verify
        codec = get_codec(manifest.codec)
        self._decoder: Decoder = codec.decoder(manifest.codec_params, manifest.tensors)

    @property
    def level(self) -> int:
        """The best level decoded so far (-1 for none)."""
        return self._decoder.levels_done - 1

    def level_data(self, n: int) -> bytes | None:
        """Level ``n``'s stream joined from its chunks, or None if a chunk is missing."""
        parts = []
        for i in self.manifest.levels[n].chunks:
            data = self._read(i)
            if data is None:
                return None
            if self._verify:
                verify_chunk(self.manifest, i, data)
            parts.append(data)
        return b"".join(parts)

    def advance(self, upto: int | None = None) -> int:
        """Decode every further level whose chunks are all present (up to ``upto``).

        Returns the best level now decoded.
        """
        last = len(self.manifest.levels) - 1 if upto is None else upto
        while self.level < last:
            n = self.level + 1
            data = self.level_data(n)
            if data is None:
                break
            try:
                self._decoder.add_level(n, data)
            except FormatError as e:
                raise FormatError(f"model {self.manifest.name}: level {n}: {e}") from None
        return self.level

    def take_tensors(self) -> dict[str, RawTensor]:
        """The approximation, handing the decoder's memory over: for the last level, when
        no further level will be added. The assembler is spent afterwards."""
        if self.level < 0:
            raise InputError(f"model {self.manifest.name}: level 0 is not complete")
        return self._decoder.take_tensors()

    def tensors(self) -> dict[str, RawTensor]:
        """The current approximation (new arrays); :class:`InputError` before level 0."""
        if self.level < 0:
            raise InputError(f"model {self.manifest.name}: level 0 is not complete")
        return self._decoder.tensors()
