// In-browser progressive inference: the bundled digits CNN (cnn.js) runs on the model's
// best level from the daemon, and again on each new level. The page long-polls
//   GET /v1/models/<name>/best?min_level=<next>&wait=30
// parses the safetensors answer (safetensors.js), measures the accuracy on the bundled
// test split in a worker, and predicts the drawing pad's digit on the main thread. The
// element id="accuracy" carries data-level and data-accuracy (0-1) of the latest level.

import { Api, TOKEN_HELP, el, humanBytes, modelPath, showAlert, takeToken } from "./api.js";
import { drawChart } from "./chart.js";
import { CLASSES, forward, prepare, softmax } from "./cnn.js";
import { parseSafetensors } from "./safetensors.js";

const WAIT_S = 30;
const api = new Api(takeToken());
const name = new URLSearchParams(location.search).get("model") || "digits-cnn";
const $ = (id) => document.getElementById(id);

let test = null; // {images: Float32Array, labels: Uint8Array, n}
let runs = []; // one per level evaluated
let model = null; // the latest level, prepared for the pad
let modelId = null;
let firstAsked = null; // when the first level was asked for (performance.now())

// --- the worker ----------------------------------------------------------------------------

const worker = new Worker("infer-worker.js", { type: "module" });
const pending = new Map();
let nextId = 0;
worker.onmessage = (ev) => {
  const { id, type } = ev.data;
  const p = pending.get(id);
  pending.delete(id);
  if (type === "result") p.resolve(ev.data);
  else p.reject(new Error(ev.data.message));
};

function evaluateInWorker(tensors) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ type: "evaluate", id, tensors });
  });
}

// --- the levels ----------------------------------------------------------------------------

async function loadTestSplit() {
  const resp = await fetch("data/digits-test.json", { cache: "no-store" });
  if (!resp.ok) throw new Error(`the test split did not load (HTTP ${resp.status})`);
  const doc = await resp.json();
  const images = Float32Array.from(doc.images.flat());
  const labels = Uint8Array.from(doc.labels);
  worker.postMessage({ type: "test", images, labels });
  return { images, labels, n: labels.length };
}

async function follow() {
  let next = 0;
  for (;;) {
    const started = performance.now();
    let resp;
    try {
      resp = await api.fetch(modelPath(name, `/best?min_level=${next}&wait=${WAIT_S}`));
    } catch (e) {
      if (e.unauthorized) {
        showAlert(TOKEN_HELP, { code: "unauthorized" });
        setStatus("The daemon refused the token.");
        return;
      }
      if (e.status === 503) {
        // not reached within the wait: ask again (at once, unless it answered at once)
        if (performance.now() - started < 1000) await sleep(1000);
        continue;
      }
      if (e.status === 404) {
        setStatus(`This node neither holds nor wants ${name}.`);
        $("want").hidden = false;
      } else {
        setStatus(e.message);
      }
      await sleep(e.status === 404 ? 1000 : 2000);
      continue;
    }
    $("want").hidden = true;
    const h = (k) => resp.headers.get(k);
    const level = Number(h("Peerprog-Level"));
    const levels = Number(h("Peerprog-Levels-Total"));
    const bytes = Number(h("Peerprog-Bytes-Received"));
    const bytesTotal = Number(h("Peerprog-Bytes-Total"));
    if (h("Peerprog-Model-Id") !== modelId) {
      modelId = h("Peerprog-Model-Id"); // a first model, or a new version: start over
      runs = [];
      firstAsked = started;
    }
    const arrivedS = (performance.now() - firstAsked) / 1000;
    const buffer = await resp.arrayBuffer();
    const fetchMs = performance.now() - started;
    const t0 = performance.now();
    let parsed;
    try {
      parsed = parseSafetensors(buffer);
      model = { ...prepare(parsed.tensors), level };
    } catch (e) {
      setStatus(`This page runs the bundled digits CNN; level ${level} of ${name} does not fit it: ${e.message}.`);
      return;
    }
    const parseMs = performance.now() - t0;
    predictPad();
    setStatus(`Level ${level} arrived (${humanBytes(bytes)}); measuring it on ${test.n} test digits…`);
    const r = await evaluateInWorker(parsed.tensors);
    runs.push({ level, levels, bytes, bytesTotal, arrivedS, fetchMs, parseMs, fileBytes: buffer.byteLength, ...r });
    render();
    if (level >= levels - 1) {
      setStatus(`The exact model is here: every level arrived.`);
      return;
    }
    setStatus(`Level ${level} of ${levels - 1} measured; waiting for level ${level + 1}…`);
    next = level + 1;
  }
}

