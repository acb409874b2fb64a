"""Screenshots of the web UI from a real run, and its page weights and inference time.

    python scripts/screenshots.py [--out docs/img] [--rate 100000] [--json]

Starts a real local swarm on loopback (tests/integration/cluster.py): a seed holding the
digits CNN published twice (``digits-cnn`` with the default codec, ``digits-cnn-paper``
with the paper baseline, whose first levels are coarse), a web seed serving the seed's
store, a helper peer that fetched both, and an edge node with the TCP API (the web UI) and
a download cap. In headless Chromium (tests/browser/chromium.py) it asks the edge for
``digits-cnn`` on the dashboard, then opens the inference page on ``digits-cnn-paper`` and
fetches it from there; it takes the dashboard while that model is half-way, and the
inference page once the exact model has been measured. It writes ``dashboard.png`` and
``infer.png`` into ``--out`` and prints what each page loaded (bytes by file, from the
browser's resource timing, the worker's included) and the JavaScript forward pass's time
per image, as measured by the page.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: tests/ holds the cluster helpers

from tests.browser.chromium import missing, poll, start_chromium  # noqa: E402
from tests.integration.cluster import Cluster, Daemon, free_port  # noqa: E402

NAME = "digits-cnn"
PAPER = "digits-cnn-paper"
RESOURCES_JS = """
const all = performance.getEntriesByType("navigation");
return [...all, ...performance.getEntriesByType("resource")]
  .map((e) => ({name: e.name, bytes: e.encodedBodySize, transfer: e.transferSize}));
"""


WARM_JS = """
const done = arguments[arguments.length - 1];
const [token, name] = [arguments[0], arguments[1]];
(async () => {
  const { parseSafetensors } = await import("/ui/safetensors.js");
  const cnn = await import("/ui/cnn.js");
  const resp = await fetch(`/v1/models/${name}/best?min_level=max`,
                           { headers: { Authorization: `Bearer ${token}` } });
  const model = cnn.prepare(parseSafetensors(await resp.arrayBuffer()).tensors);
  const test = await (await fetch("/ui/data/digits-test.json")).json();
  const images = Float32Array.from(test.images.flat());
  const times = [];
  for (let i = 0; i < 5; i++) times.push(cnn.evaluate(model, images, test.labels).msPerImage);
  times.sort((a, b) => a - b);
  return times[2];
})().then(done, (e) => done(String(e)));
"""


@contextlib.contextmanager
def web_seed(store: Path) -> Iterator[str]:
    """``python -m http.server`` on the seed's store: a web seed that ignores Range."""
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--directory", str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def by_file(entries: list[dict[str, Any]], base: str) -> dict[str, int]:
    """Bytes by file name (the API's answers, i.e. the model itself, left out)."""
    out: dict[str, int] = {}
    for e in entries:
        name = str(e["name"]).removeprefix(base).split("#")[0].split("?")[0]
        if name.startswith("/v1/"):
            continue
        out[name] = max(out.get(name, 0), int(e["bytes"]))
    return out


def run(out: Path, rate: int, workdir: Path) -> dict[str, Any]:
    with Cluster(workdir / "cluster") as c, web_seed(c.seed_store) as ws:
        c.publish(name=NAME)
        c.publish(name=PAPER, codec="paper")
        seed = c.start(c.seed())
        helper = c.start(c.node("helper", want=[NAME, PAPER], bootstrap=[seed]))
        for name in (NAME, PAPER):
            helper.client().best(name, min_level="max", wait=120)
        edge: Daemon = c.start(
            c.node(
                "edge-1",
                bootstrap=[seed, helper],
                web_seeds=[ws],
                api_tcp=True,
                download_bytes_per_s=rate,
            )
        )
        driver = start_chromium(workdir / "profile", width=1280, height=1000)
        try:
            return shoot(driver, edge, out)
        finally:
            driver.quit()


def level_of(driver: Any, name: str) -> tuple[int, bool]:
    found = driver.find_elements("css selector", f'[data-model="{name}"]')
    if not found:
        return -2, False
    el = found[0]
    return int(el.get_attribute("data-level")), el.get_attribute("data-complete") == "true"


