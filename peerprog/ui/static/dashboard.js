// The dashboard: every model of the node with its level, bytes, rate, ETA, where the bytes
// came from and its peers, live. GET /v1/status is polled every POLL_MS; each model being
// fetched also has its event stream open, so that a new level shows at once. Each model's
// element carries data-model, data-level (best complete level, -1 for none) and
// data-complete ("true" or "false").

import { Api, ApiError, TOKEN_HELP, el, humanBytes, humanSeconds, modelPath, showAlert, takeToken } from "./api.js";
import { drawChart } from "./chart.js";

const POLL_MS = 1000;
// Browsers open at most 6 HTTP/1.1 connections to one host, for all its tabs: a few event
// streams at once, the other models are seen by the polls alone.
const MAX_STREAMS = 3;
let streamsOpen = 0;
const RATE_WINDOW_S = 4;
const SOURCES = [
  ["seed", "seed"],
  ["peer", "peers"],
  ["web_seed", "web seeds"],
  ["bittorrent", "BitTorrent"],
];

const api = new Api(takeToken());
const cards = new Map(); // name -> Card
let pollTimer = null;
let refused = false;

class Card {
  constructor(name) {
    this.name = name;
    this.samples = []; // [seconds, bytes_received] of the current model id
    this.modelId = null;
    this.stream = null;
    this.levelOf = undefined;
    this.level = -1;
    this.complete = false;
    this.f = {};
    const f = this.f;
    this.root = el(
      "article",
      { class: "model", dataset: { model: name, level: "-1", complete: "false" } },
      el(
        "header",
        {},
        el("h2", { text: name }),
        (f.version = el("span", { class: "badge" })),
        (f.codec = el("span", { class: "badge" })),
        (f.id = el("code", { class: "model-id" })),
        (f.state = el("span", { class: "state" })),
        el("span", { class: "grow" }),
        (f.open = el("a", {
          class: "button",
          href: `infer.html?model=${encodeURIComponent(name)}`,
          title: "run the bundled digits CNN in this browser on this model's levels",
          text: "Run in browser",
        })),
        (f.remove = el("button", { type: "button", class: "remove", text: "Remove", onclick: () => this.remove() })),
      ),
      (f.waiting = el("p", { class: "note waiting", text: "No peer, seed or web seed has offered this model yet; the node keeps looking." })),
      (f.body = el(
        "div",
        { class: "body" },
        el(
          "div",
          { class: "info" },
          (f.levels = el("div", { class: "levels", "aria-label": "levels" })),
          (f.levelText = el("p", { class: "level-text" })),
          el(
            "dl",
            { class: "stats" },
            stat("Level", (f.level = el("dd", { class: "level" }))),
            stat("Received", (f.bytes = el("dd"))),
            stat("Rate", (f.rate = el("dd"))),
            stat("ETA", (f.eta = el("dd"))),
            stat("Peers", (f.peers = el("dd"))),
          ),
          el("h3", { text: "Where the bytes came from" }),
          (f.sourceBar = el("div", { class: "source-bar" })),
          (f.sources = el("ul", { class: "sources" })),
          (f.peerList = el("ul", { class: "peer-list" })),
        ),
        el("div", { class: "plot" }, (f.chart = el("svg", { class: "chart" })), (f.chartNote = el("p", { class: "note" }))),
      )),
    );
  }

