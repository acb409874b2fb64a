"""The orchestration: prepare, start the swarm, race it against a plain download, report.

Whatever happens — the end, a failure, Ctrl-C, SIGTERM — every process the demo started is
stopped before :func:`run_demo` returns or raises, and the logs stay in ``<out>/work/logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from peerprog import AsyncClient
from peerprog.api.errors import ApiError
from peerprog.cli.output import human_bytes
from peerprog.codec import ParamValue
from peerprog.errors import InputError, PeerprogError
from peerprog.reference import digits
from peerprog_demo import report
from peerprog_demo.baseline import PlainDownload, plain_download
from peerprog_demo.monitor import Event, Monitor
from peerprog_demo.options import DEFAULT_CODEC, DEFAULT_CODEC_PARAMS, DemoOptions
from peerprog_demo.prepare import Published, default_name, publish
from peerprog_demo.quality import Judge, Quality
from peerprog_demo.state import DemoState, Observation
from peerprog_demo.swarm import Child, NodeSpec, Processes, plan
from peerprog_demo.view import View, make_view, quality_text

MARKER = ".peerprog-demo"
READY_TIMEOUT = 30.0
TICK = 0.2


class DemoFailed(PeerprogError):
    """The demo could not finish: a process died, a deadline passed, a request failed."""


def work_dir(out: Path) -> Path:
    """The run's work folder (configs, stores, logs) inside the report folder."""
    return out / "work"


def fresh_work_dir(work: Path) -> None:
    """Empty ``work`` if an earlier demo made it; refuse to touch a folder it did not make."""
    if work.exists():
        if not (work / MARKER).exists():
            raise InputError(
                f"{work} exists and was not made by peerprog demo; choose another --out"
            )
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    (work / MARKER).write_text("made by peerprog demo; emptied at the start of each run\n")


async def wait_ready(spec: NodeSpec, child: Child, deadline: float) -> None:
    """Wait until the node's local API answers; :class:`DemoFailed` if it dies or stalls."""
    client = AsyncClient(spec.socket, timeout=2.0)
    try:
        while True:
            if child.exited is not None:
                raise DemoFailed(
                    f"{spec.name} {child.how_it_ended()} at start; the end of "
                    f"{child.log}:\n{child.tail()}"
                )
            if spec.socket.exists():
                with contextlib.suppress(ApiError):
                    await client.node_status()
                    return
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"{spec.name} did not answer on {spec.socket} within "
                    f"{READY_TIMEOUT:.0f} s; see {child.log}"
                )
            await asyncio.sleep(0.1)
    finally:
        await client.close()


class Race:
    """One run of the swarm against the plain download, from ``t0`` until all is done."""

    def __init__(
        self,
        opts: DemoOptions,
        published: Published,
        specs: list[NodeSpec],
        procs: Processes,
        work: Path,
    ) -> None:
        self.opts = opts
        self.published = published
        self.specs = specs
        self.procs = procs
        self.work = work
        self.t0 = time.monotonic()
        self.clock: Callable[[], float] = lambda: time.monotonic() - self.t0
        self.monitor = Monitor(specs, published.name, self.clock, self._on_event)
        edge1 = specs[1].name
        self.state = DemoState(
            published=published,
            monitor=self.monitor,
            plain=PlainDownload(published.source_path, published.file_bytes, opts.rate),
            rate=opts.rate,
            app_edge=edge1,
        )
        self.view: View = make_view(self.state, opts.live, self.clock)
        self.plain_file = work / "plain" / published.source_path.name
        self.app: Child | None = None

    def _on_event(self, ev: Event) -> None:
        p = self.published
        if ev.kind == "level":
            self.view.note(
                ev.t,
                f"{ev.node} reached level {ev.level}/{p.levels_total - 1} "
                f"({human_bytes(ev.bytes)})",
            )
        else:
            exact = p.levels[-1].quality.rel_rms_error == 0
            what = "the exact model" if exact else f"every level (codec {p.codec}: not exact)"
            self.view.note(ev.t, f"{ev.node} holds {what}")

    async def _read_app(self, child: Child) -> None:
        stream = child.proc.stdout
        assert stream is not None
        while line := await stream.readline():
            obs = Observation.from_line(self.clock(), line.decode(errors="replace"))
            if obs is None:
                continue
            self.state.observations.append(obs)
            self.view.note(
                obs.t,
                f"[b]app on {self.state.app_edge}[/b]: level {obs.level} → {quality_text(obs)}",
            )

    async def run(self) -> None:
        """Start the race and wait until every edge, the app and the plain download are done."""
        self.view.start()
        try:
            await self._race()
        finally:
            self.view.stop()

    async def _race(self) -> None:
        name = self.published.name
        edges = self.specs[1:]
        self.t0 = time.monotonic()
        clients = [AsyncClient(s.socket, timeout=5.0) for s in edges]
        try:
            await asyncio.gather(*(c.want(name) for c in clients))
        except ApiError as e:
            raise DemoFailed(f"could not ask the edges for {name}: {e}") from None
        finally:
            for c in clients:
                await c.close()
        self.plain_file.parent.mkdir(parents=True, exist_ok=True)
        tasks: list[asyncio.Task[Any]] = []
        plain = asyncio.create_task(plain_download(self.state.plain, self.plain_file, self.t0))
        tasks.append(plain)
        self.app = await self.procs.start(
            "app",
            [
                sys.executable,
                "-m",
                "peerprog_demo.app",
                "--socket",
                str(edges[0].socket),
                "--name",
                name,
                "--full",
                str(self.published.source_path),
            ],
            self.work / "logs" / "app.log",
            stdout_pipe=True,
        )
        reader = asyncio.create_task(self._read_app(self.app))
        monitor = asyncio.create_task(self.monitor.run())
        tasks += [reader, monitor]
        plain_noted = False
        try:
            while True:
                await asyncio.sleep(TICK)
                now = self.clock()
                self.view.tick(now)
                self._check(now)
                if plain.done():
                    if plain.exception() is not None:
                        raise DemoFailed(f"the plain download failed: {plain.exception()}")
                    if not plain_noted:
                        plain_noted = True
                        self.view.note(
                            now,
                            f"plain HTTP download done: "
                            f"{human_bytes(self.state.plain.total)} in "
                            f"{self.state.plain.seconds:.1f} s",
                        )
                if (
                    plain.done()
                    and self.monitor.all_complete
                    and reader.done()
                    and self.app.exited is not None
                ):
                    break
            await self.monitor.poll_metrics()
            await self.monitor.poll_status()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.monitor.close()

    def _check(self, now: float) -> None:
        for child in self.procs.dead():
            if child.name == "app" and child.exited == 0:
                continue
            raise DemoFailed(
                f"{child.name} {child.how_it_ended()}; the end of {child.log}:\n{child.tail()}"
            )
        if now > self.opts.timeout:
            waiting = [t.name for t in self.monitor.edges if t.complete_at is None]
            raise DemoFailed(
                f"not done after {self.opts.timeout:.0f} s "
                f"(still waiting for: {', '.join(waiting) or 'the app'})"
            )


