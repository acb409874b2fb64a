"""The web UI in a real headless Chromium, against real daemons on loopback.

One seed (with the TCP API) holds the digits CNN published twice: ``digits-cnn`` with the
default codec, and ``digits-cnn-paper`` with the paper baseline, whose first level is
coarse (about 80% accuracy). Each test that watches a transfer starts its own edge with a
capped download, so that the levels arrive over several seconds while the page is open.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peerprog.reference import digits
from tests.browser.chromium import console_errors, start_chromium
from tests.integration.cluster import TOKEN, Cluster, Daemon, free_port, run_cli
from tests.integration.cluster import wait_until as poll

NAME = digits.MODEL_NAME
PAPER = "digits-cnn-paper"


@contextlib.contextmanager
def static_site(root: Path, port: int) -> Iterator[str]:
    """A plain HTTP server of ``root`` on ``port``: a page from another origin."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


class Setup:
    def __init__(self, cluster: Cluster, seed: Daemon, driver: Any, sites: dict[str, str]):
        self.cluster = cluster
        self.seed = seed
        self.driver = driver
        self.sites = sites  # "evil" (not in api.cors_origins) and "allowed"

    def edge(self, name: str, rate: int) -> Daemon:
        """A new edge with the TCP API, wanting nothing yet, its download capped."""
        return self.cluster.start(
            self.cluster.node(name, bootstrap=[self.seed], api_tcp=True, download_bytes_per_s=rate)
        )

    def open(self, url: str) -> None:
        """``url`` in a new tab (a new sessionStorage), after closing the others."""
        d = self.driver
        d.switch_to.new_window("tab")
        keep = d.current_window_handle
        for handle in d.window_handles:
            if handle != keep:
                d.switch_to.window(handle)
                d.close()
        d.switch_to.window(keep)
        d.get(url)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("browser")
    pages = root / "pages"
    pages.mkdir()
    (pages / "index.html").write_text("<!doctype html><title>elsewhere</title><p>elsewhere</p>")
    ports = {"evil": free_port(), "allowed": free_port()}
    with contextlib.ExitStack() as stack:
        sites = {k: stack.enter_context(static_site(pages, p)) for k, p in ports.items()}
        c = stack.enter_context(Cluster(root / "cluster"))
        c.publish(name=NAME)
        c.publish(name=PAPER, codec="paper")
        seed = c.start(c.seed(api_tcp=True, cors_origins=[sites["allowed"]]))
        driver = start_chromium(root / "profile")
        stack.callback(driver.quit)
        yield Setup(c, seed, driver, sites)


