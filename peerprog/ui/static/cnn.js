// The bundled digits CNN in plain JavaScript, the same forward pass as
// peerprog/reference/digits.py:
//
//   conv 1→32 3x3 pad 1 · ReLU · conv 32→64 3x3 pad 1 · ReLU · maxpool 2
//   · flatten (C, H, W order) · linear 1024→256 · ReLU · linear 256→10
//
// Input: 8x8 images of the digits' raw pixels 0..16, row by row; they are divided by
// PIXEL_MAX before the first layer, as digits.py does. Weights come in PyTorch layout
// (conv: out, in, ky, kx; linear: out, in), as Float32Arrays; sums are taken in float64.

export const SHAPES = {
  "conv1.weight": [32, 1, 3, 3],
  "conv1.bias": [32],
  "conv2.weight": [64, 32, 3, 3],
  "conv2.bias": [64],
  "fc1.weight": [256, 1024],
  "fc1.bias": [256],
  "fc2.weight": [10, 256],
  "fc2.bias": [10],
};
export const PIXEL_MAX = 16;
export const SIDE = 8;
export const CLASSES = 10;
const C1 = 32;
const C2 = 64;
const HIDDEN = 256;

// Check the tensors of a parsed safetensors file and lay them out for forward();
// throws an Error naming a tensor that is missing or has the wrong shape.
export function prepare(tensors) {
  const t = {};
  for (const [name, shape] of Object.entries(SHAPES)) {
    const tensor = tensors[name];
    if (!tensor) throw new Error(`the model has no tensor ${name}`);
    if (tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`tensor ${name} has shape [${tensor.shape}], expected [${shape}]`);
    }
    t[name] = tensor.data;
  }
  // conv2 as (out, ky, kx, in): the inner loop then walks the input channels of one
  // pixel, which the activations hold side by side (H, W, C).
  const w2 = new Float32Array(C2 * 9 * C1);
  const src = t["conv2.weight"];
  for (let o = 0; o < C2; o++) {
    for (let i = 0; i < C1; i++) {
      for (let k = 0; k < 9; k++) w2[(o * 9 + k) * C1 + i] = src[(o * C1 + i) * 9 + k];
    }
  }
  return {
    w1: t["conv1.weight"], b1: t["conv1.bias"], w2, b2: t["conv2.bias"],
    w3: t["fc1.weight"], b3: t["fc1.bias"], w4: t["fc2.weight"], b4: t["fc2.bias"],
    weights: Object.values(t).reduce((n, a) => n + a.length, 0),
  };
}

// Scratch space for one image (forward() is not re-entrant; a worker has its own).
const a1 = new Float64Array(SIDE * SIDE * C1); // H, W, C
const a2 = new Float64Array(SIDE * SIDE * C2); // H, W, C
const pooled = new Float64Array(C2 * 16); // C, H, W (torch's flatten order)
const hidden = new Float64Array(HIDDEN);

// Logits (Float32Array of 10) of one image: 64 raw pixels 0..16 from `pixels` at `offset`.
export function forward(model, pixels, offset = 0, out = new Float32Array(CLASSES)) {
  const { w1, b1, w2, b2, w3, b3, w4, b4 } = model;
  // conv1 + ReLU
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      const at = (y * SIDE + x) * C1;
      for (let o = 0; o < C1; o++) {
        let s = b1[o];
        for (let ky = 0; ky < 3; ky++) {
          const yy = y + ky - 1;
          if (yy < 0 || yy >= SIDE) continue;
          for (let kx = 0; kx < 3; kx++) {
            const xx = x + kx - 1;
            if (xx < 0 || xx >= SIDE) continue;
            s += w1[o * 9 + ky * 3 + kx] * (pixels[offset + yy * SIDE + xx] / PIXEL_MAX);
          }
        }
        a1[at + o] = s > 0 ? s : 0;
      }
    }
  }
  // conv2 + ReLU
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      const at = (y * SIDE + x) * C2;
      for (let o = 0; o < C2; o++) {
        let s = b2[o];
        for (let ky = 0; ky < 3; ky++) {
          const yy = y + ky - 1;
          if (yy < 0 || yy >= SIDE) continue;
          for (let kx = 0; kx < 3; kx++) {
            const xx = x + kx - 1;
            if (xx < 0 || xx >= SIDE) continue;
            const w = (o * 9 + ky * 3 + kx) * C1;
            const a = (yy * SIDE + xx) * C1;
            for (let i = 0; i < C1; i++) s += w2[w + i] * a1[a + i];
          }
        }
        a2[at + o] = s > 0 ? s : 0;
      }
    }
  }
  // maxpool 2, flattened (C, H, W)
  for (let c = 0; c < C2; c++) {
    for (let py = 0; py < 4; py++) {
      for (let px = 0; px < 4; px++) {
        const p = ((2 * py) * SIDE + 2 * px) * C2 + c;
        pooled[c * 16 + py * 4 + px] = Math.max(a2[p], a2[p + C2], a2[p + SIDE * C2], a2[p + (SIDE + 1) * C2]);
      }
    }
  }
  // fc1 + ReLU
  for (let j = 0; j < HIDDEN; j++) {
    let s = b3[j];
    const row = j * 1024;
    for (let k = 0; k < 1024; k++) s += w3[row + k] * pooled[k];
    hidden[j] = s > 0 ? s : 0;
  }
  // fc2
  for (let j = 0; j < CLASSES; j++) {
    let s = b4[j];
    const row = j * HIDDEN;
    for (let k = 0; k < HIDDEN; k++) s += w4[row + k] * hidden[k];
    out[j] = s;
  }
  return out;
}

// The class with the largest logit (the first one on a tie, as numpy's argmax).
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export function softmax(logits) {
  const m = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

// Predictions and accuracy on a test split {images: Float32Array (N x 64), labels}.
export function evaluate(model, images, labels) {
  const n = labels.length;
  const predictions = new Uint8Array(n);
  const logits = new Float32Array(CLASSES);
  let correct = 0;
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    predictions[i] = argmax(forward(model, images, i * 64, logits));
    if (predictions[i] === labels[i]) correct++;
  }
  const ms = performance.now() - start;
  return { predictions, accuracy: correct / n, ms, msPerImage: ms / n };
}
