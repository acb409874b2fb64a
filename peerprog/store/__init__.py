"""The crash-safe on-disk store (layout 2): manifests, level files, names; publishing;
decoded levels."""

from __future__ import annotations

from peerprog.store.assemble import DecodedFile, Unusable, build_level, level_metadata
from peerprog.store.disk import Store
from peerprog.store.levels import ModelFiles
from peerprog.store.publish import PublishResult, publish_file, publish_model, publish_tensors

__all__ = [
    "DecodedFile",
    "ModelFiles",
    "PublishResult",
    "Store",
    "Unusable",
    "build_level",
    "level_metadata",
    "publish_file",
    "publish_model",
    "publish_tensors",
]