def model_card(driver: Any, name: str) -> tuple[int, bool] | None:
    """(data-level, data-complete) of the dashboard's element for ``name``, if shown."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """const e = document.querySelector(`[data-model="${arguments[0]}"]`);
           return e && [Number(e.dataset.level), e.dataset.complete === "true"];""",
        name,
    )


# --- the dashboard ---------------------------------------------------------------------------


def test_dashboard_shows_the_level_rising_to_exact(setup: Setup) -> None:
    d = setup.driver
    edge = setup.edge("edge-dash", rate=300_000)
    setup.open(f"{edge.tcp_url}/ui/#token={TOKEN}")
    poll(lambda: d.find_element("id", "conn").get_attribute("data-state") == "live", 30, "live")
    # the token left the visible URL for this tab's sessionStorage
    assert d.execute_script("return location.hash") == ""
    assert d.execute_script("return sessionStorage.getItem('peerprog.token')") == TOKEN
    assert model_card(d, NAME) is None

    d.find_element("id", "want-name").send_keys(NAME)
    d.find_element("css selector", "#want button").click()
    seen: list[tuple[int, bool]] = []
    streams = 0  # the page's event streams open at the daemon (opened with tickets)
    deadline = time.monotonic() + 90
    while not (seen and seen[-1][1]):
        assert time.monotonic() < deadline, f"the dashboard showed only {seen}"
        now = model_card(d, NAME)
        if now is not None and (not seen or seen[-1] != tuple(now)):
            seen.append((int(now[0]), bool(now[1])))
            if not now[1]:
                streams = max(streams, edge.client().node_status()["api"]["event_streams"])
        time.sleep(0.03)

    status = edge.client().status(NAME)
    last = status["levels_total"] - 1
    levels = [lv for lv, _ in seen]
    assert levels == sorted(levels), seen  # never goes back
    assert seen[-1] == (last, True) and all(not done for _, done in seen[:-1]), seen
    assert len({lv for lv in levels if lv >= 0}) >= 3, f"too few levels seen rising: {seen}"
    assert status["complete"] and status["level"] == last
    assert streams >= 1, "the dashboard never opened the model's event stream"

    card = d.find_element("css selector", f'[data-model="{NAME}"]')
    assert card.find_element("css selector", ".state").text == "exact"  # moved by the event
    assert card.find_element("css selector", ".level").text == f"{last} / {last}"
    # where the bytes came from: all from the seed here, as the daemon counts them
    seed_item = poll(
        lambda: card.find_elements("css selector", '[data-source="seed"] b'), 10, "sources"
    )
    received = edge.client().node_status()["bytes_received_by_source"]["seed"]
    assert received == status["bytes_total"]
    assert seed_item[0].text.endswith("KiB")
    assert card.find_elements("css selector", ".chart path"), "the level chart is drawn"
    # the seed dialled the edge back: the node line says it is reachable
    poll(lambda: d.find_element("css selector", "#node .reach").text == "reachable", 30, "reach")
    assert console_errors(d) == []


def test_dashboard_remove_button_removes_the_model(setup: Setup) -> None:
    """Two clicks on Remove: the edge stops wanting the model and deletes it from its store."""
    d = setup.driver
    edge = setup.edge("edge-remove", 0)
    edge.client().want(NAME)
    edge.client().best(NAME, min_level="max", wait=60)
    setup.open(f"{edge.tcp_url}/ui/#token={TOKEN}")
    card = poll(lambda: d.find_elements("css selector", f'[data-model="{NAME}"]'), 30, "card")[0]
    button = card.find_element("css selector", "button.remove")
    button.click()
    assert button.text == "Click again to remove"
    button.click()

    def answered() -> str | None:
        alert = d.find_element("id", "alert")
        if alert.is_displayed() and alert.text:
            return f"{alert.get_attribute('data-error')}: {alert.text}"
        if model_card(d, NAME) is None:
            return "gone"
        return None

    said = poll(answered, 20, "the answer to DELETE")
    assert said in ("gone", f": Removed {NAME}."), said
    assert NAME not in [m["name"] for m in edge.client().models()]
    models = edge.data_dir / "models"
    poll(lambda: not any(models.iterdir()), 10, f"the store to be empty: {list(models.iterdir())}")


# --- the inference page ----------------------------------------------------------------------


def test_inference_accuracy_rises_level_by_level_to_the_full_models(
    setup: Setup, tmp_path: Path
) -> None:
    d = setup.driver
    edge = setup.edge("edge-infer", rate=60_000)
    setup.open(f"{edge.tcp_url}/ui/infer.html?model={PAPER}#token={TOKEN}")
    want = d.find_element("id", "want")
    poll(want.is_displayed, 30, "the page to offer fetching the model")
    want.click()
    acc = d.find_element("id", "accuracy")
    seen: list[tuple[int, float]] = []
    deadline = time.monotonic() + 180
    while not seen or seen[-1][0] < 7:
        assert time.monotonic() < deadline, f"the page measured only {seen}"
        level = int(acc.get_attribute("data-level"))
        if level >= 0 and (not seen or seen[-1][0] != level):
            seen.append((level, float(acc.get_attribute("data-accuracy"))))
        time.sleep(0.05)
    rows = d.execute_script(
        """return [...document.querySelectorAll("#runs tr")].map((r) => [
             Number(r.dataset.level), Number(r.dataset.accuracy), Number(r.dataset.msPerImage)]);"""
    )
    levels_total = edge.client().status(PAPER)["levels_total"]
    assert levels_total == 8 and [lv for lv, *_ in rows] == sorted({lv for lv, _ in seen})
    assert len(rows) >= 3 and rows[0][0] <= 1, f"too few levels measured: {rows}"
    # each level's accuracy in the browser is numpy's on the same level, exactly
    for level, accuracy, _ in rows:
        out = tmp_path / f"level{level}.safetensors"
        run_cli("reconstruct", PAPER, "--store", str(edge.data_dir), "--level", str(level),
                "--out", str(out))  # fmt: skip
        assert accuracy == digits.evaluate(digits.load_state_dict(out)).accuracy, level
    accuracies = [a for _, a, _ in rows]
    assert accuracies == sorted(accuracies) and accuracies[0] < accuracies[-1] - 0.1, rows
    assert accuracies[-1] == digits.evaluate(digits.load_state_dict()).accuracy
    # the drawing pad holds test digit 0, predicted by the last level as numpy predicts it
    x, _ = digits.load_test_split()
    expect = int(np.argmax(digits.predict(digits.load_state_dict(), x[:1])[0]))
    prediction = d.find_element("id", "prediction")
    assert prediction.get_attribute("data-level") == "7"
    assert prediction.get_attribute("data-digit") == str(expect)
    assert all(ms > 0 for *_, ms in rows)


def test_js_forward_pass_equals_numpy_on_the_full_model(setup: Setup) -> None:
    d = setup.driver
    setup.open(f"{setup.seed.tcp_url}/ui/infer.html?model={NAME}#token={TOKEN}")
    acc = d.find_element("id", "accuracy")
    last = str(setup.seed.client().status(NAME)["levels_total"] - 1)
    poll(lambda: acc.get_attribute("data-level") == last, 60, "the full model measured")
    full = digits.load_state_dict()
    assert float(acc.get_attribute("data-accuracy")) == digits.evaluate(full).accuracy

    logits = d.execute_async_script(
        """const done = arguments[arguments.length - 1];
        (async () => {
          const { parseSafetensors } = await import("/ui/safetensors.js");
          const cnn = await import("/ui/cnn.js");
          const token = sessionStorage.getItem("peerprog.token");
          const resp = await fetch("/v1/models/digits-cnn/best?min_level=max",
                                   { headers: { Authorization: `Bearer ${token}` } });
          const model = cnn.prepare(parseSafetensors(await resp.arrayBuffer()).tensors);
          const test = await (await fetch("/ui/data/digits-test.json")).json();
          const images = Float32Array.from(test.images.flat());
          const out = [];
          for (let i = 0; i < test.labels.length; i++) {
            out.push(Array.from(cnn.forward(model, images, i * 64)));
          }
          return out;
        })().then(done, (e) => done(String(e)));"""
    )
    assert isinstance(logits, list), logits
    x, _ = digits.load_test_split()
    expect = digits.predict(full, x)
    got = np.array(logits, dtype=np.float64)
    assert got.shape == expect.shape
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-4)
    assert np.array_equal(got.argmax(1), expect.argmax(1))


def test_safetensors_parser_widens_float16_and_bfloat16(setup: Setup) -> None:
    d = setup.driver
    setup.open(f"{setup.seed.tcp_url}/ui/infer.html#token={TOKEN}")
    values = np.array(
        [0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 6e-8, 1e-7, np.inf, -np.inf, 3.14159, -1e-3],
        dtype=np.float32,
    )
    f16 = values.astype(np.float16)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncated: a bfloat16 pattern
    tensors = {
        "a.f32": ("F32", values.tobytes()),
        "b.f16": ("F16", f16.tobytes()),
        "c.bf16": ("BF16", bf16.tobytes()),
    }
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blob = b""
    for name, (dtype, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": [2, 6],
            "data_offsets": [len(blob), len(blob) + len(raw)],
        }
        blob += raw
    head = json.dumps(header).encode() + b"   "  # odd length: data not 4-byte aligned
    file = len(head).to_bytes(8, "little") + head + blob
    got = d.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import("/ui/safetensors.js").then(({ parseSafetensors }) => {
          const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
          const st = parseSafetensors(bytes.buffer);
          const out = { metadata: st.metadata };
          for (const [k, t] of Object.entries(st.tensors)) {
            out[k] = { shape: t.shape, bits: Array.from(new Uint32Array(t.data.buffer)) };
          }
          done(out);
        }, (e) => done(String(e)));""",
        base64.b64encode(file).decode(),
    )
    assert isinstance(got, dict), got
    assert got["metadata"] == {"format": "pt"}
    want = {
        "a.f32": values,
        "b.f16": f16.astype(np.float32),
        "c.bf16": (bf16.astype(np.uint32) << 16).view(np.float32),
    }
    for name, expect in want.items():
        assert got[name]["shape"] == [2, 6]
        assert got[name]["bits"] == expect.view(np.uint32).tolist(), name