function render() {
  const last = runs[runs.length - 1];
  const exact = last.level === last.levels - 1 ? last : null;
  const acc = $("accuracy");
  acc.dataset.level = String(last.level);
  acc.dataset.accuracy = String(last.accuracy);
  acc.dataset.msPerImage = last.msPerImage.toFixed(3);
  $("accuracy-value").textContent = percent(last.accuracy);
  $("accuracy-caption").textContent =
    `on ${test.n} held-out test digits, with level ${last.level} of ${last.levels - 1}` +
    (exact ? " (the exact model)" : "") +
    ` · ${humanBytes(last.bytes)} of ${humanBytes(last.bytesTotal)} received`;

  const first = runs[0];
  const fact = (label, value) => el("div", {}, el("dt", { text: label }), el("dd", { text: value }));
  const share = (r) => `${Math.round((100 * r.bytes) / r.bytesTotal)}% of the bytes`;
  $("facts").replaceChildren(
    fact(`First level seen (${first.level})`, `${percent(first.accuracy)} with ${humanBytes(first.bytes)}, ${share(first)}`),
    fact("Exact model", exact ? `${percent(exact.accuracy)} with ${humanBytes(exact.bytes)}` : "not yet"),
    fact("Forward pass here", `${last.msPerImage.toFixed(2)} ms per image (${test.n} in ${Math.round(last.ms)} ms)`),
  );

  const rows = runs.map((r) => {
    const bpw = (8 * r.bytes) / r.weights;
    const agree = exact ? agreement(r.predictions, exact.predictions) : null;
    return el(
      "tr",
      { dataset: { level: r.level, accuracy: r.accuracy, bytes: r.bytes, msPerImage: r.msPerImage.toFixed(3) } },
      el("td", { text: r.level === r.levels - 1 ? `${r.level} · exact` : `${r.level}` }),
      el("td", { text: humanBytes(r.bytes) }),
      el("td", { text: bpw.toFixed(2) }),
      el("td", { text: percent(r.accuracy) }),
      el("td", { text: agree === null ? "…" : percent(agree) }),
      el("td", { text: `${r.msPerImage.toFixed(2)} ms` }),
      el("td", { text: `${r.arrivedS.toFixed(1)} s` }),
    );
  });
  $("runs").replaceChildren(...rows);

  const minAcc = Math.min(...runs.map((r) => r.accuracy));
  const lo = Math.max(0, Math.floor((minAcc - 0.04) * 10) / 10);
  const kib = (b) => b / 1024;
  const series = [
    {
      points: runs.map((r) => [kib(r.bytes), r.accuracy, `level ${r.level}: ${percent(r.accuracy)} at ${humanBytes(r.bytes)}`]),
      cls: "s0",
    },
  ];
  if (exact) {
    series.unshift({
      points: [[0, exact.accuracy], [kib(exact.bytesTotal), exact.accuracy]],
      cls: "ref",
      markers: false,
      endLabel: `exact model: ${percent(exact.accuracy)}`,
    });
  }
  drawChart($("chart"), {
    width: 520,
    height: 240,
    x: { min: 0, max: kib(last.bytesTotal), label: "KiB received", format: (v) => `${v}` },
    y: { min: lo, max: 1, label: "accuracy", cls: "s0", format: (v) => `${+(v * 100).toFixed(1)}%` },
    series,
  });
}

function agreement(a, b) {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

function percent(v) {
  return `${(100 * v).toFixed(1)}%`;
}

function setStatus(text) {
  $("status").textContent = text;
}

let wake = null; // ends the current sleep() early

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

$("want").addEventListener("click", async () => {
  try {
    await api.fetch(modelPath(name), { method: "PUT" });
    $("want").hidden = true;
    setStatus(`Asked the node for ${name}; waiting for level 0…`);
    wake?.();
  } catch (e) {
    showAlert(e.unauthorized ? TOKEN_HELP : `Could not ask for ${name}: ${e.message}`, { code: e.code ?? "" });
  }
});

// --- the drawing pad -------------------------------------------------------------------------
// 32x32 cells, each 8x8 block of 4x4 cells summed into one pixel 0..16: how the digits data
// set itself was made from 32x32 bitmaps. A stroke sets cells to 1; a test digit sets each
// cell of a block to pixel/16, so that the block sums give that digit back exactly.

const CELLS = 32;
const cells = new Float32Array(CELLS * CELLS);
const pad = $("pad");
const padCtx = pad.getContext("2d");
const preview = $("preview");
const previewCtx = preview.getContext("2d");
let sample = 0;
let drawing = false;

function pixels() {
  const out = new Float32Array(64);
  for (let y = 0; y < CELLS; y++) for (let x = 0; x < CELLS; x++) out[(y >> 2) * 8 + (x >> 2)] += cells[y * CELLS + x];
  for (let i = 0; i < 64; i++) out[i] = Math.round(out[i]); // the data set's pixels are integers
  return out;
}

function loadSample(i) {
  const img = test.images.subarray(i * 64, i * 64 + 64);
  for (let y = 0; y < CELLS; y++) {
    for (let x = 0; x < CELLS; x++) cells[y * CELLS + x] = img[(y >> 2) * 8 + (x >> 2)] / 16;
  }
  $("pad-note").textContent = `Test digit #${i}, labelled ${test.labels[i]}. Draw over it, or clear the pad and draw your own.`;
  redraw();
}

function paint(ev) {
  const r = pad.getBoundingClientRect();
  const cx = ((ev.clientX - r.left) / r.width) * CELLS;
  const cy = ((ev.clientY - r.top) / r.height) * CELLS;
  const radius = 1.6;
  for (let y = Math.floor(cy - radius); y <= cy + radius; y++) {
    for (let x = Math.floor(cx - radius); x <= cx + radius; x++) {
      if (x < 0 || y < 0 || x >= CELLS || y >= CELLS) continue;
      if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= radius * radius) cells[y * CELLS + x] = 1;
    }
  }
  redraw();
}

