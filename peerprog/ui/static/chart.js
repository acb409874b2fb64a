// A small SVG line chart: one x axis, a left y axis and an optional right one, lines or
// steps with point markers. Colours and fonts come from style.css (classes s0, s1, ...).
//
//   drawChart(svg, {
//     width: 480, height: 200,
//     x: {min, max, label, format, ticks},
//     y: {min, max, label, format, ticks, cls}, y2: {...} (optional, the right axis),
//     series: [{points: [[x, y, note]], axis: "y" | "y2", cls: "s0", step, extendTo,
//               markers, endLabel}],
//   })
//
// An axis's label is drawn above it, in the colour of its `cls` (the legend).

import { el } from "./api.js";

const PAD = { left: 46, right: 46, top: 26, bottom: 34 };

// Round tick positions between min and max, about `count` of them.
export function ticks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

export function drawChart(svg, spec) {
  const width = spec.width ?? 480;
  const height = spec.height ?? 200;
  const right = spec.y2 ? PAD.right : 14;
  const plotW = width - PAD.left - right;
  const plotH = height - PAD.top - PAD.bottom;
  const sx = scale(spec.x, PAD.left, PAD.left + plotW);
  const axes = { y: scale(spec.y, PAD.top + plotH, PAD.top) };
  if (spec.y2) axes.y2 = scale(spec.y2, PAD.top + plotH, PAD.top);

  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.classList.add("chart");

  const grid = el("g", { class: "grid" });
  const labels = el("g", { class: "axis" });
  const fmt = (axis) => axis.format ?? ((v) => String(v));
  for (const v of spec.y.ticks ?? ticks(spec.y.min, spec.y.max, 4)) {
    const y = axes.y(v);
    grid.append(el("line", { x1: PAD.left, x2: PAD.left + plotW, y1: y, y2: y }));
    labels.append(el("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", text: fmt(spec.y)(v) }));
  }
  if (spec.y2) {
    for (const v of spec.y2.ticks ?? ticks(spec.y2.min, spec.y2.max, 4)) {
      const y = axes.y2(v);
      labels.append(el("text", { x: PAD.left + plotW + 6, y: y + 4, "text-anchor": "start", text: fmt(spec.y2)(v) }));
    }
  }
  for (const v of spec.x.ticks ?? ticks(spec.x.min, spec.x.max, 5)) {
    const x = sx(v);
    grid.append(el("line", { class: "vertical", x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotH }));
    labels.append(el("text", { x, y: PAD.top + plotH + 16, "text-anchor": "middle", text: fmt(spec.x)(v) }));
  }
  labels.append(
    el("line", { class: "baseline", x1: PAD.left, x2: PAD.left + plotW, y1: PAD.top + plotH, y2: PAD.top + plotH }),
    el("text", { class: "title", x: PAD.left + plotW / 2, y: height - 4, "text-anchor": "middle", text: spec.x.label ?? "" }),
  );
  // the y axes' titles double as the legend: in their series' colour, above each axis
  labels.append(axisTitle(spec.y, 4, "start"));
  if (spec.y2) labels.append(axisTitle(spec.y2, width - 4, "end"));
  svg.append(grid, labels);

  spec.series.forEach((series, i) => {
    const sy = axes[series.axis ?? "y"];
    const cls = series.cls ?? `s${i}`;
    const pts = series.points.map(([x, y, note]) => [sx(x), sy(y), note, x, y]);
    if (pts.length === 0) return;
    let d = "";
    pts.forEach(([x, y], j) => {
      if (j === 0) d += `M${x.toFixed(1)},${y.toFixed(1)}`;
      else if (series.step) d += `H${x.toFixed(1)}V${y.toFixed(1)}`;
      else d += `L${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (series.extendTo !== undefined && series.step) d += `H${sx(series.extendTo).toFixed(1)}`;
    const g = el("g", { class: `series ${cls}` }, el("path", { d }));
    for (const [x, y, note, vx, vy] of pts) {
      if (series.markers === false) continue;
      g.append(el("circle", { cx: x, cy: y, r: 3.2 }, el("title", { text: note ?? `${vx}, ${vy}` })));
    }
    if (series.endLabel) {
      const [x, y] = pts[pts.length - 1];
      g.append(el("text", { class: "end-label", x: x - 2, y: y - 6, "text-anchor": "end", text: series.endLabel }));
    }
    svg.append(g);
  });
}

function axisTitle(axis, x, anchor) {
  const g = el("g", { class: `series ${axis.cls ?? ""}` });
  const text = el("text", { class: "title", x: anchor === "start" ? x + 20 : x - 20, y: 13, "text-anchor": anchor, text: axis.label ?? "" });
  if (axis.cls) {
    const x1 = anchor === "start" ? x : x - 16;
    g.append(el("line", { x1, x2: x1 + 16, y1: 9, y2: 9 }));
  } else {
    text.setAttribute("x", String(x));
  }
  g.append(text);
  return g;
}

function scale(axis, from, to) {
  const span = axis.max - axis.min || 1;
  return (v) => from + ((Math.min(Math.max(v, axis.min), axis.max) - axis.min) / span) * (to - from);
}
