"""The swarm: a sans-IO scheduler of chunk requests across peers (no I/O, no asyncio).

Every method takes ``now``; the asyncio shell in :mod:`peerprog.node` drives it. Where to
look: ``picker.py`` holds the rule for which chunk next and from whom; ``peers.py`` the
per-peer rate, budget, timeout and backoff; ``chunks.py`` the holder counts;
``scheduler.py`` ties them together; ``bitfield.py`` is the ``have`` set.
"""

from __future__ import annotations

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.config import SchedulerConfig
from peerprog.swarm.peers import PeerStats
from peerprog.swarm.request import Request
from peerprog.swarm.scheduler import Scheduler

__all__ = ["Bitfield", "PeerStats", "Request", "Scheduler", "SchedulerConfig"]
