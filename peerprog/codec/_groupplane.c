/* The groupplane codec's per-level kernels in C: one fused pass over a tensor per level.
 *
 * The byte format is the one of peerprog/codec/groupplane.py, whose numpy implementation
 * (groupplane_planes.py, varbits.py, bitpack.py) is the reference; zstd stays in Python (the
 * zstandard package): these kernels produce and consume the uncompressed symbol bytes.
 *
 * Only the CPython buffer protocol is used (no numpy headers). Words are the dtype's bit
 * patterns in native byte order (uint16 for bfloat16 and float16, uint32 for float32), as
 * numpy's ``array.view(dt.word)`` gives them. The heavy loops run without the GIL.
 *
 * Untrusted input (the decoders' symbol bytes, refinement bits, remainder bytes) is never
 * read or written out of bounds: every read of a variable-length stream goes through a
 * bounds-checked load, every cursor is clamped, and the counts are checked against the
 * stream lengths after the pass (then FormatError). Output buffers are sized by the caller
 * from the tensor's shape and checked here.
 *
 * Functions (see groupplane_native.py for how they are called):
 *   encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps)
 *       -> (scales, [(codes, refine) per step], rest, low)
 *   decode_planes(prior|None, n_in, out, scales, e_floor, gsize, size, ebits, mbits,
 *                 k1, r, codes, refine) -> None
 *   decode_remainder(prior, n_in, out, raw, low, size, ebits, mbits) -> None
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FORMAT_VERSION 1
#define MAX_STEP 7
#define RUN 256 /* weights decoded between refills of the expanded symbols */

#if defined(_MSC_VER)
#include <intrin.h>
#define INLINE static __forceinline
static __forceinline int ctz32(uint32_t x) {
    unsigned long i;
    _BitScanForward(&i, x);
    return (int)i;
}
static __forceinline int clz32(uint32_t x) {
    unsigned long i;
    _BitScanReverse(&i, x);
    return 31 - (int)i;
}
#define BSWAP64 _byteswap_uint64
#define BSWAP32 _byteswap_ulong
#else
#define INLINE static inline __attribute__((always_inline))
#define ctz32(x) __builtin_ctz(x)
#define clz32(x) __builtin_clz(x)
#define BSWAP64 __builtin_bswap64
#define BSWAP32 __builtin_bswap32
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BE64(x) (x)
#define BE32(x) (x)
#else
#define BE64(x) BSWAP64(x)
#define BE32(x) BSWAP32(x)
#endif

static PyObject *FormatError; /* peerprog.errors.FormatError */

/* ------------------------------------------------------------------------ float formats */

enum { K_F32 = 0, K_BF16 = 1, K_F16 = 2 };

typedef struct {
    int kind, size, ebits, mbits, bits, bias;
    uint32_t absmask, infbits, mantmask, implicit;
} Fmt;

static int fmt_init(Fmt *f, int size, int ebits, int mbits) {
    if (size == 4 && ebits == 8 && mbits == 23)
        f->kind = K_F32;
    else if (size == 2 && ebits == 8 && mbits == 7)
        f->kind = K_BF16;
    else if (size == 2 && ebits == 5 && mbits == 10)
        f->kind = K_F16;
    else {
        PyErr_SetString(PyExc_ValueError, "unsupported float format");
        return -1;
    }
    f->size = size;
    f->ebits = ebits;
    f->mbits = mbits;
    f->bits = 8 * size;
    f->bias = (1 << (ebits - 1)) - 1;
    f->absmask = (uint32_t)((1ull << (f->bits - 1)) - 1);
    f->infbits = ((1u << ebits) - 1) << mbits;
    f->mantmask = (1u << mbits) - 1;
    f->implicit = 1u << mbits;
    return 0;
}

