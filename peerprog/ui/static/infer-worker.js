// Evaluates the digits CNN on the test split off the page's main thread.
//   {type: "test", images: Float32Array (N x 64 raw pixels), labels: Uint8Array}
//   {type: "evaluate", id, tensors: {name: {shape, data}}}  ->  {type: "result", id, ...}
//   {type: "resources"}  ->  what this worker loaded (resource timing: the page weight)

import { evaluate, prepare } from "./cnn.js";

let test = null;

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === "test") {
    test = { images: msg.images, labels: msg.labels };
    return;
  }
  if (msg.type === "resources") {
    const entries = performance.getEntriesByType("resource").map((e) => ({ name: e.name, bytes: e.encodedBodySize }));
    self.postMessage({ type: "resources", entries: [{ name: new URL(self.location.href).pathname, bytes: -1 }, ...entries] });
    return;
  }
  if (msg.type === "evaluate") {
    try {
      if (!test) throw new Error("no test split yet");
      const model = prepare(msg.tensors);
      const r = evaluate(model, test.images, test.labels);
      self.postMessage({ type: "result", id: msg.id, weights: model.weights, ...r }, [r.predictions.buffer]);
    } catch (e) {
      self.postMessage({ type: "error", id: msg.id, message: e.message });
    }
  }
};