def codec_params(opts: DemoOptions) -> dict[str, ParamValue] | None:
    """The codec params to publish with: the options', else the demo's ladder for its codec."""
    if opts.codec_params is not None:
        return opts.codec_params
    return dict(DEFAULT_CODEC_PARAMS) if opts.codec == DEFAULT_CODEC else None


def _plain_quality(published: Published, path: Path) -> Quality | None:
    try:
        return Judge(published.source_path)(digits.load_state_dict(path))
    except PeerprogError:
        return None


async def run_demo(opts: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the report document. Raises :class:`DemoFailed` (or
    :class:`InputError` for bad options); every child process is stopped on the way out."""
    console = console or Console(width=None if sys.stdout.isatty() else 110)
    out = opts.out.resolve()
    work = work_dir(out)
    fresh_work_dir(work)
    sockdir = Path(tempfile.mkdtemp(prefix="peerprog-demo-"))
    procs = Processes()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        name = opts.name or default_name(opts.model)
        console.print(
            f"publishing {opts.model or 'the bundled ' + name + ' model'} "
            f"into a fresh seed store in {work}"
        )
        published = await asyncio.to_thread(
            publish,
            opts.model,
            name=name,
            key=opts.key,
            store_dir=work / "seed" / "store",
            workdir=work,
            chunk_size=opts.chunk_size,
            codec=opts.codec,
            params=codec_params(opts),
        )
        specs = plan(
            work,
            sockdir,
            edges=opts.edges,
            rate=opts.rate,
            public_key=published.public_key,
            seed_store=work / "seed" / "store",
        )
        console.print(
            f"starting a seed and {opts.edges} edge daemon"
            f"{'s' if opts.edges != 1 else ''} on loopback (logs in {work / 'logs'})"
        )
        deadline = time.monotonic() + READY_TIMEOUT
        seed_child = await procs.start_daemon(specs[0])
        await wait_ready(specs[0], seed_child, deadline)
        children = [await procs.start_daemon(s) for s in specs[1:]]
        deadline = time.monotonic() + READY_TIMEOUT
        await asyncio.gather(
            *(wait_ready(s, c, deadline) for s, c in zip(specs[1:], children, strict=True))
        )

        ui = specs[1]
        page = f"infer.html?model={name}" if published.metric == "accuracy" else ""
        url = ui.ui_url.replace("/ui/#", f"/ui/{page}#")
        later = "" if opts.keep_running else " (--keep-running keeps the swarm up afterwards)"
        console.print(f"watch it in a browser while the demo runs{later}:")
        console.print(f"  {url}", soft_wrap=True, highlight=False)
        race = Race(opts, published, specs, procs, work)
        await race.run()

        files: dict[str, str | None] = {
            "report": str(out / report.REPORT),
            "chart": str(out / report.CHART),
            "logs": str(work / "logs"),
        }
        doc = report.build(race.state, _plain_quality(published, race.plain_file), files)
        try:
            await asyncio.to_thread(report.chart, doc, out / report.CHART)
        except ImportError:
            files["chart"] = None
            console.print("no chart: matplotlib is not installed (pip install matplotlib)")
        report.write_json(doc, out / report.REPORT)
        console.print()
        report.print_summary(doc, console)
        if opts.keep_running:
            console.print("\nthe swarm stays up (Ctrl-C to stop it); its web UI:")
            console.print(f"  {ui.ui_url}", soft_wrap=True, highlight=False)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        return doc
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGTERM)
        await procs.stop_all()
        shutil.rmtree(sockdir, ignore_errors=True)