INLINE uint32_t load_word(const uint8_t *p, Py_ssize_t i, int size) {
    if (size == 2) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    uint32_t v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

INLINE void store_word(uint8_t *p, Py_ssize_t i, int size, uint32_t w) {
    if (size == 2) {
        uint16_t v = (uint16_t)w;
        memcpy(p + 2 * i, &v, 2);
    } else {
        memcpy(p + 4 * i, &w, 4);
    }
}

INLINE float f32_of(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

INLINE uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

/* float16 bits -> float32 (exact), as numpy's half-to-float. */
INLINE float f16_to_f32(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return f32_of(sign | 0x7f800000u | (m << 13));
    if (e) return f32_of(sign | ((e + 112u) << 23) | (m << 13));
    return f32_of(sign | bits_of((float)m * 0x1p-24f)); /* zero and subnormals: exact */
}

/* float32 -> float16 bits, rounding to nearest even (exact for the codec's values). */
INLINE uint32_t f32_to_f16(float f) {
    uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* Inf, NaN (quieted, top payload bits kept) */
        return sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0u);
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* rounds to Inf */
    if (a >= 0x38800000u) {                      /* normal float16 */
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (r >> 13);
    }
    /* subnormal or zero: the multiple of 2**-24 nearest (even on ties) */
    float s = f32_of(a) * 0x1p24f;
    uint32_t m = (uint32_t)s;
    float frac = s - (float)m;
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
    return sign | m;
}

INLINE float to_f32(uint32_t w, int kind) {
    if (kind == K_BF16) return f32_of(w << 16);
    if (kind == K_F32) return f32_of(w);
    return f16_to_f32(w);
}

INLINE uint32_t from_f32(float v, int kind) {
    if (kind == K_BF16) return bits_of(v) >> 16; /* numpy's from_f32 truncates */
    if (kind == K_F32) return bits_of(v);
    return f32_to_f16(v);
}

/* 2**e as a float32, exact (subnormal down to 2**-149). */
static float pow2f(int e) {
    if (e < -149) return 0.0f;
    if (e > 127) return f32_of(0x7f800000u);
    if (e >= -126) return f32_of((uint32_t)(e + 127) << 23);
    return f32_of(1u << (e + 149));
}

/* ------------------------------------------------------------------------ symbols */

/* Symbols of r new bits with their sign, s in [-(2**r - 1), 2**r - 1], travel as digits
 * d = s + 2**r - 1 in base A = 2**(r+1) - 1, PER[r] digits per byte (first digit lowest). */
static int PER[MAX_STEP + 1];
static int APOW[MAX_STEP + 1]; /* A ** PER: a code byte must be below */
static int8_t TABLE[MAX_STEP + 1][256][8];

static void init_tables(void) {
    for (int r = 1; r <= MAX_STEP; r++) {
        int a = (1 << (r + 1)) - 1, per = 1, ap = a;
        while (ap * a <= 256) {
            ap *= a;
            per++;
        }
        PER[r] = per;
        APOW[r] = ap;
        for (int c = 0; c < 256; c++) {
            int x = c;
            for (int i = 0; i < 8; i++) {
                TABLE[r][c][i] = (int8_t)(i < per ? x % a - ((1 << r) - 1) : 0);
                if (i < per) x /= a;
            }
        }
    }
}

/* Big-endian 64-bit window at byte ``off`` of p[0..len), zeros past the end. */
INLINE uint64_t window(const uint8_t *p, Py_ssize_t len, Py_ssize_t off) {
    if (off + 8 <= len) {
        uint64_t v;
        memcpy(&v, p + off, 8);
        return BE64(v);
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (off + i < len ? p[off + i] : 0u);
    return v;
}

/* ------------------------------------------------------------------------ buffers */

typedef struct {
    Py_buffer views[8];
    int n;
} Views;

static int get_view(Views *v, PyObject *obj, Py_buffer **out, int writable) {
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(obj, b, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                            : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    v->n++;
    *out = b;
    return 0;
}

static void release_views(Views *v) {
    for (int i = 0; i < v->n; i++) PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

/* ------------------------------------------------------------------------ decode */

typedef struct {
    const uint8_t *codes;
    Py_ssize_t ncodes, ci; /* code bytes, next one to expand */
    int per;
    const int8_t (*table)[8];
    int8_t buf[4 * RUN + 16];
    int pos, end; /* next symbol, end of the expanded ones */
} Syms;

/* Make at least RUN expanded symbols available at buf[pos..] (zeros once the codes run
 * out: the counts checked after the pass then fail). */
static void syms_refill(Syms *s) {
    int rem = s->end - s->pos;
    if (rem < 0) rem = 0; /* past the end: only zeros were read */
    if (rem) memmove(s->buf, s->buf + s->pos, (size_t)rem);
    s->pos = 0;
    s->end = rem;
    while (s->end < 3 * RUN && s->ci < s->ncodes) {
        memcpy(s->buf + s->end, s->table[s->codes[s->ci]], 8);
        s->end += s->per;
        s->ci++;
    }
    if (s->end < RUN) memset(s->buf + s->end, 0, (size_t)(RUN + 8));
}

/* One run of weights [i0, i1) of a group whose half step is h: the shared loop of a plane
 * step. ``in`` holds n_in words (the rest read as +0), ``out`` may alias ``in``. */
INLINE void plane_run(int kind, int size, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                      Py_ssize_t i0, Py_ssize_t i1, float h, int r, Syms *s,
                      const uint8_t *ref, Py_ssize_t reflen, int64_t *rpos_io,
                      Py_ssize_t *nsig_io) {
    int64_t rpos = *rpos_io;
    Py_ssize_t nsig = 0;
    int sp = s->pos;
    const int8_t *sb = s->buf;
    const int base = 1 - (1 << r);
    Py_ssize_t iend = i1 < n_in ? i1 : n_in;
    if (iend < i0) iend = i0;
    for (Py_ssize_t i = i0; i < iend; i++) {
        float v = to_f32(load_word(in, i, size), kind);
        int sig = v != 0.0f; /* NaN counts, as in numpy */
        int sy = sb[sp];
        uint64_t win = window(ref, reflen, (Py_ssize_t)(rpos >> 3));
        int b = (int)((win << (rpos & 7)) >> (64 - r));
        int st = sig ? 2 * b + base : 2 * sy + (sy > 0) - (sy < 0);
        float o = v + (float)st * copysignf(h, v);
        store_word(out, i, size, from_f32(o, kind));
        sp += !sig;
        rpos += sig ? r : 0;
        nsig += sig;
    }
    for (Py_ssize_t i = iend; i < i1; i++) { /* the zero padding of the last group */
        int sy = sb[sp];
        float o = (float)(2 * sy + (sy > 0) - (sy < 0)) * h;
        store_word(out, i, size, from_f32(o, kind));
        sp++;
    }
    s->pos = sp;
    *rpos_io = rpos;
    *nsig_io += nsig;
}

static int plane_kernel(const Fmt *f, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                        Py_ssize_t total, Py_ssize_t gsize, const uint8_t *scales,
                        int e_floor, int k1, int r, Syms *s, const uint8_t *ref,
                        Py_ssize_t reflen, Py_ssize_t *nsig_out) {
    int64_t rpos = 0;
    Py_ssize_t nsig = 0;
    Py_ssize_t ngroups = total / gsize;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        float h = pow2f((int)scales[g] + e_floor - k1 - 1);
        for (Py_ssize_t i0 = g * gsize, gend = i0 + gsize; i0 < gend; i0 += RUN) {
            Py_ssize_t i1 = i0 + RUN < gend ? i0 + RUN : gend;
            if (s->end - s->pos < RUN) syms_refill(s);
            switch (f->kind) {
            case K_BF16:
                plane_run(K_BF16, 2, in, n_in, out, i0, i1, h, r, s, ref, reflen, &rpos,
                          &nsig);
                break;
            case K_F32:
                plane_run(K_F32, 4, in, n_in, out, i0, i1, h, r, s, ref, reflen, &rpos,
                          &nsig);
                break;
            default:
                plane_run(K_F16, 2, in, n_in, out, i0, i1, h, r, s, ref, reflen, &rpos,
                          &nsig);
            }
        }
    }
    *nsig_out = nsig;
    return 0;
}

static PyObject *py_decode_planes(PyObject *self, PyObject *args) {
    PyObject *prior_o, *out_o, *scales_o, *codes_o, *ref_o;
    Py_ssize_t n_in, gsize;
    int e_floor, size, ebits, mbits, k1, r;
    if (!PyArg_ParseTuple(args, "OnOOiniiiiiOO", &prior_o, &n_in, &out_o, &scales_o, &e_floor,
                          &gsize, &size, &ebits, &mbits, &k1, &r, &codes_o, &ref_o))
        return NULL;
    Fmt f;
    if (fmt_init(&f, size, ebits, mbits) < 0) return NULL;
    if (r < 1 || r > MAX_STEP || k1 < r || k1 > f.mbits || gsize < 1 || n_in < 0) {
        PyErr_SetString(PyExc_ValueError, "bad plane step");
        return NULL;
    }
    Views v = {.n = 0};
    Py_buffer *prior = NULL, *out, *scales, *codes, *ref;
    if ((prior_o != Py_None && get_view(&v, prior_o, &prior, 0) < 0) ||
        get_view(&v, out_o, &out, 1) < 0 || get_view(&v, scales_o, &scales, 0) < 0 ||
        get_view(&v, codes_o, &codes, 0) < 0 || get_view(&v, ref_o, &ref, 0) < 0) {
        release_views(&v);
        return NULL;
    }
    Py_ssize_t total = out->len / size, ngroups = total / gsize;
    if (out->len != total * size || total != ngroups * gsize || scales->len < ngroups ||
        (prior ? prior->len < n_in * size : n_in != 0) || n_in > total) {
        release_views(&v);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the tensor");
        return NULL;
    }
    int per = PER[r], bad_code = 0, bad_scale = 0;
    const uint8_t *cp = codes->buf, *sp = scales->buf;
    Syms *s = PyMem_RawMalloc(sizeof(Syms));
    if (!s) {
        release_views(&v);
        return PyErr_NoMemory();
    }
    s->codes = cp;
    s->ncodes = codes->len;
    s->ci = 0;
    s->per = per;
    s->table = (const int8_t(*)[8])TABLE[r];
    s->pos = s->end = 0;
    Py_ssize_t nsig = 0;
    Py_BEGIN_ALLOW_THREADS;
    int amax = 0, emax = 0;
    for (Py_ssize_t i = 0; i < codes->len; i++) amax = cp[i] > amax ? cp[i] : amax;
    for (Py_ssize_t g = 0; g < ngroups; g++) emax = sp[g] > emax ? sp[g] : emax;
    bad_code = amax >= APOW[r];
    bad_scale = emax + e_floor > (1 << (ebits - 1)); /* e_ceil */
    if (!bad_code && !bad_scale)
        plane_kernel(&f, prior ? prior->buf : NULL, n_in, out->buf, total, gsize, sp, e_floor,
                     k1, r, s, ref->buf, ref->len, &nsig);
    Py_END_ALLOW_THREADS;
    PyMem_RawFree(s);
    Py_ssize_t nsym = total - nsig;
    Py_ssize_t want_codes = (nsym + per - 1) / per;
    Py_ssize_t want_ref = (Py_ssize_t)(((int64_t)nsig * r + 7) / 8);
    Py_ssize_t ncodes = codes->len, nref = ref->len;
    release_views(&v);
    if (bad_scale) {
        PyErr_SetString(FormatError, "group exponent out of range");
        return NULL;
    }
    if (bad_code) {
        PyErr_SetString(FormatError, "symbol byte out of range");
        return NULL;
    }
    if (nref != want_ref) {
        PyErr_Format(FormatError, "refinement bits of %zd bytes, expected %zd", nref, want_ref);
        return NULL;
    }
    if (ncodes != want_codes) {
        PyErr_Format(FormatError, "%zd symbol bytes, expected %zd", ncodes, want_codes);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The remainder: exact words from the prior (midpoints, or 0: then the word comes whole from
 * the byte-shuffled ``raw``) and the packed low bits. */
INLINE void remainder_loop(int size, int mbits, const uint8_t *in, Py_ssize_t n_in,
                           uint8_t *out, Py_ssize_t total, const uint8_t *raw,
                           Py_ssize_t nrest, const uint8_t *low, Py_ssize_t lowlen,
                           int64_t *bpos_io, Py_ssize_t *j_io, int *bad_io) {
    int64_t bpos = 0;
    Py_ssize_t j = 0;
    int bad = 0;
    const int maxw = mbits + 1;
    for (Py_ssize_t i = 0; i < total; i++) {
        uint32_t pw = i < n_in ? load_word(in, i, size) : 0u;
        int sig = pw != 0;
        int t = ctz32(pw | 0x80000000u);
        int width = sig ? t + 1 : 0;
        bad |= width > maxw;
        uint64_t win = window(low, lowlen, (Py_ssize_t)(bpos >> 3));
        uint32_t lowv = (uint32_t)(((win << (bpos & 7)) >> 1) >> (63 - width));
        bpos += width;
        uint32_t mask = (uint32_t)((2ull << t) - 1);
        uint32_t rw = 0;
        if (!sig) {
            if (j < nrest) {
                if (size == 2)
                    rw = ((uint32_t)raw[j] << 8) | raw[nrest + j];
                else
                    rw = ((uint32_t)raw[j] << 24) | ((uint32_t)raw[nrest + j] << 16) |
                         ((uint32_t)raw[2 * nrest + j] << 8) | raw[3 * nrest + j];
            }
            j++;
        }
        store_word(out, i, size, sig ? (pw & ~mask) | lowv : rw);
    }
    *bpos_io = bpos;
    *j_io = j;
    *bad_io = bad;
}

static PyObject *py_decode_remainder(PyObject *self, PyObject *args) {
    PyObject *prior_o, *out_o, *raw_o, *low_o;
    Py_ssize_t n_in;
    int size, ebits, mbits;
    if (!PyArg_ParseTuple(args, "OnOOOiii", &prior_o, &n_in, &out_o, &raw_o, &low_o, &size,
                          &ebits, &mbits))
        return NULL;
    Fmt f;
    if (fmt_init(&f, size, ebits, mbits) < 0) return NULL;
    Views v = {.n = 0};
    Py_buffer *prior, *out, *raw, *low;
    if (get_view(&v, prior_o, &prior, 0) < 0 || get_view(&v, out_o, &out, 1) < 0 ||
        get_view(&v, raw_o, &raw, 0) < 0 || get_view(&v, low_o, &low, 0) < 0) {
        release_views(&v);
        return NULL;
    }
    Py_ssize_t total = out->len / size;
    if (out->len != total * size || n_in < 0 || n_in > total || prior->len < n_in * size) {
        release_views(&v);
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the tensor");
        return NULL;
    }
    Py_ssize_t nrest = raw->len / size, rawlen = raw->len, lowlen = low->len, j = 0;
    int64_t bpos = 0;
    int bad = 0;
    if (rawlen == nrest * size) {
        Py_BEGIN_ALLOW_THREADS;
        if (size == 2)
            remainder_loop(2, mbits, prior->buf, n_in, out->buf, total, raw->buf, nrest,
                           low->buf, lowlen, &bpos, &j, &bad);
        else
            remainder_loop(4, mbits, prior->buf, n_in, out->buf, total, raw->buf, nrest,
                           low->buf, lowlen, &bpos, &j, &bad);
        Py_END_ALLOW_THREADS;
    }
    release_views(&v);
    if (bad) {
        PyErr_SetString(FormatError, "prior values are not midpoints of this codec");
        return NULL;
    }
    if (rawlen != nrest * size || j != nrest) {
        PyErr_Format(FormatError, "remainder of %zd whole bytes, expected %zd", rawlen,
                     (Py_ssize_t)(j * size));
        return NULL;
    }
    if (lowlen != (Py_ssize_t)((bpos + 7) / 8)) {
        PyErr_Format(FormatError, "%zd bytes of packed bits, expected %zd", lowlen,
                     (Py_ssize_t)((bpos + 7) / 8));
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ encode */

typedef struct {
    int hi, lo, r, per, a, off;
    uint32_t mask;
    uint8_t *codes; /* output: code bytes */
    Py_ssize_t ncodes;
    uint8_t *ref; /* output: packed refinement bits */
    Py_ssize_t nref;
    uint8_t *dbuf, *rbuf; /* per chunk: compacted digits and refinement fields */
    int npd, npr;         /* pending (not yet packed) at the head of dbuf / rbuf */
} Step;

INLINE void pack_fields8(uint8_t *out, const uint8_t *fld, int r) {
    uint64_t x = 0;
    for (int j = 0; j < 8; j++) x = (x << r) | fld[j];
    for (int i = 0; i < r; i++) out[i] = (uint8_t)(x >> (8 * (r - 1 - i)));
}

INLINE uint8_t pack_digits(const uint8_t *d, int per, int a) {
    int c = 0;
    for (int j = per - 1; j >= 0; j--) c = c * a + d[j];
    return (uint8_t)c;
}

/* Compact one step's digits (of the weights still 0) and fields (of the others) of a chunk
 * of magnitudes q, and pack whole bytes / groups of 8 fields into the outputs. */
static void step_chunk(Step *st, const uint32_t *q, const uint8_t *neg, Py_ssize_t n) {
    uint8_t *db = st->dbuf, *rb = st->rbuf;
    Py_ssize_t nd = st->npd, nr = st->npr;
    const int hi = st->hi, lo = st->lo, off = st->off;
    const uint32_t mask = st->mask;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t qi = q[i];
        int sig = (qi >> hi) != 0;
        uint32_t b = (qi >> lo) & mask;
        db[nd] = (uint8_t)(neg[i] ? off - (int)b : off + (int)b);
        rb[nr] = (uint8_t)b;
        nd += !sig;
        nr += sig;
    }
    Py_ssize_t full = nd / st->per * st->per;
    uint8_t *co = st->codes + st->ncodes;
    for (Py_ssize_t k = 0; k < full; k += st->per) *co++ = pack_digits(db + k, st->per, st->a);
    st->ncodes = co - st->codes;
    memmove(db, db + full, (size_t)(nd - full));
    st->npd = (int)(nd - full);
    Py_ssize_t fullr = nr & ~(Py_ssize_t)7;
    uint8_t *ro = st->ref + st->nref;
    for (Py_ssize_t k = 0; k < fullr; k += 8, ro += st->r) pack_fields8(ro, rb + k, st->r);
    st->nref = ro - st->ref;
    memmove(rb, rb + fullr, (size_t)(nr - fullr));
    st->npr = (int)(nr - fullr);
}

static void step_flush(Step *st) {
    if (st->npd) {
        memset(st->dbuf + st->npd, 0, 8);
        st->codes[st->ncodes++] = pack_digits(st->dbuf, st->per, st->a);
    }
    if (st->npr) {
        uint8_t tmp[8];
        memset(st->rbuf + st->npr, 0, 8);
        pack_fields8(tmp, st->rbuf, st->r);
        int nb = (st->npr * st->r + 7) / 8;
        memcpy(st->ref + st->nref, tmp, (size_t)nb);
        st->nref += nb;
    }
}

typedef struct { /* MSB-first bit writer, fields of at most 32 bits */
    uint8_t *out;
    uint64_t acc;
    int fill;
} BitWriter;

INLINE void bw_put(BitWriter *w, uint32_t v, int width) {
    w->acc = (w->acc << width) | v;
    w->fill += width;
    uint32_t top = (uint32_t)(w->acc >> ((w->fill - 32) & 63));
    top = BE32(top);
    memcpy(w->out, &top, 4);
    int adv = w->fill >= 32;
    w->out += 4 * adv;
    w->fill -= 32 * adv;
}

static void bw_flush(BitWriter *w) {
    if (w->fill) {
        uint32_t x = (uint32_t)(w->acc << (32 - w->fill));
        for (int i = 0; i < (w->fill + 7) / 8; i++) *w->out++ = (uint8_t)(x >> (24 - 8 * i));
        w->fill = 0;
    }
}

typedef struct {
    Fmt f;
    const uint8_t *words;
    Py_ssize_t numel, total, gsize;
    int e_floor, e_ceil, top, nsteps;
    uint8_t *scales;
    Step steps[32];
    uint8_t *rest; /* rest words, native order, then shuffled by the caller */
    Py_ssize_t nrest;
    BitWriter low;
    uint32_t *q;
    uint8_t *neg;
} Enc;

/* Group exponent E of a group's words: the smallest with every finite |x| < 2**E. */
INLINE int group_exponent(const Fmt *f, uint32_t amax, int e_floor, int e_ceil) {
    int e;
    if (amax == 0) return e_floor;
    int be = (int)(amax >> f->mbits);
    if (be)
        e = be - f->bias + 1;
    else
        e = (31 - clz32(amax)) - f->bias - f->mbits + 2;
    return e < e_floor ? e_floor : e > e_ceil ? e_ceil : e;
}

INLINE void enc_group(Enc *e, int size, const uint8_t *words, Py_ssize_t i0, Py_ssize_t n,
                      Py_ssize_t navail, uint32_t *q, uint8_t *neg, uint8_t *scale) {
    const Fmt *f = &e->f;
    uint32_t amax = 0;
    Py_ssize_t nreal = navail < n ? (navail > 0 ? navail : 0) : n;
    for (Py_ssize_t i = 0; i < nreal; i++) {
        uint32_t a = load_word(words, i0 + i, size) & f->absmask;
        a = a < f->infbits ? a : 0;
        amax = a > amax ? a : amax;
    }
    int E = group_exponent(f, amax, e->e_floor, e->e_ceil);
    *scale = (uint8_t)(E - e->e_floor);
    const int top = e->top, mbits = f->mbits, shift_base = 1 - f->bias - mbits - E + top;
    BitWriter bw = e->low;
    uint8_t *rest = e->rest;
    Py_ssize_t nrest = e->nrest;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t w = i < nreal ? load_word(words, i0 + i, size) : 0u;
        uint32_t a = w & f->absmask;
        uint32_t be = a >> mbits;
        uint32_t m = (a & f->mantmask) | (be ? f->implicit : 0u);
        int sh = shift_base + (int)(be ? be - 1 : 0); /* exponent of the lsb - (E - top) */
        uint32_t qi = sh >= 0 ? m << (sh & 31) : (sh > -32 ? m >> ((-sh) & 31) : 0u);
        qi = a < f->infbits ? qi : 0u;
        q[i] = qi;
        neg[i] = (uint8_t)(w >> (8 * size - 1));
        /* remainder: the bits below the midpoint's marker and the marker position, or the
         * whole word when the prior is 0 */
        int width = qi ? -sh : 0;
        uint32_t lowv = w & (uint32_t)((1ull << width) - 1);
        bw_put(&bw, lowv, width);
        store_word(rest, nrest, size, w);
        nrest += !qi;
    }
    e->low = bw;
    e->nrest = nrest;
}

static void enc_run(Enc *e, Py_ssize_t chunk_groups) {
    const Py_ssize_t gsize = e->gsize, ngroups = e->total / gsize;
    for (Py_ssize_t g0 = 0; g0 < ngroups; g0 += chunk_groups) {
        Py_ssize_t g1 = g0 + chunk_groups < ngroups ? g0 + chunk_groups : ngroups;
        for (Py_ssize_t g = g0; g < g1; g++) {
            Py_ssize_t i0 = g * gsize;
            uint32_t *q = e->q + (g - g0) * gsize;
            uint8_t *neg = e->neg + (g - g0) * gsize;
            if (e->f.size == 2)
                enc_group(e, 2, e->words, i0, gsize, e->numel - i0, q, neg, e->scales + g);
            else
                enc_group(e, 4, e->words, i0, gsize, e->numel - i0, q, neg, e->scales + g);
        }
        Py_ssize_t n = (g1 - g0) * gsize;
        for (int s = 0; s < e->nsteps; s++) step_chunk(&e->steps[s], e->q, e->neg, n);
    }
    for (int s = 0; s < e->nsteps; s++) step_flush(&e->steps[s]);
    bw_flush(&e->low);
}

static PyObject *py_encode(PyObject *self, PyObject *args) {
    PyObject *words_o, *steps_o;
    Py_ssize_t gsize;
    int size, ebits, mbits, e_floor, e_ceil, top;
    if (!PyArg_ParseTuple(args, "OniiiiiiO", &words_o, &gsize, &size, &ebits, &mbits, &e_floor,
                          &e_ceil, &top, &steps_o))
        return NULL;
    Enc *e = PyMem_RawCalloc(1, sizeof(Enc));
    if (!e) return PyErr_NoMemory();
    PyObject *result = NULL, *scales = NULL, *low = NULL, *rest = NULL, *steplist = NULL;
    PyObject *codes[32] = {0}, *refs[32] = {0};
    uint8_t *scratch = NULL, *resttmp = NULL;
    Views v = {.n = 0};
    Py_buffer *words;
    if (fmt_init(&e->f, size, ebits, mbits) < 0) goto done;
    if (get_view(&v, words_o, &words, 0) < 0) goto done;
    PyObject *seq = PySequence_Fast(steps_o, "steps must be a sequence");
    if (!seq) goto done;
    Py_ssize_t nsteps = PySequence_Fast_GET_SIZE(seq);
    if (gsize < 1 || top < 1 || top > mbits || nsteps > 32 || words->len % size) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "bad encode arguments");
        goto done;
    }
    e->nsteps = (int)nsteps;
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        int a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, s), "ii", &a, &b)) {
            Py_DECREF(seq);
            goto done;
        }
        if (a < 0 || b <= a || b - a > MAX_STEP || b > top) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "bad plane step");
            goto done;
        }
        Step *st = &e->steps[s];
        st->r = b - a;
        st->hi = top - a;
        st->lo = top - b;
        st->mask = (1u << st->r) - 1;
        st->per = PER[st->r];
        st->a = (1 << (st->r + 1)) - 1;
        st->off = (1 << st->r) - 1;
    }
    Py_DECREF(seq);
    e->words = words->buf;
    e->numel = words->len / size;
    e->gsize = gsize;
    Py_ssize_t ngroups = (e->numel + gsize - 1) / gsize;
    e->total = ngroups * gsize;
    e->e_floor = e_floor;
    e->e_ceil = e_ceil;
    e->top = top;
    Py_ssize_t total = e->total;
    if (!(scales = PyBytes_FromStringAndSize(NULL, ngroups))) goto done;
    e->scales = (uint8_t *)PyBytes_AS_STRING(scales);
    for (int s = 0; s < e->nsteps; s++) {
        Step *st = &e->steps[s];
        if (!(codes[s] = PyBytes_FromStringAndSize(NULL, total / st->per + 2))) goto done;
        if (!(refs[s] = PyBytes_FromStringAndSize(NULL, (total * st->r + 7) / 8 + 8)))
            goto done;
        st->codes = (uint8_t *)PyBytes_AS_STRING(codes[s]);
        st->ref = (uint8_t *)PyBytes_AS_STRING(refs[s]);
    }
    Py_ssize_t lowcap = (Py_ssize_t)(((int64_t)total * (mbits + 1) + 7) / 8 + 8);
    if (!(low = PyBytes_FromStringAndSize(NULL, lowcap))) goto done;
    e->low.out = (uint8_t *)PyBytes_AS_STRING(low);
    Py_ssize_t chunk_groups = gsize >= 4096 ? 1 : 4096 / gsize;
    Py_ssize_t chunk = chunk_groups * gsize;
    size_t per_step = (size_t)chunk + 16;
    scratch = PyMem_RawMalloc((size_t)chunk * 5 + 2 * per_step * (size_t)(e->nsteps + 1));
    resttmp = PyMem_RawMalloc((size_t)total * (size_t)size + 8);
    if (!scratch || !resttmp) {
        PyErr_NoMemory();
        goto done;
    }
    e->q = (uint32_t *)scratch;
    e->neg = scratch + (size_t)chunk * 4;
    uint8_t *sb = scratch + (size_t)chunk * 5;
    for (int s = 0; s < e->nsteps; s++) {
        e->steps[s].dbuf = sb + (2 * (size_t)s) * per_step;
        e->steps[s].rbuf = sb + (2 * (size_t)s + 1) * per_step;
    }
    e->rest = resttmp;
    Py_BEGIN_ALLOW_THREADS;
    enc_run(e, chunk_groups);
    Py_END_ALLOW_THREADS;
    Py_ssize_t nrest = e->nrest;
    if (!(rest = PyBytes_FromStringAndSize(NULL, nrest * size))) goto done;
    uint8_t *ro = (uint8_t *)PyBytes_AS_STRING(rest);
    for (Py_ssize_t j = 0; j < nrest; j++) { /* byte planes, most significant first */
        uint32_t w = load_word(resttmp, j, size);
        for (int p = 0; p < size; p++) ro[p * nrest + j] = (uint8_t)(w >> (8 * (size - 1 - p)));
    }
    if (_PyBytes_Resize(&low, e->low.out - (uint8_t *)PyBytes_AS_STRING(low)) < 0) goto done;
    if (!(steplist = PyList_New(e->nsteps))) goto done;
    for (int s = 0; s < e->nsteps; s++) {
        if (_PyBytes_Resize(&codes[s], e->steps[s].ncodes) < 0 ||
            _PyBytes_Resize(&refs[s], e->steps[s].nref) < 0)
            goto done;
        PyObject *pair = PyTuple_Pack(2, codes[s], refs[s]);
        if (!pair) goto done;
        PyList_SET_ITEM(steplist, s, pair);
    }
    result = PyTuple_Pack(4, scales, steplist, rest, low);
