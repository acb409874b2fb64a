"""One recorded scenario, two pumps: the daemon's fetcher (asyncio, a fake transport) and
the swarm simulator (a fake clock, simulated links) drive the same driver, and take the
same decisions.

The scenario: one edge fetches a 7-chunk model from one origin, one request at a time
(so that the decisions do not depend on how fast either shell runs). The origin declines
the first range request (503, Retry-After 0.05 s), answers the second with an empty body
(short), and serves every other one. Both shells must send the same range requests, in the
same order, and report the same outcomes in the same order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bench import simulate
from peerprog.node.diskguard import DiskGuard
from peerprog.node.fetcher import Fetcher, FetchSettings
from peerprog.node.peerclient import Busy
from peerprog.node.state import ModelState
from peerprog.swarm import Bitfield, ModelRef, PeerTable, PeerTableConfig, SchedulerConfig
from peerprog.swarm.driver import Action, Driver, DriverConfig, Fetch
from peerprog.swarm.havelog import HaveDelta
from tests.unit.test_fetcher_faults import WORKERS, FakeBody, FakeStore, model

SEED = 7
RETRY_AFTER = 0.05
CONFIG = DriverConfig(
    scheduler=SchedulerConfig(
        min_in_flight_per_peer=1,
        max_in_flight_per_peer=1,
        min_queue_bytes=0,
        failure_backoff=0.01,
        failure_backoff_max=0.01,
    )
)

Trace = list[tuple[str, tuple[int, ...]]]


def record(driver: Driver, trace: Trace) -> None:
    """Log every range request the driver decides, and every outcome reported to it."""
    step = driver.step

    def logged(now: float, *, hold: bool = False) -> list[Action]:
        actions = step(now, hold=hold)
        trace.extend(("fetch", a.chunks) for a in actions if isinstance(a, Fetch))
        return actions

    driver.step = logged  # type: ignore[method-assign]
    for name in ("on_busy", "on_end", "on_failed"):
        report = getattr(driver, name)

        def wrapped(fetch: Fetch, *a: Any, _r: Any = report, _n: str = name) -> None:
            trace.append((_n, fetch.chunks))
            _r(fetch, *a)

        setattr(driver, name, wrapped)


class ScriptedOrigin:
    """The fetcher's transport: the origin of the scenario."""

    def __init__(self, levels: list[bytes], count: int) -> None:
        self.levels, self.count, self.ranges = levels, count, 0

    async def get_have(self, root: str, model_id: str, count: int) -> Bitfield:
        raise AssertionError("the origin has a have stream")

    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> HaveDelta:
        if since == ("", 0):
            return HaveDelta("o", count, full=Bitfield.full(count))
        await asyncio.Event().wait()  # nothing new, ever: held until the fetch ends
        raise AssertionError

    async def get_manifest(self, root: str, model_id: str) -> bytes:
        raise AssertionError("not a web seed")

    @contextlib.asynccontextmanager
    async def get_range(
        self, root: str, model_id: str, level: int, start: int, stop: int, size: int, t: float
    ) -> AsyncIterator[FakeBody]:
        self.ranges += 1
        await asyncio.sleep(0)
        if self.ranges == 1:
            raise Busy("upload slots busy", RETRY_AFTER)
        data = b"" if self.ranges == 2 else self.levels[level][start:stop]
        yield FakeBody(data, start)


async def fetcher_trace() -> Trace:
    signed, levels, _ = model()
    m = signed.manifest
    table = PeerTable(PeerTableConfig(), prefix="/p2p/v1")
    table.heard_from("http://origin", "o", [ModelRef(m.name, signed.model_id, 1, True, True)], 0)
    state = ModelState(signed, Bitfield(len(m.chunks)), origin=False)
    f = Fetcher(
        state,
        transport=ScriptedOrigin(levels, len(m.chunks)),
        sink=FakeStore(m),
        sources=table,
        disk=DiskGuard(0.005, lambda: 1 << 40),
        on_stored=lambda s, i: s.add_chunk(i) and None,
        settings=FetchSettings(driver=CONFIG, request_timeout=5.0, seed=SEED),
        workers=WORKERS,
    )
    trace: Trace = []
    record(f.driver, trace)
    await asyncio.wait_for(f.run(), 20)
    assert state.complete
    return trace


class ScriptedSim(simulate.Sim):
    """The simulator with the scenario's layout, driver settings and scripted origin."""

    def __init__(self, trace: Trace) -> None:
        signed, _, _ = model()
        m = signed.manifest
        args = simulate.parser().parse_args(
            ["--levels-mb", "1", "--chunk-mib", "1", "--seed-up", "1",
             "--classes", '[["edge", 1.0, 1e6, 1e6]]', "--degree", "0", "--join-window", "0",
             "--churn-horizon", "1", "--lat-min", "0.001", "--lat-max", "0.001",
             "--max-in-flight", "64", "--upload-slots", "4", "--upload-queue", "2",
             "--no-super-seeding", "--max-time", "60", "--wall-limit", "60"]
        )  # fmt: skip
        super().__init__(args, 1)
        self.levels = [lv.chunks for lv in m.levels]
        self.sizes = [c.length for c in m.chunks]
        self.nchunks, self.total = len(self.sizes), float(sum(self.sizes))
        self.level0 = float(sum(self.sizes[i] for i in self.levels[0]))
        self.config = CONFIG
        self.trace = trace
        self.ranges = 0

    def on_join(self, e: simulate.Node) -> None:
        super().on_join(e)
        assert e.table is not None
        e.driver = Driver(
            simulate.MODEL, self.levels, self.sizes, e.table, config=CONFIG, seed=SEED
        )
        record(e.driver, self.trace)

    def arrive(self, run: simulate.Run) -> None:
        self.ranges += 1
        if self.ranges == 1:
            run.state = simulate.CANCELLED
            self.at(self.now + self.lat(run.e, run.p), self.declined, run, RETRY_AFTER)
        elif self.ranges == 2:
            run.state = simulate.ENDED
            self.at(self.now + self.lat(run.e, run.p), self.run_end, run)
        else:
            super().arrive(run)


def test_the_fetcher_and_the_simulator_take_the_same_decisions() -> None:
    from_fetcher = asyncio.run(fetcher_trace())
    from_sim: Trace = []
    sim = ScriptedSim(from_sim)
    sim.run()
    assert sim.results()["completed"] == 1
    assert from_fetcher[:4] == [
        ("fetch", from_fetcher[0][1]),
        ("on_busy", from_fetcher[0][1]),
        ("fetch", from_fetcher[0][1]),  # the same chunk, once Retry-After is up
        ("on_end", from_fetcher[0][1]),  # short: the chunk fails, and is asked again
    ]
    # The same requests in the same order, and the same outcomes in the same order (a
    # shell may step between a body's last chunk and its end: when, is the shell's pace).
    for kinds in ({"fetch"}, {"on_busy", "on_end", "on_failed"}):
        assert [t for t in from_sim if t[0] in kinds] == [t for t in from_fetcher if t[0] in kinds]
    fetched = [c for kind, chunks in from_fetcher if kind == "fetch" for c in chunks]
    assert sorted(set(fetched)) == list(range(7))