  // Show one model's status (doc: an entry of /v1/status "models"; t: its transfer).
  update(doc, transfer, now) {
    const f = this.f;
    if (doc.model_id !== this.modelId) {
      this.modelId = doc.model_id;
      this.samples = [];
    }
    this.setLevel(doc.model_id, doc.level, doc.complete);
    doc = { ...doc, level: this.level, complete: this.complete };
    const wanted = doc.model_id === null;
    f.body.hidden = wanted;
    f.waiting.hidden = !wanted;
    f.id.hidden = wanted;
    f.open.hidden = wanted;
    f.version.textContent = wanted ? "wanted" : `v${doc.version}`;
    f.codec.textContent = (doc.codec ?? "") + (doc.files ? ` · ${doc.files} files` : "");
    f.codec.hidden = !doc.codec;
    f.id.textContent = wanted ? "" : doc.model_id.slice(0, 12);
    f.id.title = doc.model_id ?? "";
    const last = (doc.levels_total ?? 0) - 1;
    f.state.textContent = wanted ? "looking for sources" : doc.complete ? "exact" : doc.level >= 0 ? "approximate" : "no level yet";
    f.state.dataset.state = wanted ? "wanted" : doc.complete ? "exact" : doc.level >= 0 ? "approximate" : "none";
    f.level.textContent = wanted ? "–" : `${doc.level < 0 ? "none" : doc.level} / ${last}`;

    const got = doc.bytes_received ?? 0;
    const total = doc.bytes_total;
    f.bytes.replaceChildren(
      total ? humanBytes(got) : "–",
      ...(total ? [el("span", { class: "sub", text: ` of ${humanBytes(total)} · ${Math.floor((100 * got) / total)}%` })] : []),
    );

    this.samples.push([now, got]);
    while (this.samples.length > 2 && this.samples[0][0] < now - RATE_WINDOW_S) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    const rate = t1 > t0 ? (b1 - b0) / (t1 - t0) : null;
    if (wanted) return;
    if (doc.complete) {
      f.rate.textContent = "–";
      f.eta.textContent = "done";
    } else {
      f.rate.textContent = rate === null ? "measuring…" : `${humanBytes(rate)}/s`;
      f.eta.textContent = rate > 0 && total ? humanSeconds((total - got) / rate) : "–";
    }
    f.peers.textContent = String(doc.peers ?? 0);

    this.drawLevels(doc, transfer);
    this.drawSources(transfer);
    this.drawChart(doc, transfer, now);
    if (doc.complete) this.unfollow();
    else this.follow();
  }

  // The level shown never goes back for one model id: an event may be newer than a poll.
  setLevel(modelId, level, complete) {
    if (modelId !== this.levelOf) {
      this.levelOf = modelId;
      this.level = -1;
      this.complete = false;
    }
    this.level = Math.max(this.level, level);
    this.complete ||= complete;
    this.root.dataset.level = String(this.level);
    this.root.dataset.complete = this.complete ? "true" : "false";
    if (modelId !== null) { // an event moves the label too, not only the next poll
      const state = this.complete ? "exact" : this.level >= 0 ? "approximate" : "none";
      this.f.state.dataset.state = state;
      this.f.state.textContent = state === "none" ? "no level yet" : state;
    }
  }

  drawLevels(doc, transfer) {
    const f = this.f;
    const n = doc.levels_total ?? 0;
    const sizes = transfer?.levels?.map((lv) => lv.bytes) ?? Array(n).fill(1);
    const total = sizes.reduce((a, b) => a + b, 0) || 1;
    if (f.levels.childElementCount !== n) {
      f.levels.replaceChildren(
        ...sizes.map((size, i) => {
          const seg = el("div", { class: "segment", title: `level ${i}: ${humanBytes(size)}` }, el("div", { class: "fill" }));
          seg.style.flexGrow = String(size / total);
          return seg;
        }),
      );
    }
    // bytes beyond the complete levels count towards the next one
    let spare = (doc.bytes_received ?? 0) - sizes.slice(0, doc.level + 1).reduce((a, b) => a + b, 0);
    [...f.levels.children].forEach((seg, i) => {
      const fill = seg.firstChild;
      let part = 0;
      if (i <= doc.level) part = 1;
      else if (i === doc.level + 1 && spare > 0) part = Math.min(1, spare / sizes[i]);
      seg.dataset.state = part === 1 ? "done" : part > 0 ? "partial" : "empty";
      fill.style.width = `${(100 * part).toFixed(1)}%`;
    });
    f.levelText.textContent = n
      ? doc.level < 0
        ? `${n} levels; none complete yet`
        : doc.complete
          ? `all ${n} levels: the exact model`
          : `levels 0–${doc.level} of 0–${n - 1} complete: an approximation`
      : "";
  }

  drawSources(transfer) {
    const f = this.f;
    const by = transfer?.bytes_by_source ?? {};
    const sum = SOURCES.reduce((a, [k]) => a + (by[k] ?? 0), 0);
    f.sourceBar.replaceChildren(
      ...SOURCES.filter(([k]) => by[k] > 0).map(([k, label]) => {
        const part = el("div", { class: `src src-${k}`, title: `${label}: ${humanBytes(by[k])}` });
        part.style.flexGrow = String(by[k] / sum);
        return part;
      }),
    );
    f.sourceBar.hidden = sum === 0;
    if (sum === 0) {
      const fromDisk = transfer?.chunks_from_disk ?? 0;
      f.sources.replaceChildren(el("li", { class: "note", text: fromDisk ? "every byte was on this node's disk" : "nothing received yet" }));
    } else {
      f.sources.replaceChildren(
        ...SOURCES.map(([k, label]) =>
          el("li", { dataset: { source: k } }, el("span", { class: `swatch src-${k}` }), `${label} `, el("b", { text: humanBytes(by[k] ?? 0) })),
        ),
      );
    }
    const peers = Object.entries(transfer?.bytes_by_peer ?? {}).sort((a, b) => b[1] - a[1]);
    f.peerList.replaceChildren(
      ...peers.slice(0, 6).map(([peer, n]) => el("li", {}, el("code", { text: peer }), ` ${humanBytes(n)}`)),
      ...(peers.length > 6 ? [el("li", { class: "note", text: `and ${peers.length - 6} more` })] : []),
    );
  }