function redraw() {
  const s = pad.width / CELLS;
  padCtx.fillStyle = "#ffffff";
  padCtx.fillRect(0, 0, pad.width, pad.height);
  for (let y = 0; y < CELLS; y++) {
    for (let x = 0; x < CELLS; x++) {
      const v = cells[y * CELLS + x];
      if (v === 0) continue;
      padCtx.fillStyle = `rgba(15, 23, 42, ${v.toFixed(3)})`;
      padCtx.fillRect(x * s, y * s, s, s);
    }
  }
  padCtx.strokeStyle = "rgba(100, 116, 139, 0.25)";
  padCtx.lineWidth = 1;
  for (let i = 1; i < 8; i++) {
    const p = Math.round(i * 4 * s) + 0.5;
    padCtx.beginPath();
    padCtx.moveTo(p, 0);
    padCtx.lineTo(p, pad.height);
    padCtx.moveTo(0, p);
    padCtx.lineTo(pad.width, p);
    padCtx.stroke();
  }
  const px = pixels();
  const ps = preview.width / 8;
  for (let i = 0; i < 64; i++) {
    const shade = Math.round(255 - (255 * px[i]) / 16);
    previewCtx.fillStyle = `rgb(${shade}, ${shade}, ${shade})`;
    previewCtx.fillRect((i % 8) * ps, Math.floor(i / 8) * ps, ps, ps);
  }
  predictPad();
}

function predictPad() {
  const bars = $("bars");
  if (!model) {
    bars.replaceChildren(el("p", { class: "note", text: "The prediction shows once level 0 arrives." }));
    $("prediction").textContent = "–";
    return;
  }
  const px = pixels();
  const empty = px.every((v) => v === 0);
  const probs = softmax(forward(model, px));
  let best = 0;
  for (let i = 1; i < CLASSES; i++) if (probs[i] > probs[best]) best = i;
  const prediction = $("prediction");
  prediction.textContent = empty ? "–" : String(best);
  prediction.dataset.digit = empty ? "" : String(best);
  prediction.dataset.level = String(model.level);
  bars.replaceChildren(
    ...probs.map((p, digit) => {
      const fill = el("span", { class: "bar-fill" });
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      return el(
        "div",
        { class: digit === best && !empty ? "bar best" : "bar" },
        el("span", { class: "digit", text: String(digit) }),
        el("span", { class: "bar-track" }, fill),
        el("span", { class: "p", text: `${(100 * p).toFixed(1)}%` }),
      );
    }),
  );
}

pad.addEventListener("pointerdown", (ev) => {
  drawing = true;
  pad.setPointerCapture(ev.pointerId);
  paint(ev);
});
pad.addEventListener("pointermove", (ev) => drawing && paint(ev));
pad.addEventListener("pointerup", () => (drawing = false));
pad.addEventListener("pointercancel", () => (drawing = false));
$("clear").addEventListener("click", () => {
  cells.fill(0);
  $("pad-note").textContent = "Draw a digit, large, filling the square.";
  redraw();
});
$("next").addEventListener("click", () => {
  sample = (sample + 1) % test.n;
  loadSample(sample);
});

// --- start -------------------------------------------------------------------------------------

async function main() {
  $("model-name").textContent = name;
  document.title = `peerprog · ${name} in the browser`;
  try {
    test = await loadTestSplit();
  } catch (e) {
    setStatus(e.message);
    return;
  }
  loadSample(sample);
  setStatus(`Waiting for level 0 of ${name}…`);
  await follow();
}

main();
