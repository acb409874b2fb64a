// The daemon's local API, from a page that its TCP listener served.
//
// The token arrives once in the URL fragment (#token=..., as `peerprog ui` prints it; a
// fragment is never sent to any server), is kept in sessionStorage (this tab only) and is
// taken out of the visible URL. Every fetch() sends it as "Authorization: Bearer <token>".
// EventSource cannot send headers: each stream is opened with a single-use ticket from
// POST /v1/tickets instead.

const TOKEN_KEY = "peerprog.token";

export function takeToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status; // 0: the daemon did not answer
    this.code = code;
  }
  get unauthorized() {
    return this.status === 401;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  // fetch() with the token; resolves to the Response when it is ok, else throws ApiError.
  async fetch(path, { method = "GET", headers = {}, signal } = {}) {
    let resp;
    try {
      resp = await fetch(path, {
        method,
        signal,
        cache: "no-store",
        headers: { ...headers, Authorization: `Bearer ${this.token}` },
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "daemon not answering", `no answer from the daemon (${e.message})`);
    }
    if (!resp.ok) {
      let doc = {};
      try {
        doc = await resp.json();
      } catch {
        // not JSON: keep the status alone
      }
      throw new ApiError(resp.status, doc.error, doc.detail);
    }
    return resp;
  }

  async json(path, options) {
    return (await this.fetch(path, options)).json();
  }

  // Follow a model's server-sent events; handlers: onLevel(status), onComplete(status),
  // onOpen(), onError(error). Reopens (with a new ticket) after an error, backing off.
  // Returns {close()}.
  events(name, handlers) {
    let source = null;
    let closed = false;
    let delay = 1000;
    let timer = null;
    const again = () => {
      if (closed) return;
      timer = setTimeout(open, delay);
      delay = Math.min(2 * delay, 15000);
    };
    const open = async () => {
      if (closed) return;
      let ticket;
      try {
        ({ ticket } = await this.json("/v1/tickets", { method: "POST" }));
      } catch (e) {
        handlers.onError?.(e);
        if (!e.unauthorized) again();
        return;
      }
      if (closed) return;
      const url = `/v1/models/${encodeURIComponent(name)}/events?ticket=${encodeURIComponent(ticket)}`;
      source = new EventSource(url);
      source.onopen = () => {
        delay = 1000;
        handlers.onOpen?.();
      };
      source.addEventListener("level", (ev) => handlers.onLevel?.(JSON.parse(ev.data)));
      source.addEventListener("complete", (ev) => {
        handlers.onComplete?.(JSON.parse(ev.data));
        stop();
      });
      source.onerror = () => {
        // The ticket is used up: never let EventSource retry with it; open anew.
        source?.close();
        source = null;
        handlers.onError?.(null);
        again();
      };
    };
    const stop = () => {
      closed = true;
      clearTimeout(timer);
      source?.close();
      source = null;
    };
    open();
    return { close: stop };
  }
}

export function modelPath(name, tail = "") {
  return `/v1/models/${encodeURIComponent(name)}${tail}`;
}

// "1.5 MiB" style sizes (binary units, as the CLI prints them).
export function humanBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let u = 0;
  while (Math.abs(n) >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return u === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[u]}`;
}

export function humanSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 1) return "< 1 s";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// Build an element: el("div", {class: "x", dataset: {model: "m"}}, child, "text", ...).
export function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "path", "line", "text", "circle", "rect", "polyline", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Show or clear the page's alert line (the element id="alert"); kind: "error" or "info".
export function showAlert(message, { kind = "error", code = "" } = {}) {
  const box = document.getElementById("alert");
  if (!box) return;
  box.hidden = !message;
  box.textContent = message ?? "";
  box.dataset.kind = kind;
  box.dataset.error = code;
}

export const TOKEN_HELP =
  "The daemon refused the token. Open the address that \"peerprog ui\" prints: it carries the token after #token=.";
