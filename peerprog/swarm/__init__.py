"""The swarm's policy, sans-IO (no I/O, no asyncio; every call takes ``now``).

Where each rule lives: ``picker.py`` — which chunk next and from whom; ``peers.py`` — a
peer's rate, budget, timeouts and backoff within one model's fetch; ``peertable.py`` — which
peers the node knows and whether they are healthy; ``versions.py`` — which version of a
name wins, is served and is dropped; ``chunks.py`` — holder counts; ``scheduler.py`` ties
the picker, peers and chunks together; ``driver.py`` — every decision of one model's fetch
around the scheduler (requests, timers, what an answer means, when a source is read, lost
or absent); ``uploads.py`` and ``seeding.py`` — the serving side; ``bitfield.py`` is the
``have`` set. The asyncio shell in :mod:`peerprog.node` pumps them, and so does the swarm
simulator (``bench/simulate.py``).
"""

from __future__ import annotations

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.config import SchedulerConfig
from peerprog.swarm.peers import PeerStats
from peerprog.swarm.peertable import (
    SOURCE_KINDS,
    ModelRef,
    Peer,
    PeerHealth,
    PeerTable,
    PeerTableConfig,
    Source,
    SourceState,
)
from peerprog.swarm.request import Request
from peerprog.swarm.scheduler import Scheduler
from peerprog.swarm.versions import Lookup, VersionConfig, VersionPolicy

__all__ = [
    "SOURCE_KINDS",
    "Bitfield",
    "Lookup",
    "ModelRef",
    "Peer",
    "PeerHealth",
    "PeerStats",
    "PeerTable",
    "PeerTableConfig",
    "Request",
    "Scheduler",
    "SchedulerConfig",
    "Source",
    "SourceState",
    "VersionConfig",
    "VersionPolicy",
]