# --- who may read ----------------------------------------------------------------------------

ATTEMPTS = """
const done = arguments[arguments.length - 1];
const api = arguments[0], token = arguments[1];
const auth = { Authorization: `Bearer ${token}` };
const tries = {
  "GET /v1/models with the token": () => fetch(`${api}/v1/models`, { headers: auth }),
  "GET /v1/models": () => fetch(`${api}/v1/models`),
  "GET /v1/status with the token": () => fetch(`${api}/v1/status`, { headers: auth }),
  "POST /v1/tickets with the token": () =>
    fetch(`${api}/v1/tickets`, { method: "POST", headers: auth }),
  "GET best with the token": () => fetch(`${api}/v1/models/digits-cnn/best`, { headers: auth }),
  "GET /ui/index.html": () => fetch(`${api}/ui/index.html`),
  "no-cors GET /v1/models": () => fetch(`${api}/v1/models`, { mode: "no-cors", headers: auth }),
};
(async () => {
  const out = {};
  for (const [what, attempt] of Object.entries(tries)) {
    try {
      const resp = await attempt();
      const text = await resp.text();
      out[what] = resp.type === "opaque" ? "opaque" : `read ${resp.status}: ${text.slice(0, 60)}`;
    } catch (e) {
      out[what] = "blocked";
    }
  }
  out["EventSource"] = await new Promise((resolve) => {
    const es = new EventSource(`${api}/v1/models/digits-cnn/events`);
    es.addEventListener("level", () => { es.close(); resolve("read an event"); });
    es.onerror = () => { es.close(); resolve("blocked"); };
    setTimeout(() => { es.close(); resolve("nothing"); }, 5000);
  });
  return out;
})().then(done, (e) => done(String(e)));
"""


