"""The swarm is pure: importing it pulls in no event loop, no HTTP client, no torch."""

from __future__ import annotations

import subprocess
import sys


def test_swarm_imports_no_io_or_torch() -> None:
    code = (
        "import sys\n"
        "import peerprog.swarm\n"
        "from peerprog.swarm import Bitfield, PeerStats, Request, Scheduler, SchedulerConfig\n"
        "bad = sorted(m for m in ('asyncio', 'aiohttp', 'torch', 'socket') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"peerprog.swarm imported: {out.stdout.strip()}"
