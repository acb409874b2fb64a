"""peerprog: progressive peer-to-peer delivery of deep-learning models to edge devices.

Apps use :class:`Client` (sync) or :class:`AsyncClient` to get the best approximate model a
local daemon holds now. The clients are imported lazily so that the pure parts (codec,
manifest, swarm) can be used without aiohttp being imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peerprog._version import __version__

if TYPE_CHECKING:
    from peerprog.api.client import AsyncClient, BestDir, BestModel, Client

__all__ = ["AsyncClient", "BestDir", "BestModel", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "BestModel", "BestDir"):
        from peerprog.api import client

        return getattr(client, name)
    raise AttributeError(f"module 'peerprog' has no attribute {name!r}")
