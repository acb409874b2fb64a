"""The crash-safe on-disk store of manifests and chunks, publishing, and the assembler."""

from __future__ import annotations

from peerprog.store.assemble import Assembler
from peerprog.store.disk import Store
from peerprog.store.publish import PublishResult, publish_file, publish_tensors

__all__ = ["Assembler", "PublishResult", "Store", "publish_file", "publish_tensors"]