  drawChart(doc, transfer, now) {
    const f = this.f;
    const starts = Object.values(transfer?.first_request_at ?? {});
    const done = Object.entries(transfer?.level_complete_at ?? {}).map(([lv, t]) => [Number(lv), t]);
    if (starts.length === 0 || doc.levels_total === null) {
      f.chart.replaceChildren();
      f.chart.hidden = true;
      f.chartNote.textContent = doc.complete ? "Held in full since the daemon started: nothing to chart." : "The chart starts with the first request.";
      return;
    }
    f.chart.hidden = false;
    const t0 = Math.min(...starts);
    done.sort((a, b) => a[1] - b[1]);
    const end = doc.complete && done.length ? done[done.length - 1][1] : Math.max(now, t0 + 1);
    const span = Math.max(end - t0, 1);
    const levelPts = [[0, -1, "fetch started"], ...done.map(([lv, t]) => [t - t0, lv, `level ${lv} at ${(t - t0).toFixed(1)} s`])];

    // quality: the weights' signal-to-noise ratio, from the manifest's rel_rmse_ppm
    const levels = transfer?.levels ?? [];
    const snr = levels.map((lv) => {
      const ppm = lv.quality?.rel_rmse_ppm;
      return ppm === undefined ? null : ppm === 0 ? Infinity : 20 * Math.log10(1e6 / ppm);
    });
    const finite = snr.filter((v) => v !== null && Number.isFinite(v));
    const spec = {
      width: 460,
      height: 210,
      x: { min: 0, max: span, label: "seconds since the first request", format: (v) => `${v}` },
      y: { min: -1, max: Math.max(doc.levels_total - 1, 1), label: "level", cls: "s0", ticks: range(-1, doc.levels_total - 1), format: (v) => (v < 0 ? "none" : `${v}`) },
      series: [{ points: levelPts, step: true, extendTo: doc.complete ? undefined : span, cls: "s0" }],
    };
    if (finite.length) {
      const top = Math.ceil((Math.max(...finite) + 10) / 20) * 20;
      spec.y2 = {
        min: 0,
        max: top,
        label: "weights SNR",
        cls: "s1",
        ticks: [...ticksEvery(0, top - 20, top >= 100 ? 40 : 20), top],
        format: (v) => (v === top && snr.includes(Infinity) ? "exact" : `${v} dB`),
      };
      const pts = done
        .filter(([lv]) => snr[lv] !== null && snr[lv] !== undefined)
        .map(([lv, t]) => [t - t0, Number.isFinite(snr[lv]) ? snr[lv] : top, Number.isFinite(snr[lv]) ? `level ${lv}: ${snr[lv].toFixed(1)} dB` : `level ${lv}: exact`]);
      spec.series.push({ points: pts, axis: "y2", cls: "s1", step: true, extendTo: doc.complete ? undefined : span });
    }
    drawChart(f.chart, spec);
    f.chartNote.textContent = finite.length
      ? "Weights SNR: how close each level's weights are to the exact ones (from the manifest's rel_rmse), in dB."
      : "";
  }

  // Keep this model's event stream open while it is being fetched.
  follow() {
    if (this.stream || streamsOpen >= MAX_STREAMS) return;
    streamsOpen++;
    this.stream = api.events(this.name, {
      onLevel: (doc) => {
        this.setLevel(doc.model_id, doc.level, doc.level === doc.levels_total - 1);
        schedulePoll(50);
      },
      onComplete: (doc) => {
        this.setLevel(doc.model_id, doc.level, true);
        this.unfollow();
        schedulePoll(50);
      },
      onError: (e) => {
        if (e?.unauthorized) refuse();
      },
    });
  }

