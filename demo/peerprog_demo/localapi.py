"""The one request of the local API that :class:`peerprog.AsyncClient` does not make from
asyncio: ``GET /metrics`` (Prometheus text), and the two figures the demo reads from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp

TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class MetricsReader:
    """Reads a node's ``/metrics`` over its API socket; ``await close()`` when done."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(self) -> str:
        """The Prometheus text. Raises ``aiohttp.ClientError`` / ``OSError`` on failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)), timeout=TIMEOUT
            )
        async with self._session.get("http://localhost/metrics") as resp:
            resp.raise_for_status()
            return await resp.text()


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample: metric name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[Sample]:
    """Parse Prometheus text exposition (comments and malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append(Sample(m.group(1), labels, value))
    return out


RECEIVED = "peerprog_received_bytes_total"
UPLOADED = "peerprog_model_uploaded_bytes_total"


def bytes_by_source(samples: list[Sample], name: str) -> dict[str, int]:
    """Bytes of model ``name`` received, by source kind (``seed``, ``peer``, ``web_seed``)."""
    out: dict[str, int] = {}
    for s in samples:
        if s.name == RECEIVED and s.labels.get("name") == name and "source" in s.labels:
            kind = s.labels["source"]
            out[kind] = out.get(kind, 0) + int(s.value)
    return out


def bytes_uploaded(samples: list[Sample], name: str) -> int | None:
    """Bytes of model ``name`` this node served to peers (None if not reported)."""
    found = [s.value for s in samples if s.name == UPLOADED and s.labels.get("name") == name]
    return int(sum(found)) if found else None
