"""The crash-safe on-disk store (layout 2): manifests, level files, names; publishing;
decoded levels."""

from __future__ import annotations

from peerprog.store.assemble import DecodedFile, Unusable, build_level, level_metadata
from peerprog.store.assemble_tree import build_tree, tree_doc
from peerprog.store.disk import Store
from peerprog.store.levels import ModelFiles
from peerprog.store.publish import PublishResult, publish_file, publish_model, publish_tensors
from peerprog.store.publish_tree import publish_repo

__all__ = [
    "DecodedFile",
    "ModelFiles",
    "PublishResult",
    "Store",
    "Unusable",
    "build_level",
    "build_tree",
    "level_metadata",
    "publish_file",
    "publish_model",
    "publish_repo",
    "publish_tensors",
    "tree_doc",
]