  async remove() {
    const button = this.f.remove;
    if (button.dataset.confirm !== "yes") {
      button.dataset.confirm = "yes";
      button.textContent = "Click again to remove";
      setTimeout(() => {
        button.dataset.confirm = "";
        button.textContent = "Remove";
      }, 4000);
      return;
    }
    button.disabled = true;
    try {
      await api.fetch(modelPath(this.name), { method: "DELETE" });
      note(`Removed ${this.name}.`);
    } catch (e) {
      showAlert(`Could not remove ${this.name}: ${e.message}`, { code: e.code ?? "" });
    } finally {
      button.disabled = false;
      button.dataset.confirm = "";
      button.textContent = "Remove";
      schedulePoll(0);
    }
  }

  unfollow() {
    if (!this.stream) return;
    this.stream.close();
    this.stream = null;
    streamsOpen--;
  }

  close() {
    this.unfollow();
    this.root.remove();
  }
}

function stat(label, dd) {
  return el("div", {}, el("dt", { text: label }), dd);
}

function range(a, b) {
  const out = [];
  for (let v = a; v <= b; v++) out.push(v);
  return out;
}

function ticksEvery(a, b, step) {
  const out = [];
  for (let v = a; v <= b; v += step) out.push(v);
  return out;
}

// An info line that goes away by itself (errors stay until the next action).
function note(text) {
  showAlert(text, { kind: "info" });
  clearTimeout(note.timer);
  note.timer = setTimeout(() => {
    if (document.getElementById("alert").dataset.kind === "info") showAlert("");
  }, 4000);
}

function refuse() {
  refused = true;
  clearTimeout(pollTimer);
  for (const card of cards.values()) card.close();
  cards.clear();
  setConnection("refused", "token refused");
  showAlert(TOKEN_HELP, { code: "unauthorized" });
  document.getElementById("want").hidden = true;
}

function setConnection(state, text) {
  const c = document.getElementById("conn");
  c.dataset.state = state;
  c.textContent = text;
}

// Whether peers can dial this node, and the reverse channels it uploads over if not.
function reachText(status) {
  const ch = status.channels ?? {};
  const held = ch.to_peers ?? 0;
  if (status.reachable === true) return "reachable";
  if (status.reachable === false)
    return `not reachable: uploads over ${held} reverse ${held === 1 ? "channel" : "channels"}`;
  return "reachability not known yet";
}

function showNode(status) {
  const by = status.bytes_received_by_source ?? {};
  const received = Object.values(by).reduce((a, b) => a + b, 0);
  document.getElementById("node").replaceChildren(
    el("b", { text: status.node }),
    ` · peerprog ${status.peerprog_version} · up ${humanSeconds(status.uptime_s)} · `,
    `${status.peers} ${status.peers === 1 ? "peer" : "peers"} · received ${humanBytes(received)} · uploaded ${humanBytes(status.bytes_uploaded)} · `,
    el("span", { class: "reach", text: reachText(status) }),
  );
  document.title = `peerprog · ${status.node}`;
}

async function poll() {
  if (refused) return;
  let status;
  try {
    status = await api.json("/v1/status");
  } catch (e) {
    if (e instanceof ApiError && e.unauthorized) return refuse();
    setConnection("offline", "daemon not answering");
    return schedulePoll(2 * POLL_MS);
  }
  setConnection("live", "live");
  showNode(status);
  const now = Date.now() / 1000;
  const newest = new Map();
  for (const doc of status.models) if (!newest.has(doc.name)) newest.set(doc.name, doc);
  const list = document.getElementById("models");
  for (const [name, card] of cards) {
    if (!newest.has(name)) {
      card.close();
      cards.delete(name);
    }
  }
  for (const [name, doc] of [...newest].sort((a, b) => a[0].localeCompare(b[0]))) {
    let card = cards.get(name);
    if (!card) {
      card = new Card(name);
      cards.set(name, card);
    }
    list.append(card.root); // keeps the order by name
    card.update(doc, doc.model_id ? status.transfers[doc.model_id] : undefined, now);
  }
  document.getElementById("empty").hidden = newest.size > 0;
  schedulePoll(POLL_MS);
}

function schedulePoll(ms) {
  if (refused) return;
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, ms);
}

document.getElementById("want").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("want-name");
  const name = input.value.trim();
  if (!name) return;
  try {
    await api.fetch(modelPath(name), { method: "PUT" });
    note(`Asked the node for ${name}.`);
    input.value = "";
  } catch (e) {
    if (e.unauthorized) return refuse();
    showAlert(`Could not fetch ${name}: ${e.message}`, { code: e.code ?? "" });
  }
  schedulePoll(0);
});

poll();