def shoot(driver: Any, edge: Daemon, out: Path) -> dict[str, Any]:
    base = edge.tcp_url
    # the dashboard: ask for digits-cnn, watch it arrive
    driver.get(f"{base}/ui/#token={edge.token}")
    poll(lambda: driver.find_element("id", "conn").text == "live", 30, "the dashboard")
    field = driver.find_element("id", "want-name")
    field.send_keys(NAME)
    driver.find_element("css selector", "#want button").click()
    poll(lambda: level_of(driver, NAME)[1], 120, f"{NAME} complete on the dashboard")
    dashboard_files = by_file(driver.execute_script(RESOURCES_JS), base)
    dashboard = driver.current_window_handle

    # the inference page in a second tab: fetch the paper-codec model from there
    driver.switch_to.new_window("tab")
    driver.get(f"{base}/ui/infer.html?model={PAPER}#token={edge.token}")  # a new tab: a new session
    want = poll(lambda: driver.find_element("id", "want").is_displayed(), 30, "the Fetch button")
    assert want
    driver.find_element("id", "want").click()
    infer = driver.current_window_handle
    driver.switch_to.window(dashboard)
    poll(lambda: level_of(driver, PAPER)[0] >= 3, 120, f"{PAPER} at level 3 on the dashboard")
    time.sleep(1.2)  # a poll more: rate and ETA of the running transfer
    out.mkdir(parents=True, exist_ok=True)
    full_page(driver, out / "dashboard.png")

    driver.switch_to.window(infer)
    acc = driver.find_element("id", "accuracy")
    poll(lambda: acc.get_attribute("data-level") == "7", 180, "the exact model on the page")
    # draw nothing: the pad shows the first test digit and the exact model's prediction
    time.sleep(0.3)
    full_page(driver, out / "infer.png")
    infer_files = by_file(driver.execute_script(RESOURCES_JS), base)
    worker_files = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const w = new Worker("infer-worker.js", {type: "module"});
        w.onmessage = (ev) => {
          if (ev.data.type === "resources") { done(ev.data.entries); w.terminate(); }
        };
        w.postMessage({type: "resources"});
        """
    )
    for name, n in by_file(worker_files, base).items():
        infer_files[name] = max(infer_files.get(name, 0), n)
    rows = driver.execute_script(
        """return [...document.querySelectorAll("#runs tr")].map((r) => ({
             level: +r.dataset.level, accuracy: +r.dataset.accuracy, bytes: +r.dataset.bytes,
             ms_per_image: +r.dataset.msPerImage}));"""
    )
    warm = driver.execute_async_script(WARM_JS, edge.token, PAPER)
    return {
        "dashboard": {"files": dashboard_files, "bytes": sum(dashboard_files.values())},
        "infer": {"files": infer_files, "bytes": sum(infer_files.values())},
        "levels": rows,
        "ms_per_image": sorted(r["ms_per_image"] for r in rows)[len(rows) // 2],
        "warm_ms_per_image": warm,
    }


def full_page(driver: Any, path: Path) -> None:
    """A PNG of the whole page, however tall (DevTools' captureBeyondViewport)."""
    size = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--rate", type=int, default=100_000, help="the edge's download cap, B/s")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="pp-shots-") as tmp:
        doc = run(args.out, args.rate, Path(tmp))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for page in ("dashboard", "infer"):
        print(f"{page}: {doc[page]['bytes']} bytes in {len(doc[page]['files'])} files")
        for name, n in sorted(doc[page]["files"].items()):
            print(f"  {n:>8}  {name}")
    print("levels:", ", ".join(f"{r['level']}: {r['accuracy']:.4f}" for r in doc["levels"]))
    print(
        f"JavaScript forward pass: {doc['ms_per_image']:.2f} ms per image (median over the "
        f"levels, in the worker), {doc['warm_ms_per_image']:.2f} ms warm (median of 5 runs of "
        "the test split on the page's thread)"
    )
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'infer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