def test_a_page_from_another_origin_cannot_read_anything(setup: Setup) -> None:
    d = setup.driver
    api = setup.seed.tcp_url
    setup.open(f"{setup.sites['evil']}/index.html")
    got = d.execute_async_script(ATTEMPTS, api, TOKEN)  # even with the right token
    assert isinstance(got, dict), got
    for what, outcome in got.items():
        assert outcome in ("blocked", "opaque"), (what, outcome)
    assert got["no-cors GET /v1/models"] == "opaque"  # an answer it cannot read
    # the same requests from an origin in api.cors_origins do read (the control)
    setup.open(f"{setup.sites['allowed']}/index.html")
    got = d.execute_async_script(ATTEMPTS, api, TOKEN)
    assert got["GET /v1/models with the token"].startswith("read 200: [")
    assert got["POST /v1/tickets with the token"].startswith('read 200: {"ticket"')
    assert got["GET /v1/models"].startswith("read 401")


def test_a_wrong_token_gets_nothing(setup: Setup) -> None:
    d = setup.driver
    seed = setup.seed
    for fragment in ("#token=wrong", "#token=", ""):
        setup.open(f"{seed.tcp_url}/ui/{fragment}")
        poll(lambda: d.find_element("id", "conn").get_attribute("data-state") == "refused", 30,
             "the dashboard to give up")  # fmt: skip
        alert = d.find_element("id", "alert")
        assert alert.is_displayed() and alert.get_attribute("data-error") == "unauthorized"
        assert "peerprog ui" in alert.text
        assert d.find_elements("css selector", "[data-model]") == []
        assert d.find_element("id", "node").text.strip() == ""

        setup.open(f"{seed.tcp_url}/ui/infer.html?model={NAME}{fragment}")
        alert = d.find_element("id", "alert")
        poll(lambda: alert.get_attribute("data-error") == "unauthorized", 30, "refused")  # noqa: B023
        acc = d.find_element("id", "accuracy")
        assert acc.get_attribute("data-level") == "-1" and acc.get_attribute("data-accuracy") == ""
        assert d.find_elements("css selector", "#runs tr") == []
    # the right token, for contrast
    setup.open(f"{seed.tcp_url}/ui/#token={TOKEN}")
    last = seed.client().status(NAME)["levels_total"] - 1
    poll(
        lambda: list(model_card(d, NAME) or ()) == [last, True],
        30,
        "the seed's model on the dashboard",
    )