done:
    release_views(&v);
    PyMem_RawFree(scratch);
    PyMem_RawFree(resttmp);
    PyMem_RawFree(e);
    for (int s = 0; s < 32; s++) {
        Py_XDECREF(codes[s]);
        Py_XDECREF(refs[s]);
    }
    Py_XDECREF(scales);
    Py_XDECREF(low);
    Py_XDECREF(rest);
    Py_XDECREF(steplist);
    return result;
}

/* ------------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS,
     "encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps) -> "
     "(scales, [(codes, refine)], rest, low)"},
    {"decode_planes", py_decode_planes, METH_VARARGS,
     "decode_planes(prior, n_in, out, scales, e_floor, gsize, size, ebits, mbits, k1, r, "
     "codes, refine)"},
    {"decode_remainder", py_decode_remainder, METH_VARARGS,
     "decode_remainder(prior, n_in, out, raw, low, size, ebits, mbits)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_groupplane",
    "groupplane's per-level kernels in C (see peerprog/codec/groupplane_native.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__groupplane(void) {
    PyObject *errors = PyImport_ImportModule("peerprog.errors");
    if (!errors) return NULL;
    FormatError = PyObject_GetAttrString(errors, "FormatError");
    Py_DECREF(errors);
    if (!FormatError) return NULL;
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "FORMAT", FORMAT_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
