"""Before the swarm starts: a publisher key, the model published into the seed's store, and
the quality of every level of it (decoded from the store exactly as an edge would)."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peerprog.codec import DEFAULT_CODEC
from peerprog.codec.layout import ParamValue
from peerprog.errors import InputError
from peerprog.formats import read_model
from peerprog.manifest import generate_key_file, load_key_file, public_key_string
from peerprog.reference import digits
from peerprog.store import Store, publish_file
from peerprog_demo.quality import Judge, Quality, as_float


@dataclass(frozen=True)
class LevelInfo:
    """One level of the published model."""

    level: int
    bytes: int
    cumulative_bytes: int
    quality: Quality
    """The quality of the model decoded from levels 0..``level``."""


@dataclass(frozen=True)
class Published:
    """The model as published into the seed's store."""

    name: str
    model_id: str
    codec: str
    source_path: Path
    file_bytes: int
    """Size of the model file: what a plain download moves."""
    source_bytes: int
    total_bytes: int
    """Encoded size of all levels: what an edge moves."""
    public_key: str
    levels: tuple[LevelInfo, ...]
    full_quality: Quality
    metric: str
    """``accuracy`` (the digits CNN) or ``rel_rms_error`` (any other model)."""

    @property
    def levels_total(self) -> int:
        """Number of levels."""
        return len(self.levels)


def default_name(model: Path | None) -> str:
    """``digits-cnn`` for the bundled model, else the file's stem made a valid name."""
    if model is None:
        return digits.MODEL_NAME
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem).strip("-.") or "model"
    return name[:64]


def publisher_key(key: Path | None, workdir: Path) -> tuple[Path, str]:
    """The key file to publish with and its public key; a fresh key if ``key`` is None."""
    if key is None:
        path = workdir / "publisher.pem"
        return path, generate_key_file(path)
    return key, public_key_string(load_key_file(key).public_key())


def publish(
    model: Path | None,
    *,
    name: str,
    key: Path | None,
    store_dir: Path,
    workdir: Path,
    chunk_size: int,
    codec: str | None,
    params: dict[str, ParamValue] | None = None,
) -> Published:
    """Publish ``model`` (default: the bundled digits CNN) into ``store_dir`` and score each
    level. Raises :class:`InputError` for a bad model file or key."""
    source = digits.model_path() if model is None else model
    if not source.is_file():
        raise InputError(f"{source}: no such model file")
    key_path, public = publisher_key(key, workdir)
    store = Store(store_dir)
    result = publish_file(
        source,
        name=name,
        key=load_key_file(key_path),
        store=store,
        codec=codec or DEFAULT_CODEC,
        chunk_size=chunk_size,
        params=params,
    )
    signed = result.signed
    judge = Judge(source)
    levels = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        prior = None
        for lv in result.levels:
            out = Path(tmp) / f"{lv.level}.safetensors"
            store.decode(signed, lv.level, out, prior=prior)
            tensors = read_model(out)
            dtypes = {k: t.dtype for k, t in tensors.items()}
            quality = judge(as_float({k: t.array for k, t in tensors.items()}, dtypes))
            levels.append(LevelInfo(lv.level, lv.bytes, lv.cumulative_bytes, quality))
            prior = out
    return Published(
        name=name,
        model_id=signed.model_id,
        codec=signed.manifest.codec,
        source_path=source,
        file_bytes=source.stat().st_size,
        source_bytes=result.source_bytes,
        total_bytes=result.total_bytes,
        public_key=public,
        levels=tuple(levels),
        full_quality=judge(judge.full),
        metric=judge.metric,
    )
