// A safetensors file, parsed in the browser: an 8-byte little-endian header length, a JSON
// header (each tensor's dtype, shape and data_offsets; "__metadata__" holds strings), then
// the tensors' bytes. Every float tensor comes out as a Float32Array: F32 is copied, F16 is
// widened exactly, BF16 (uint16 bit patterns: the high half of a float32) is shifted into
// place, F64 is rounded. Integer and bool tensors come out as Float32Array too (small
// values are exact); I64/U64 beyond 2^53 lose precision.

const ITEM_SIZE = {
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, U64: 8, I32: 4, U32: 4, I16: 2, U16: 2, I8: 1, U8: 1, BOOL: 1,
};

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export class FormatError extends Error {}

// Parse an ArrayBuffer; returns {metadata, tensors: {name: {dtype, shape, data}}}.
export function parseSafetensors(buffer) {
  if (!(buffer instanceof ArrayBuffer)) throw new TypeError("parseSafetensors needs an ArrayBuffer");
  if (buffer.byteLength < 8) throw new FormatError("safetensors: shorter than its 8-byte header length");
  const view = new DataView(buffer);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > buffer.byteLength - 8) {
    throw new FormatError(`safetensors: header of ${headerLength} bytes runs past the end`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(buffer, 8, headerLength)));
  } catch (e) {
    throw new FormatError(`safetensors: header is not JSON (${e.message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new FormatError("safetensors: header is not a JSON object");
  }
  const base = 8 + headerLength;
  const dataLength = buffer.byteLength - base;
  const metadata = header.__metadata__ ?? {};
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: offsets } = info ?? {};
    const size = ITEM_SIZE[dtype];
    if (size === undefined) throw new FormatError(`safetensors: tensor ${name} has unknown dtype ${dtype}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new FormatError(`safetensors: tensor ${name} has a bad shape`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2) {
      throw new FormatError(`safetensors: tensor ${name} has bad data_offsets`);
    }
    const [begin, end] = offsets;
    const count = shape.reduce((a, b) => a * b, 1);
    if (!(Number.isInteger(begin) && Number.isInteger(end) && begin >= 0 && begin <= end && end <= dataLength)) {
      throw new FormatError(`safetensors: tensor ${name} lies outside the file`);
    }
    if (end - begin !== count * size) {
      throw new FormatError(`safetensors: tensor ${name} has ${end - begin} bytes, expected ${count * size}`);
    }
    tensors[name] = { dtype, shape, data: toFloat32(buffer, base + begin, count, dtype) };
  }
  return { metadata, tensors };
}

function toFloat32(buffer, offset, count, dtype) {
  const bytes = new Uint8Array(buffer, offset, count * ITEM_SIZE[dtype]);
  const copy = bytes.slice().buffer; // aligned, and ours
  if (!LITTLE_ENDIAN) return viaDataView(copy, count, dtype);
  switch (dtype) {
    case "F32": return new Float32Array(copy);
    case "BF16": {
      const half = new Uint16Array(copy);
      const bits = new Uint32Array(count);
      for (let i = 0; i < count; i++) bits[i] = half[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case "F16": {
      const half = new Uint16Array(copy);
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(half[i]);
      return out;
    }
    case "F64": return Float32Array.from(new Float64Array(copy));
    case "I64": return Float32Array.from(new BigInt64Array(copy), Number);
    case "U64": return Float32Array.from(new BigUint64Array(copy), Number);
    case "I32": return Float32Array.from(new Int32Array(copy));
    case "U32": return Float32Array.from(new Uint32Array(copy));
    case "I16": return Float32Array.from(new Int16Array(copy));
    case "U16": return Float32Array.from(new Uint16Array(copy));
    case "I8": return Float32Array.from(new Int8Array(copy));
    default: return Float32Array.from(new Uint8Array(copy)); // U8, BOOL
  }
}

function viaDataView(buffer, count, dtype) {
  const v = new DataView(buffer);
  const word = new DataView(new ArrayBuffer(4));
  const out = new Float32Array(count);
  const size = ITEM_SIZE[dtype];
  const read = {
    F64: (o) => v.getFloat64(o, true), F32: (o) => v.getFloat32(o, true),
    F16: (o) => halfToFloat(v.getUint16(o, true)),
    BF16: (o) => { word.setUint32(0, v.getUint16(o, true) << 16); return word.getFloat32(0); },
    I64: (o) => Number(v.getBigInt64(o, true)), U64: (o) => Number(v.getBigUint64(o, true)),
    I32: (o) => v.getInt32(o, true), U32: (o) => v.getUint32(o, true),
    I16: (o) => v.getInt16(o, true), U16: (o) => v.getUint16(o, true),
    I8: (o) => v.getInt8(o), U8: (o) => v.getUint8(o), BOOL: (o) => v.getUint8(o),
  }[dtype];
  for (let i = 0; i < count; i++) out[i] = read(i * size);
  return out;
}

// IEEE 754 binary16 → number (exact: every half is a float32).
export function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}
