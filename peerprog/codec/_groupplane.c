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

#define FORMAT_VERSION 2
#define MAX_STEP 7

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

/* x86-64 (GCC, clang): each kernel is also compiled for AVX2 + BMI2 (variable shifts without
 * the cl register) and picked once at load when the CPU has them (use_v3). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_V3 1
#define V3_TARGET __attribute__((target("avx2,bmi,bmi2,popcnt")))
#endif
static int use_v3;

#if defined(__SSE2__)
#include <emmintrin.h>
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
static int8_t FIELDS[5][256][8]; /* r = 1, 2, 4: the 8 / r fields of a byte, MSB first */

static void init_tables(void) {
    for (int r = 1; r <= 4; r *= 2)
        for (int c = 0; c < 256; c++)
            for (int i = 0; i < 8; i++)
                FIELDS[r][c][i] =
                    (int8_t)(i < 8 / r ? (c >> (8 - r * (i + 1))) & ((1 << r) - 1) : 0);
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

#define CH 1024 /* weights per chunk of the plane decoder */

typedef struct { /* a stream of small values expanded chunk by chunk into buf */
    const uint8_t *src;
    Py_ssize_t len, at; /* source bytes, next one to expand */
    int8_t buf[2 * CH + 64];
    int pos, end; /* next value, end of the expanded ones */
} Expander;

/* Keep the unread values and expand more until at least CH are there (zeros once the
 * source runs out: the counts checked after the pass then fail). */
static void expand_syms(Expander *x, const int8_t (*table)[8], int per) {
    int rem = x->end - x->pos;
    if (rem < 0) rem = 0; /* read past the end: only zeros were there */
    if (rem) memmove(x->buf, x->buf + x->pos, (size_t)rem);
    x->pos = 0;
    x->end = rem;
    while (x->end < CH + 8 && x->at < x->len) {
        memcpy(x->buf + x->end, table[x->src[x->at]], 8);
        x->end += per;
        x->at++;
    }
    if (x->end < CH + 8) memset(x->buf + x->end, 0, (size_t)(CH + 16));
}

/* The same for r-bit fields, MSB first: 8 fields per r bytes. */
static void expand_fields(Expander *x, int r) {
    int rem = x->end - x->pos;
    if (rem < 0) rem = 0;
    if (rem) memmove(x->buf, x->buf + x->pos, (size_t)rem);
    x->pos = 0;
    x->end = rem;
    if (8 % r == 0) { /* r = 1, 2, 4: whole fields in each byte, by table */
        const int per = 8 / r;
        const int8_t(*t)[8] = (const int8_t(*)[8])FIELDS[r];
        while (x->end < CH + 8 && x->at < x->len) {
            memcpy(x->buf + x->end, t[x->src[x->at]], 8);
            x->end += per;
            x->at++;
        }
        if (x->end < CH + 8) memset(x->buf + x->end, 0, (size_t)(CH + 16));
        return;
    }
    const uint8_t mask = (uint8_t)((1u << r) - 1);
    while (x->end < CH + 8 && x->at < x->len) {
        uint64_t w = 0;
        if (x->at + r <= x->len) {
            for (int i = 0; i < r; i++) w = (w << 8) | x->src[x->at + i];
        } else {
            for (int i = 0; i < r; i++)
                w = (w << 8) | (x->at + i < x->len ? x->src[x->at + i] : 0u);
        }
        int8_t *o = x->buf + x->end;
        for (int j = 0; j < 8; j++) o[j] = (int8_t)((w >> (r * (7 - j))) & mask);
        x->end += 8;
        x->at += r;
    }
    if (x->end < CH + 8) memset(x->buf + x->end, 0, (size_t)(CH + 16));
}

/* Significance of n words from ``in`` (those past n_in are +0): v != 0 in float32, so NaN
 * counts and -0 does not, as in numpy. */
INLINE int sig_flags(int kind, int size, const uint8_t *in, Py_ssize_t i0, Py_ssize_t n,
                     Py_ssize_t n_in, uint8_t *sig) {
    Py_ssize_t nreal = n_in - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    const uint32_t absmask = size == 2 ? 0x7fffu : 0x7fffffffu;
    int count = 0;
    (void)kind;
    for (Py_ssize_t i = 0; i < nreal; i++) {
        uint8_t s = (load_word(in, i0 + i, size) & absmask) != 0;
        sig[i] = s;
        count += s;
    }
    for (Py_ssize_t i = nreal; i < n; i++) sig[i] = 0;
    return count;
}

/* The values of a chunk: the refinement field of a significant weight, the symbol of the
 * others, each stream read in order. */
static void merge(const uint8_t *sig, Py_ssize_t n, Expander *syms, Expander *flds,
                  int8_t *val) {
    const int8_t *S = syms->buf + syms->pos, *F = flds->buf + flds->pos;
    Py_ssize_t js = 0, jr = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int s = sig[i], m = -s; /* masks, not a branch: sig is unpredictable */
        val[i] = (int8_t)((F[jr] & m) | (S[js] & ~m));
        jr += s;
        js += 1 - s;
    }
    syms->pos += (int)js;
    flds->pos += (int)jr;
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SSSE3_MERGE 1
#include <immintrin.h>

/* EXPAND[m]: the pshufb control that spreads consecutive bytes to the set lanes of the
 * 8-bit mask m (0x80, a zero, in the others); POP[m]: the set lanes. */
static uint8_t EXPAND[256][8];
static uint8_t COMPRESS[256][8]; /* the set lanes of m, gathered to the front */
static uint8_t COMPRESS16[256][16], COMPRESS32[16][16]; /* the same for 2- and 4-byte lanes */
static int use_avx2;
static uint8_t POP[256];
static int use_ssse3;

static void init_expand(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int i = 0; i < 8; i++) {
            EXPAND[m][i] = (m >> i) & 1 ? (uint8_t)k : 0x80;
            COMPRESS[m][i] = 0x80;
            if ((m >> i) & 1) COMPRESS[m][k++] = (uint8_t)i;
        }
        POP[m] = (uint8_t)k;
    }
    for (int m = 0; m < 256; m++) {
        int k = 0;
        memset(COMPRESS16[m], 0x80, 16);
        for (int i = 0; i < 8; i++)
            if ((m >> i) & 1) {
                COMPRESS16[m][2 * k] = (uint8_t)(2 * i);
                COMPRESS16[m][2 * k + 1] = (uint8_t)(2 * i + 1);
                k++;
            }
    }
    for (int m = 0; m < 16; m++) {
        int k = 0;
        memset(COMPRESS32[m], 0x80, 16);
        for (int i = 0; i < 4; i++)
            if ((m >> i) & 1) {
                for (int b = 0; b < 4; b++) COMPRESS32[m][4 * k + b] = (uint8_t)(4 * i + b);
                k++;
            }
    }
    __builtin_cpu_init();
    use_ssse3 = __builtin_cpu_supports("ssse3");
    use_avx2 = __builtin_cpu_supports("avx2");
#ifdef HAVE_V3
    use_v3 = use_avx2 && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
             __builtin_cpu_supports("popcnt");
#endif
}

/* merge() 16 weights at a time: the significant lanes take the next fields, the others
 * the next symbols, by two byte shuffles per 8 lanes. Both buffers hold at least CH + 8
 * readable bytes past their position (expand_*), and n <= CH. */
__attribute__((target("ssse3"))) static void merge_ssse3(const uint8_t *sig, Py_ssize_t n,
                                                         Expander *syms, Expander *flds,
                                                         int8_t *val) {
    const int8_t *S = syms->buf + syms->pos, *F = flds->buf + flds->pos;
    Py_ssize_t js = 0, jr = 0, i = 0;
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i sg = _mm_loadu_si128((const __m128i *)(sig + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(sg, zero));
        for (int h = 0; h < 2; h++) {
            unsigned m = (mask >> (8 * h)) & 0xffu, nm = m ^ 0xffu;
            __m128i f = _mm_loadl_epi64((const __m128i *)(F + jr));
            __m128i s = _mm_loadl_epi64((const __m128i *)(S + js));
            __m128i cf = _mm_loadl_epi64((const __m128i *)EXPAND[m]);
            __m128i cs = _mm_loadl_epi64((const __m128i *)EXPAND[nm]);
            __m128i v = _mm_or_si128(_mm_shuffle_epi8(f, cf), _mm_shuffle_epi8(s, cs));
            _mm_storel_epi64((__m128i *)(val + i + 8 * h), v);
            jr += POP[m];
            js += POP[nm];
        }
    }
    for (; i < n; i++) {
        int s = sig[i], m = -s;
        val[i] = (int8_t)((F[jr] & m) | (S[js] & ~m));
        jr += s;
        js += 1 - s;
    }
    syms->pos += (int)js;
    flds->pos += (int)jr;
}
#endif

/* New values of weights [i0, i0 + n), weight i's half step hs[i - i0]. */
INLINE void plane_compute(int kind, int size, const uint8_t *in, Py_ssize_t i0, Py_ssize_t n,
                          Py_ssize_t n_in, uint8_t *out, const uint8_t *sig, const int8_t *val,
                          const float *hs, int r) {
    const int base = 1 - (1 << r);
    Py_ssize_t nreal = n_in - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    for (Py_ssize_t i = 0; i < nreal; i++) { /* vectorised */
        float v = to_f32(load_word(in, i0 + i, size), kind);
        int x = val[i];
        int st = sig[i] ? 2 * x + base : 2 * x + (x > 0) - (x < 0);
        float o = v + (float)st * copysignf(hs[i], v);
        store_word(out, i0 + i, size, from_f32(o, kind));
    }
    for (Py_ssize_t i = nreal; i < n; i++) { /* the zero padding of the last group */
        int x = val[i];
        float o = (float)(2 * x + (x > 0) - (x < 0)) * hs[i];
        store_word(out, i0 + i, size, from_f32(o, kind));
    }
}

typedef struct { /* one plane step's decoding state across chunks */
    Expander syms, flds;
    const int8_t (*table)[8];
    int per, r, k1;
    Py_ssize_t nsig;
} StepDec;

typedef struct { /* per chunk */
    uint8_t sig[CH];
    int8_t val[CH];
    float hs[CH];
} PlaneScratch;

static void step_init(StepDec *st, int k1, int r, const uint8_t *codes, Py_ssize_t ncodes,
                      const uint8_t *ref, Py_ssize_t nref) {
    st->syms.src = codes;
    st->syms.len = ncodes;
    st->flds.src = ref;
    st->flds.len = nref;
    st->syms.at = st->flds.at = 0;
    st->syms.pos = st->syms.end = st->flds.pos = st->flds.end = 0;
    st->table = (const int8_t(*)[8])TABLE[r];
    st->per = PER[r];
    st->r = r;
    st->k1 = k1;
    st->nsig = 0;
}

/* One chunk of n weights of a plane step: ``in`` and ``out`` point at the chunk (they may be
 * the same), its first n_in words are the prior (the others, and all when n_in <= 0, are +0);
 * the chunk starts at offset goff of group g. */
INLINE void plane_chunk(int kind, int size, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                        Py_ssize_t n, Py_ssize_t g, Py_ssize_t goff, Py_ssize_t gsize,
                        const uint8_t *scales, int e_floor, StepDec *st, PlaneScratch *sc) {
    if (st->syms.end - st->syms.pos < CH) expand_syms(&st->syms, st->table, st->per);
    if (st->flds.end - st->flds.pos < CH) expand_fields(&st->flds, st->r);
    const int8_t *val = sc->val;
    if (n_in <= 0) { /* no prior (level 0) or the padding: every weight has a symbol */
        memset(sc->sig, 0, (size_t)n);
        val = st->syms.buf + st->syms.pos;
        st->syms.pos += (int)n;
        n_in = 0;
    } else {
        st->nsig += sig_flags(kind, size, in, 0, n, n_in, sc->sig);
#ifdef HAVE_SSSE3_MERGE
        if (use_ssse3)
            merge_ssse3(sc->sig, n, &st->syms, &st->flds, sc->val);
        else
#endif
            merge(sc->sig, n, &st->syms, &st->flds, sc->val);
    }
    /* each weight's half step 2**(E - k1 - 1), group by group */
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t seg = gsize - goff < n - i ? gsize - goff : n - i;
        float h = pow2f((int)scales[g] + e_floor - st->k1 - 1);
        for (Py_ssize_t k = 0; k < seg; k++) sc->hs[i + k] = h;
        i += seg;
        goff += seg;
        if (goff == gsize) {
            goff = 0;
            g++;
        }
    }
    plane_compute(kind, size, in, 0, n, n_in, out, sc->sig, val, sc->hs, st->r);
}

INLINE void plane_kernel_k(int kind, int size, const uint8_t *in, Py_ssize_t n_in,
                           uint8_t *out, Py_ssize_t total, Py_ssize_t gsize,
                           const uint8_t *scales, int e_floor, StepDec *st,
                           PlaneScratch *sc) {
    for (Py_ssize_t c0 = 0; c0 < total; c0 += CH) {
        Py_ssize_t n = total - c0 < CH ? total - c0 : CH;
        plane_chunk(kind, size, in ? in + c0 * size : NULL, n_in - c0, out + c0 * size, n,
                    c0 / gsize, c0 % gsize, gsize, scales, e_floor, st, sc);
    }
}

INLINE void plane_kernel_impl(const Fmt *f, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                              Py_ssize_t total, Py_ssize_t gsize, const uint8_t *scales,
                              int e_floor, StepDec *st, PlaneScratch *sc) {
    switch (f->kind) {
    case K_BF16:
        plane_kernel_k(K_BF16, 2, in, n_in, out, total, gsize, scales, e_floor, st, sc);
        break;
    case K_F32:
        plane_kernel_k(K_F32, 4, in, n_in, out, total, gsize, scales, e_floor, st, sc);
        break;
    default:
        plane_kernel_k(K_F16, 2, in, n_in, out, total, gsize, scales, e_floor, st, sc);
    }
}

#define PLANE_ARGS                                                                         \
    const Fmt *f, const uint8_t *in, Py_ssize_t n_in, uint8_t *out, Py_ssize_t total,      \
        Py_ssize_t gsize, const uint8_t *scales, int e_floor, StepDec *st, PlaneScratch *sc
#define PLANE_NAMES f, in, n_in, out, total, gsize, scales, e_floor, st, sc
#ifdef HAVE_V3
V3_TARGET static void plane_kernel_v3(PLANE_ARGS) { plane_kernel_impl(PLANE_NAMES); }
#endif
static void plane_kernel(PLANE_ARGS) {
#ifdef HAVE_V3
    if (use_v3) {
        plane_kernel_v3(PLANE_NAMES);
        return;
    }
#endif
    plane_kernel_impl(PLANE_NAMES);
}

static int max_byte(const uint8_t *p, Py_ssize_t n) {
    uint8_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) m = m > p[i] ? m : p[i];
    return m;
}

static PyObject *py_decode_planes(PyObject *self, PyObject *args) {
    (void)self;
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
    StepDec *st = PyMem_RawMalloc(sizeof(StepDec));
    PlaneScratch *sc = PyMem_RawMalloc(sizeof(PlaneScratch));
    if (!st || !sc) {
        PyMem_RawFree(st);
        PyMem_RawFree(sc);
        release_views(&v);
        return PyErr_NoMemory();
    }
    step_init(st, k1, r, cp, codes->len, ref->buf, ref->len);
    Py_BEGIN_ALLOW_THREADS;
    bad_code = max_byte(cp, codes->len) >= APOW[r];
    bad_scale = max_byte(sp, ngroups) + e_floor > (1 << (ebits - 1)); /* e_ceil */
    if (!bad_code && !bad_scale)
        plane_kernel(&f, prior ? prior->buf : NULL, n_in, out->buf, total, gsize, sp, e_floor,
                     st, sc);
    Py_END_ALLOW_THREADS;
    Py_ssize_t nsig = st->nsig;
    PyMem_RawFree(st);
    PyMem_RawFree(sc);
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

/* Whether one of the n (<= 16) words at ``in[i..]`` is 0. */
INLINE int any_zero(int size, const uint8_t *in, Py_ssize_t i, Py_ssize_t n) {
#if defined(__SSE2__)
    if (n == 16) {
        const __m128i zero = _mm_setzero_si128();
        const uint8_t *p = in + i * size;
        __m128i z;
        if (size == 2) {
            z = _mm_or_si128(_mm_cmpeq_epi16(_mm_loadu_si128((const __m128i *)p), zero),
                             _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i *)(p + 16)), zero));
        } else {
            z = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)p), zero),
                             _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(p + 16)), zero)),
                _mm_or_si128(_mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(p + 32)), zero),
                             _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(p + 48)), zero)));
        }
        return _mm_movemask_epi8(z) != 0;
    }
#endif
    for (Py_ssize_t k = 0; k < n; k++)
        if (!load_word(in, i + k, size)) return 1;
    return 0;
}

/* The remainder: exact words from the prior (midpoints, or 0: then the word comes whole from
 * the byte-shuffled ``raw``) and the packed low bits, chunk by chunk in four passes. */
typedef struct {
    uint8_t width[CH + 8];
    uint32_t low[CH + 8];
} RemWork;

typedef struct { /* the remainder's decoding state across chunks */
    const uint8_t *raw, *low;
    Py_ssize_t nrest, lowlen, j;
    int64_t bpos;
    uint32_t bad;
    int mbits;
} RemDec;

/* One chunk of n words: ``in`` (the prior, its first nreal words; the rest +0) and ``out``
 * point at the chunk. */
INLINE void remainder_chunk(int size, const uint8_t *in, Py_ssize_t nreal, uint8_t *out,
                            Py_ssize_t n, RemDec *rd, RemWork *wk) {
    int64_t bpos = rd->bpos;
    Py_ssize_t j = rd->j;
    uint32_t bad = rd->bad;
    const uint32_t maxw = (uint32_t)rd->mbits + 1;
    const uint8_t *raw = rd->raw, *low = rd->low;
    const Py_ssize_t nrest = rd->nrest, lowlen = rd->lowlen;
    uint8_t *width = wk->width;
    uint32_t *lowv = wk->low;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    /* 1. the marker's position from the prior: width = its index + 1 (vectorised: the
     * lowest set bit's exponent as a float) */
    for (Py_ssize_t i = 0; i < nreal; i++) {
        uint32_t pw = load_word(in, i, size);
        uint32_t m = pw & (0u - pw);
        uint32_t wd = ((bits_of((float)(int32_t)m) >> 23) & 0xffu) - 126u;
        width[i] = (uint8_t)(wd & (0u - (pw != 0)));
    }
    uint8_t wmax = 0; /* widths past maxw: not this codec's prior (at most 32: no
                       * read goes wrong, the error is raised after the pass) */
    for (Py_ssize_t i = 0; i < nreal; i++) wmax = wmax > width[i] ? wmax : width[i];
    bad |= wmax > maxw;
    for (Py_ssize_t i = nreal; i < n; i++) width[i] = 0;
    /* 2. the low bits, in order: a few fields per 64-bit window */
    Py_ssize_t i = 0;
    const int group = size == 2 ? 4 : 2; /* at most 4 * 11 or 2 * 24 bits */
    for (; i + group <= n; i += group) {
        uint64_t x = window(low, lowlen, (Py_ssize_t)(bpos >> 3)) << (bpos & 7);
        for (int k = 0; k < group; k++) {
            int wd = width[i + k];
            lowv[i + k] = (uint32_t)((x >> 1) >> (63 - wd));
            x <<= wd;
            bpos += wd;
        }
    }
    for (; i < n; i++) {
        int wd = width[i];
        uint64_t x = window(low, lowlen, (Py_ssize_t)(bpos >> 3)) << (bpos & 7);
        lowv[i] = (uint32_t)((x >> 1) >> (63 - wd));
        bpos += wd;
    }
    /* 3. the prior above the marker, the low bits from it down (vectorised) */
    for (i = 0; i < nreal; i++) {
        uint32_t pw = load_word(in, i, size);
        uint32_t m = pw & (0u - pw);
        store_word(out, i, size, (pw & ~(2u * m - 1u)) | lowv[i]);
    }
    /* 4. the words whose prior is 0 (and the padding), whole: found 16 at a time */
    for (i = 0; i < n; i += 16) {
        Py_ssize_t b1 = i + 16 < n ? i + 16 : n;
        if (b1 <= nreal && !any_zero(size, in, i, b1 - i)) continue;
        for (Py_ssize_t k = i; k < b1; k++) {
            if (k < nreal && load_word(in, k, size)) continue;
            uint32_t rw = 0;
            if (j < nrest) {
                if (size == 2)
                    rw = ((uint32_t)raw[j] << 8) | raw[nrest + j];
                else
                    rw = ((uint32_t)raw[j] << 24) | ((uint32_t)raw[nrest + j] << 16) |
                         ((uint32_t)raw[2 * nrest + j] << 8) | raw[3 * nrest + j];
            }
            j++;
            store_word(out, k, size, rw);
        }
    }
    rd->bpos = bpos;
    rd->j = j;
    rd->bad = bad;
}

INLINE void remainder_loop(int size, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                           Py_ssize_t total, RemDec *rd, RemWork *wk) {
    for (Py_ssize_t c0 = 0; c0 < total; c0 += CH) {
        Py_ssize_t n = total - c0 < CH ? total - c0 : CH;
        remainder_chunk(size, in + c0 * size, n_in - c0, out + c0 * size, n, rd, wk);
    }
}

INLINE void remainder_kernel_impl(int size, const uint8_t *in, Py_ssize_t n_in, uint8_t *out,
                                  Py_ssize_t total, RemDec *rd, RemWork *wk) {
    if (size == 2)
        remainder_loop(2, in, n_in, out, total, rd, wk);
    else
        remainder_loop(4, in, n_in, out, total, rd, wk);
}

#define REM_ARGS                                                                           \
    int size, const uint8_t *in, Py_ssize_t n_in, uint8_t *out, Py_ssize_t total, RemDec *rd, \
        RemWork *wk
#define REM_NAMES size, in, n_in, out, total, rd, wk
#ifdef HAVE_V3
V3_TARGET static void remainder_kernel_v3(REM_ARGS) { remainder_kernel_impl(REM_NAMES); }
#endif
static void remainder_kernel(REM_ARGS) {
#ifdef HAVE_V3
    if (use_v3) {
        remainder_kernel_v3(REM_NAMES);
        return;
    }
#endif
    remainder_kernel_impl(REM_NAMES);
}

static PyObject *py_decode_remainder(PyObject *self, PyObject *args) {
    (void)self;
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
    Py_ssize_t nrest = raw->len / size, rawlen = raw->len, lowlen = low->len;
    RemDec rd = {raw->buf, low->buf, nrest, lowlen, 0, 0, 0, mbits};
    if (rawlen == nrest * size) {
        RemWork *wk = PyMem_RawMalloc(sizeof(RemWork));
        if (!wk) {
            release_views(&v);
            return PyErr_NoMemory();
        }
        Py_BEGIN_ALLOW_THREADS;
        remainder_kernel(size, prior->buf, n_in, out->buf, total, &rd, wk);
        Py_END_ALLOW_THREADS;
        PyMem_RawFree(wk);
    }
    Py_ssize_t j = rd.j;
    int64_t bpos = rd.bpos;
    int bad = rd.bad != 0;
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

/* ------------------------------------------------------------------------ from scratch */

/* Levels 0..n in one pass: each chunk goes through every plane step in cache (a level's first
 * step sees the padding as +0, as the per-level decoder does), then through the remainder if
 * the last level is there, and is written out once. */
INLINE void levels_k(int kind, int size, uint8_t *out, Py_ssize_t numel, Py_ssize_t total,
                     Py_ssize_t gsize, const uint8_t *scales, int e_floor, int nsteps,
                     StepDec *steps, const uint8_t *first, RemDec *rd, PlaneScratch *sc,
                     RemWork *rw, uint8_t *cbuf) {
    for (Py_ssize_t c0 = 0; c0 < total; c0 += CH) {
        Py_ssize_t n = total - c0 < CH ? total - c0 : CH, real = numel - c0;
        uint8_t *dst = rd ? cbuf : out + c0 * size;
        for (int s = 0; s < nsteps; s++)
            plane_chunk(kind, size, s ? dst : NULL, s == 0 ? 0 : first[s] ? real : n, dst, n,
                        c0 / gsize, c0 % gsize, gsize, scales, e_floor, &steps[s], sc);
        if (rd) remainder_chunk(size, cbuf, real, out + c0 * size, n, rd, rw);
    }
}

INLINE void levels_impl(const Fmt *f, uint8_t *out, Py_ssize_t numel, Py_ssize_t total,
                        Py_ssize_t gsize, const uint8_t *scales, int e_floor, int nsteps,
                        StepDec *steps, const uint8_t *first, RemDec *rd, PlaneScratch *sc,
                        RemWork *rw, uint8_t *cbuf) {
    switch (f->kind) {
    case K_BF16:
        levels_k(K_BF16, 2, out, numel, total, gsize, scales, e_floor, nsteps, steps, first, rd,
                 sc, rw, cbuf);
        break;
    case K_F32:
        levels_k(K_F32, 4, out, numel, total, gsize, scales, e_floor, nsteps, steps, first, rd,
                 sc, rw, cbuf);
        break;
    default:
        levels_k(K_F16, 2, out, numel, total, gsize, scales, e_floor, nsteps, steps, first, rd,
                 sc, rw, cbuf);
    }
}

#define LEVELS_ARGS                                                                        \
    const Fmt *f, uint8_t *out, Py_ssize_t numel, Py_ssize_t total, Py_ssize_t gsize,      \
        const uint8_t *scales, int e_floor, int nsteps, StepDec *steps, const uint8_t *first, \
        RemDec *rd, PlaneScratch *sc, RemWork *rw, uint8_t *cbuf
#define LEVELS_NAMES f, out, numel, total, gsize, scales, e_floor, nsteps, steps, first, rd, sc, rw, cbuf
#ifdef HAVE_V3
V3_TARGET static void levels_v3(LEVELS_ARGS) { levels_impl(LEVELS_NAMES); }
#endif
static void levels(LEVELS_ARGS) {
#ifdef HAVE_V3
    if (use_v3) {
        levels_v3(LEVELS_NAMES);
        return;
    }
#endif
    levels_impl(LEVELS_NAMES);
}

#define MAX_STEPS 160

static PyObject *py_decode_levels(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out_o, *scales_o, *steps_o, *rem_o;
    Py_ssize_t numel, gsize;
    int e_floor, size, ebits, mbits;
    if (!PyArg_ParseTuple(args, "OnOiniiiOO", &out_o, &numel, &scales_o, &e_floor, &gsize,
                          &size, &ebits, &mbits, &steps_o, &rem_o))
        return NULL;
    Fmt f;
    if (fmt_init(&f, size, ebits, mbits) < 0) return NULL;
    PyObject *seq = PySequence_Fast(steps_o, "steps must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t nsteps = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    Views v = {.n = 0};
    Py_buffer *out, *scales, *raw = NULL, *low = NULL;
    Py_buffer *codes[MAX_STEPS], *refs[MAX_STEPS];
    int k1s[MAX_STEPS], rs[MAX_STEPS];
    uint8_t first[MAX_STEPS];
    StepDec *st = NULL;
    PlaneScratch *sc = NULL;
    RemWork *rw = NULL;
    uint8_t *cbuf = NULL;
    Views *vs = NULL; /* the step buffers: 2 views per step */
    int nvs = 0;
    if (nsteps < 1 || nsteps > MAX_STEPS || gsize < 1) {
        PyErr_SetString(PyExc_ValueError, "bad steps");
        goto done;
    }
    if (get_view(&v, out_o, &out, 1) < 0 || get_view(&v, scales_o, &scales, 0) < 0) goto done;
    if (rem_o != Py_None) {
        PyObject *r_raw, *r_low;
        if (!PyArg_ParseTuple(rem_o, "OO", &r_raw, &r_low)) goto done;
        if (get_view(&v, r_raw, &raw, 0) < 0 || get_view(&v, r_low, &low, 0) < 0) goto done;
    }
    Py_ssize_t total = out->len / size, ngroups = total / gsize;
    if (out->len != total * size || total != ngroups * gsize || scales->len < ngroups ||
        numel < 0 || numel > total) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the tensor");
        goto done;
    }
    vs = PyMem_Calloc((size_t)(nsteps + 3) / 4 + 1, sizeof(Views));
    if (!vs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        PyObject *c_o, *r_o;
        int fst;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, s), "iipOO", &k1s[s], &rs[s], &fst,
                              &c_o, &r_o))
            goto done;
        first[s] = (uint8_t)fst;
        if (rs[s] < 1 || rs[s] > MAX_STEP || k1s[s] < rs[s] || k1s[s] > mbits) {
            PyErr_SetString(PyExc_ValueError, "bad plane step");
            goto done;
        }
        Views *w = &vs[s / 4];
        nvs = (int)(s / 4) + 1;
        if (get_view(w, c_o, &codes[s], 0) < 0 || get_view(w, r_o, &refs[s], 0) < 0) goto done;
    }
    st = PyMem_RawMalloc(sizeof(StepDec) * (size_t)nsteps);
    sc = PyMem_RawMalloc(sizeof(PlaneScratch));
    rw = PyMem_RawMalloc(sizeof(RemWork));
    cbuf = PyMem_RawMalloc((size_t)CH * 4);
    if (!st || !sc || !rw || !cbuf) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < nsteps; s++)
        step_init(&st[s], k1s[s], rs[s], codes[s]->buf, codes[s]->len, refs[s]->buf,
                  refs[s]->len);
    RemDec rd = {raw ? raw->buf : NULL, low ? low->buf : NULL, raw ? raw->len / size : 0,
                 low ? low->len : 0, 0, 0, 0, mbits};
    int bad_code = 0, bad_scale = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t s = 0; s < nsteps; s++)
        bad_code |= max_byte(codes[s]->buf, codes[s]->len) >= APOW[rs[s]];
    bad_scale = max_byte(scales->buf, ngroups) + e_floor > (1 << (ebits - 1)); /* e_ceil */
    if (!bad_code && !bad_scale && (!raw || raw->len % size == 0))
        levels(&f, out->buf, numel, total, gsize, scales->buf, e_floor, (int)nsteps, st, first,
               raw ? &rd : NULL, sc, rw, cbuf);
    Py_END_ALLOW_THREADS;
    if (bad_scale) {
        PyErr_SetString(FormatError, "group exponent out of range");
        goto done;
    }
    if (bad_code) {
        PyErr_SetString(FormatError, "symbol byte out of range");
        goto done;
    }
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        Py_ssize_t nsig = st[s].nsig, nsym = total - nsig;
        Py_ssize_t want_codes = (nsym + PER[rs[s]] - 1) / PER[rs[s]];
        Py_ssize_t want_ref = (Py_ssize_t)(((int64_t)nsig * rs[s] + 7) / 8);
        if (refs[s]->len != want_ref) {
            PyErr_Format(FormatError, "step %zd: refinement bits of %zd bytes, expected %zd", s,
                         refs[s]->len, want_ref);
            goto done;
        }
        if (codes[s]->len != want_codes) {
            PyErr_Format(FormatError, "step %zd: %zd symbol bytes, expected %zd", s,
                         codes[s]->len, want_codes);
            goto done;
        }
    }
    if (raw) {
        if (rd.bad) {
            PyErr_SetString(FormatError, "prior values are not midpoints of this codec");
            goto done;
        }
        if (raw->len % size || rd.j != rd.nrest) {
            PyErr_Format(FormatError, "remainder of %zd whole bytes, expected %zd", raw->len,
                         (Py_ssize_t)(rd.j * size));
            goto done;
        }
        if (low->len != (Py_ssize_t)((rd.bpos + 7) / 8)) {
            PyErr_Format(FormatError, "%zd bytes of packed bits, expected %zd", low->len,
                         (Py_ssize_t)((rd.bpos + 7) / 8));
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int i = 0; i < nvs; i++) release_views(&vs[i]);
    PyMem_Free(vs);
    release_views(&v);
    PyMem_RawFree(st);
    PyMem_RawFree(sc);
    PyMem_RawFree(rw);
    PyMem_RawFree(cbuf);
    Py_DECREF(seq);
    return result;
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

/* 8 fields of r bits, MSB first, into out[0..r) (and 8 - r bytes of garbage after). */
INLINE void pack_fields8_store(uint8_t *out, const uint8_t *fld, int r) {
    uint64_t x = 0;
    for (int j = 0; j < 8; j++) x |= (uint64_t)fld[j] << (r * (7 - j));
    uint64_t be = BE64(x << (64 - 8 * r));
    memcpy(out, &be, 8);
}

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
 * of magnitudes q, and pack whole bytes / groups of 8 fields into the outputs. ``t`` is
 * scratch of 3 * (n + 16) bytes. */
static void compact(const uint8_t *sig, const uint8_t *dig, const uint8_t *fld, Py_ssize_t n,
                    uint8_t *db, uint8_t *rb, Py_ssize_t *nd_io, Py_ssize_t *nr_io);
#ifdef HAVE_SSSE3_MERGE
__attribute__((target("ssse3"))) static void compact_ssse3(const uint8_t *sig,
                                                           const uint8_t *dig,
                                                           const uint8_t *fld, Py_ssize_t n,
                                                           uint8_t *db, uint8_t *rb,
                                                           Py_ssize_t *nd_io,
                                                           Py_ssize_t *nr_io) {
    Py_ssize_t nd = *nd_io, nr = *nr_io, i = 0;
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i sg = _mm_loadu_si128((const __m128i *)(sig + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(sg, zero));
        for (int h = 0; h < 2; h++) {
            unsigned m = (mask >> (8 * h)) & 0xffu, nm = m ^ 0xffu;
            __m128i d = _mm_loadl_epi64((const __m128i *)(dig + i + 8 * h));
            __m128i f = _mm_loadl_epi64((const __m128i *)(fld + i + 8 * h));
            __m128i cf = _mm_loadl_epi64((const __m128i *)COMPRESS[m]);
            __m128i cd = _mm_loadl_epi64((const __m128i *)COMPRESS[nm]);
            _mm_storel_epi64((__m128i *)(rb + nr), _mm_shuffle_epi8(f, cf));
            _mm_storel_epi64((__m128i *)(db + nd), _mm_shuffle_epi8(d, cd));
            nr += POP[m];
            nd += POP[nm];
        }
    }
    *nd_io = nd;
    *nr_io = nr;
    compact(sig + i, dig + i, fld + i, n - i, db, rb, nd_io, nr_io);
}
#endif

#ifdef HAVE_SSSE3_MERGE
/* 1-bit fields (bytes 0/1), MSB first: each group of 8 reversed, its bits to the tops of the
 * bytes, pmovmskb; returns the fields consumed (a multiple of 16). */
__attribute__((target("ssse3"))) static Py_ssize_t pack1_ssse3(const uint8_t *f, Py_ssize_t n,
                                                               uint8_t *out) {
    const __m128i rev = _mm_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
    Py_ssize_t k = 0;
    for (; k + 16 <= n; k += 16, out += 2) {
        __m128i x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(f + k)), rev);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_slli_epi16(x, 7));
        out[0] = (uint8_t)m;
        out[1] = (uint8_t)(m >> 8);
    }
    return k;
}

/* Digits in pairs (d0 + a * d1, a <= 15) by pmaddubsw, 16 codes at a time; returns the
 * digits consumed (the caller packs the tail). */
__attribute__((target("ssse3"))) static Py_ssize_t pack2_ssse3(const uint8_t *d, Py_ssize_t n,
                                                               uint8_t *out, int a) {
    const __m128i w = _mm_set1_epi16((short)((a << 8) | 1));
    Py_ssize_t k = 0;
    for (; k + 32 <= n; k += 32, out += 16) {
        __m128i s0 = _mm_maddubs_epi16(_mm_loadu_si128((const __m128i *)(d + k)), w);
        __m128i s1 = _mm_maddubs_epi16(_mm_loadu_si128((const __m128i *)(d + k + 16)), w);
        _mm_storeu_si128((__m128i *)out, _mm_packus_epi16(s0, s1));
    }
    return k;
}
#endif

static void compact(const uint8_t *sig, const uint8_t *dig, const uint8_t *fld, Py_ssize_t n,
                    uint8_t *db, uint8_t *rb, Py_ssize_t *nd_io, Py_ssize_t *nr_io) {
    Py_ssize_t nd = *nd_io, nr = *nr_io;
    for (Py_ssize_t i = 0; i < n; i++) {
        db[nd] = dig[i];
        rb[nr] = fld[i];
        nd += !sig[i];
        nr += sig[i];
    }
    *nd_io = nd;
    *nr_io = nr;
}

/* Stage 1 of a step: significance, digit and field of each weight (vectorised; q16 for the
 * 16-bit dtypes, whose magnitudes have at most 10 bits: twice the lanes). */
#define STEP_STAGE1(QT, QB) /* QB: the shift counts' mask (they are below the width) */       \
    for (Py_ssize_t i = i0; i < n; i++) {                                                  \
        QT qi = ((const QT *)q)[i];                                                        \
        uint8_t b = (uint8_t)((QT)(qi >> (lo & QB)) & (QT)mask), ng = neg[i];              \
        uint8_t nm = (uint8_t)(0u - ng);                                                   \
        tsig[i] = (uint8_t)((QT)(qi >> (hi & QB)) != 0);                                   \
        tdig[i] = (uint8_t)(off8 + (uint8_t)((uint8_t)(b ^ nm) + ng)); /* off -/+ b */     \
        tfld[i] = b;                                                                       \
    }

#ifdef HAVE_SSSE3_MERGE
/* STEP_STAGE1 for 16-bit magnitudes in 16-bit lanes, 32 weights at a time; returns the
 * weights done. */
__attribute__((target("avx2"))) static Py_ssize_t stage1_avx2(const uint16_t *q,
                                                              const uint8_t *neg, Py_ssize_t n,
                                                              int lo, int hi, uint32_t mask,
                                                              int off, uint8_t *tsig,
                                                              uint8_t *tdig, uint8_t *tfld) {
    const __m128i clo = _mm_cvtsi32_si128(lo), chi = _mm_cvtsi32_si128(hi);
    const __m256i m16 = _mm256_set1_epi16((short)mask), zero = _mm256_setzero_si256();
    const __m256i one8 = _mm256_set1_epi8(1), off8 = _mm256_set1_epi8((char)off);
    Py_ssize_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i q0 = _mm256_loadu_si256((const __m256i *)(q + i));
        __m256i q1 = _mm256_loadu_si256((const __m256i *)(q + i + 16));
        __m256i b0 = _mm256_and_si256(_mm256_srl_epi16(q0, clo), m16);
        __m256i b1 = _mm256_and_si256(_mm256_srl_epi16(q1, clo), m16);
        __m256i z0 = _mm256_cmpeq_epi16(_mm256_srl_epi16(q0, chi), zero);
        __m256i z1 = _mm256_cmpeq_epi16(_mm256_srl_epi16(q1, chi), zero);
        __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(b0, b1), 0xd8);
        __m256i z = _mm256_permute4x64_epi64(_mm256_packs_epi16(z0, z1), 0xd8);
        __m256i ng = _mm256_loadu_si256((const __m256i *)(neg + i));
        __m256i nm = _mm256_sub_epi8(zero, ng);
        __m256i d = _mm256_add_epi8(off8, _mm256_add_epi8(_mm256_xor_si256(b, nm), ng));
        _mm256_storeu_si256((__m256i *)(tsig + i), _mm256_andnot_si256(z, one8));
        _mm256_storeu_si256((__m256i *)(tdig + i), d);
        _mm256_storeu_si256((__m256i *)(tfld + i), b);
    }
    return i;
}
#endif

INLINE void step_chunk(Step *st, const void *q, int qsize, const uint8_t *neg,
                              Py_ssize_t n, uint8_t *t) {
    uint8_t *db = st->dbuf, *rb = st->rbuf;
    Py_ssize_t nd = st->npd, nr = st->npr;
    const int hi = st->hi, lo = st->lo, off = st->off;
    const uint32_t mask = st->mask;
    uint8_t *tsig = t, *tdig = t + n + 16, *tfld = t + 2 * (n + 16);
    const uint8_t off8 = (uint8_t)off;
    Py_ssize_t i0 = 0;
    if (qsize == 2) {
#ifdef HAVE_SSSE3_MERGE
        if (use_avx2)
            i0 = stage1_avx2((const uint16_t *)q, neg, n, lo, hi, mask, off, tsig, tdig, tfld);
#endif
        STEP_STAGE1(uint16_t, 15)
    } else {
        STEP_STAGE1(uint32_t, 31)
    }
#ifdef HAVE_SSSE3_MERGE
    if (use_ssse3)
        compact_ssse3(tsig, tdig, tfld, n, db, rb, &nd, &nr);
    else
#endif
        compact(tsig, tdig, tfld, n, db, rb, &nd, &nr);
    Py_ssize_t full = nd / st->per * st->per;
    uint8_t *co = st->codes + st->ncodes;
    switch (st->per) { /* constant per: unrolled */
    case 5:
        for (Py_ssize_t k = 0; k < full; k += 5) *co++ = pack_digits(db + k, 5, 3);
        break;
    case 2: {
        Py_ssize_t k = 0;
#ifdef HAVE_SSSE3_MERGE
        if (use_ssse3) k = pack2_ssse3(db, full, co, st->a);
        co += k / 2;
#endif
        for (; k < full; k += 2) *co++ = pack_digits(db + k, 2, st->a);
        break;
    }
    case 1:
        memcpy(co, db, (size_t)full);
        co += full;
        break;
    default:
        for (Py_ssize_t k = 0; k < full; k += st->per) *co++ = pack_digits(db + k, st->per, st->a);
    }
    st->ncodes = co - st->codes;
    memmove(db, db + full, (size_t)(nd - full));
    st->npd = (int)(nd - full);
    Py_ssize_t fullr = nr & ~(Py_ssize_t)7, rb_done = 0;
    uint8_t *ro = st->ref + st->nref;
#ifdef HAVE_SSSE3_MERGE
    if (st->r == 1 && use_ssse3) { /* bits: 16 fields per movemask */
        Py_ssize_t k = pack1_ssse3(rb, fullr, ro);
        ro += k / 8;
        rb_done = k;
    }
#endif
    switch (st->r) { /* constant r: unrolled, one 8-byte store per 8 fields */
#define PACK_R(R)                                                                          \
    case R:                                                                                \
        for (Py_ssize_t k = rb_done; k < fullr; k += 8, ro += R)                          \
            pack_fields8_store(ro, rb + k, R);                                                 \
        break;
        PACK_R(1)
        PACK_R(2)
        PACK_R(3)
        PACK_R(4)
        PACK_R(5)
        PACK_R(6)
        PACK_R(7)
#undef PACK_R
    }
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
        uint8_t tmp[16];
        memset(st->rbuf + st->npr, 0, 8);
        pack_fields8(tmp, st->rbuf, st->r);
        int nb = (st->npr * st->r + 7) / 8;
        memcpy(st->ref + st->nref, tmp, (size_t)nb);
        st->nref += nb;
    }
}

typedef struct { /* MSB-first bit writer: acc holds ``fill`` (< 8) pending bits at its top */
    uint8_t *out;
    uint64_t acc;
    int fill;
} BitWriter;

/* Append the low ``width`` (<= 56) bits of v (v < 2**width); writes 8 bytes at out. */
INLINE void bw_put(BitWriter *w, uint64_t v, int width) {
    w->acc |= (v << 1) << (63 - w->fill - width);
    w->fill += width;
    uint64_t be = BE64(w->acc);
    memcpy(w->out, &be, 8);
    w->out += w->fill >> 3;
    w->acc <<= w->fill & ~7;
    w->fill &= 7;
}

static void bw_flush(BitWriter *w) {
    if (w->fill) { /* its byte is written, zero-padded */
        w->out++;
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
    uint32_t *q, *lowv;
    uint8_t *neg, *width, *tmp;
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
                      Py_ssize_t navail, void *q, uint8_t *neg, uint8_t *width,
                      uint32_t *low, uint8_t *scale) {
    const Fmt *f = &e->f;
    uint32_t amax = 0;
    Py_ssize_t nreal = navail < n ? (navail > 0 ? navail : 0) : n;
    const uint32_t absmask = f->absmask, infbits = f->infbits, mantmask = f->mantmask;
    const int mbits = f->mbits;
    if (size == 2) {
        uint16_t m16 = 0; /* vectorised: max over the finite magnitudes */
        for (Py_ssize_t i = 0; i < nreal; i++) {
            uint16_t a = (uint16_t)(load_word(words, i0 + i, 2) & absmask);
            uint16_t keep = a & (uint16_t)(0u - (a < infbits));
            m16 = m16 > keep ? m16 : keep;
        }
        amax = m16;
    } else {
        for (Py_ssize_t i = 0; i < nreal; i++) {
            uint32_t a = load_word(words, i0 + i, 4) & absmask;
            uint32_t keep = a & (0u - (a < infbits));
            amax = amax > keep ? amax : keep;
        }
    }
    int E = group_exponent(f, amax, e->e_floor, e->e_ceil);
    *scale = (uint8_t)(E - e->e_floor);
    /* q = floor(|x| / 2**(E - top)) = the significand shifted right by d = (E - top) -
     * (exponent of x's lsb), and d >= 1 for every finite x (e_floor's clamp): then the
     * midpoint's marker is bit d - 1 and the remainder is the d low bits. */
    const int dbase = E - e->top - 1 + f->bias + mbits; /* d = dbase - max(be, 1) + 1 */
    for (Py_ssize_t i = 0; i < nreal; i++) { /* vectorised */
        uint32_t w = load_word(words, i0 + i, size);
        uint32_t a = w & absmask;
        uint32_t be = a >> mbits;
        uint32_t m = (a & mantmask) | (be ? mantmask + 1 : 0u);
        int d = dbase + 1 - (int)(be > 1 ? be : 1);
        d = d > 31 ? 31 : d < 0 ? 0 : d;
        uint32_t qi = a < infbits ? m >> d : 0u;
        if (size == 2) /* at most 10 bits */
            ((uint16_t *)q)[i] = (uint16_t)qi;
        else
            ((uint32_t *)q)[i] = qi;
        neg[i] = (uint8_t)(w >> (8 * size - 1));
        width[i] = (uint8_t)(qi ? d : 0);
        low[i] = w & ((qi ? 1u << d : 1u) - 1u);
    }
    for (Py_ssize_t i = nreal; i < n; i++) { /* the zero padding of the last group */
        if (size == 2)
            ((uint16_t *)q)[i] = 0;
        else
            ((uint32_t *)q)[i] = 0;
        neg[i] = 0;
        width[i] = 0;
        low[i] = 0;
    }
}

#ifdef HAVE_SSSE3_MERGE
/* The words whose width is 0 (q == 0) appended to rest, 8 (16-bit) or 4 (32-bit) words per
 * shuffle; returns the weights done. rest has 16 bytes of room past its end. */
__attribute__((target("ssse3"))) static Py_ssize_t rest_ssse3(int size, const uint8_t *words,
                                                              Py_ssize_t i0, Py_ssize_t n,
                                                              const uint8_t *width,
                                                              uint8_t *rest,
                                                              Py_ssize_t *nrest_io) {
    Py_ssize_t nrest = *nrest_io, i = 0;
    const __m128i zero = _mm_setzero_si128();
    const int lanes = 16 / size;
    for (; i + 16 <= n; i += 16) {
        __m128i wd = _mm_loadu_si128((const __m128i *)(width + i));
        unsigned zm = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(wd, zero));
        if (!zm) continue;
        for (int h = 0; h < 16; h += lanes) {
            unsigned m = (zm >> h) & ((1u << lanes) - 1);
            __m128i w = _mm_loadu_si128((const __m128i *)(words + (i0 + i + h) * size));
            __m128i c = _mm_loadu_si128(
                (const __m128i *)(size == 2 ? COMPRESS16[m] : COMPRESS32[m]));
            _mm_storeu_si128((__m128i *)(rest + nrest * size), _mm_shuffle_epi8(w, c));
            nrest += POP[m];
        }
    }
    *nrest_io = nrest;
    return i;
}
#endif

/* The remainder of a chunk: the low bits of the weights with q != 0, the whole words of the
 * others (the zero padding too). */
INLINE void enc_remainder(Enc *e, int size, const uint8_t *words, Py_ssize_t i0, Py_ssize_t n,
                          const uint8_t *width, const uint32_t *low) {
    BitWriter bw = e->low;
    uint8_t *rest = e->rest;
    Py_ssize_t nrest = e->nrest;
    Py_ssize_t nreal = e->numel - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    /* fields in pairs (float32: <= 24 bits each) or fours (16-bit words: <= 11 bits), so
     * that one put takes at most 48 bits */
    Py_ssize_t i = 0;
    if (size == 2) {
        for (; i + 4 <= nreal; i += 4) {
            int w0 = width[i], w1 = width[i + 1], w2 = width[i + 2], w3 = width[i + 3];
            uint64_t v = ((((((uint64_t)low[i] << w1) | low[i + 1]) << w2) | low[i + 2]) << w3) |
                         low[i + 3];
            bw_put(&bw, v, w0 + w1 + w2 + w3);
        }
    } else {
        for (; i + 2 <= nreal; i += 2) {
            int w1 = width[i + 1];
            bw_put(&bw, ((uint64_t)low[i] << w1) | low[i + 1], width[i] + w1);
        }
    }
    for (; i < nreal; i++) bw_put(&bw, low[i], width[i]);
    i = 0;
#ifdef HAVE_SSSE3_MERGE
    if (use_ssse3) i = rest_ssse3(size, words, i0, nreal, width, rest, &nrest);
#endif
    for (; i < nreal; i += 32) { /* q == 0: rare; 32 at a time when none is */
        Py_ssize_t b1 = i + 32 < nreal ? i + 32 : nreal;
        unsigned z = 0;
        for (Py_ssize_t k = i; k < b1; k++) z |= width[k] == 0;
        if (z)
            for (Py_ssize_t k = i; k < b1; k++)
                if (width[k] == 0) store_word(rest, nrest++, size, load_word(words, i0 + k, size));
    }
    for (Py_ssize_t i = nreal; i < n; i++) store_word(rest, nrest++, size, 0u);
    e->low = bw;
    e->nrest = nrest;
}

INLINE void enc_run_impl(Enc *e, Py_ssize_t chunk_groups) {
    const Py_ssize_t gsize = e->gsize, ngroups = e->total / gsize;
    for (Py_ssize_t g0 = 0; g0 < ngroups; g0 += chunk_groups) {
        Py_ssize_t g1 = g0 + chunk_groups < ngroups ? g0 + chunk_groups : ngroups;
        for (Py_ssize_t g = g0; g < g1; g++) {
            Py_ssize_t i0 = g * gsize;
            Py_ssize_t o = (g - g0) * gsize;
            if (e->f.size == 2)
                enc_group(e, 2, e->words, i0, gsize, e->numel - i0, (uint16_t *)e->q + o, e->neg + o,
                          e->width + o, e->lowv + o, e->scales + g);
            else
                enc_group(e, 4, e->words, i0, gsize, e->numel - i0, e->q + o, e->neg + o,
                          e->width + o, e->lowv + o, e->scales + g);
        }
        Py_ssize_t n = (g1 - g0) * gsize;
        if (e->f.size == 2)
            enc_remainder(e, 2, e->words, g0 * gsize, n, e->width, e->lowv);
        else
            enc_remainder(e, 4, e->words, g0 * gsize, n, e->width, e->lowv);
        for (int s = 0; s < e->nsteps; s++)
            step_chunk(&e->steps[s], e->q, e->f.size, e->neg, n, e->tmp);
    }
    for (int s = 0; s < e->nsteps; s++) step_flush(&e->steps[s]);
    bw_flush(&e->low);
}

#ifdef HAVE_V3
V3_TARGET static void enc_run_v3(Enc *e, Py_ssize_t chunk_groups) { enc_run_impl(e, chunk_groups); }
#endif
static void enc_run(Enc *e, Py_ssize_t chunk_groups) {
#ifdef HAVE_V3
    if (use_v3) {
        enc_run_v3(e, chunk_groups);
        return;
    }
#endif
    enc_run_impl(e, chunk_groups);
}

static PyObject *py_encode(PyObject *self, PyObject *args) {
    (void)self;
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
    scratch = PyMem_RawMalloc((size_t)chunk * 10 + per_step * (size_t)(2 * e->nsteps + 3));
    resttmp = PyMem_RawMalloc((size_t)total * (size_t)size + 32);
    if (!scratch || !resttmp) {
        PyErr_NoMemory();
        goto done;
    }
    e->q = (uint32_t *)scratch;
    e->lowv = (uint32_t *)(scratch + (size_t)chunk * 4);
    e->neg = scratch + (size_t)chunk * 8;
    e->width = scratch + (size_t)chunk * 9;
    uint8_t *sb = scratch + (size_t)chunk * 10;
    for (int s = 0; s < e->nsteps; s++) {
        e->steps[s].dbuf = sb + (2 * (size_t)s) * per_step;
        e->steps[s].rbuf = sb + (2 * (size_t)s + 1) * per_step;
    }
    e->tmp = sb + 2 * (size_t)e->nsteps * per_step;
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

static int cpu_ssse3, cpu_avx2, cpu_v3; /* what the CPU has (use_* may be switched off) */

static PyObject *py_simd(PyObject *self, PyObject *args) {
    (void)self;
    int enable = -1;
    if (!PyArg_ParseTuple(args, "|p", &enable)) return NULL;
#ifdef HAVE_SSSE3_MERGE
    if (enable >= 0) {
        use_ssse3 = enable && cpu_ssse3;
        use_avx2 = enable && cpu_avx2;
#ifdef HAVE_V3
        use_v3 = enable && cpu_v3;
#endif
    }
    return PyBool_FromLong(use_ssse3 || use_avx2 || use_v3);
#else
    (void)cpu_ssse3, (void)cpu_avx2, (void)cpu_v3;
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS,
     "encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps) -> "
     "(scales, [(codes, refine)], rest, low)"},
    {"decode_planes", py_decode_planes, METH_VARARGS,
     "decode_planes(prior, n_in, out, scales, e_floor, gsize, size, ebits, mbits, k1, r, "
     "codes, refine)"},
    {"decode_levels", py_decode_levels, METH_VARARGS,
     "decode_levels(out, numel, scales, e_floor, gsize, size, ebits, mbits, "
     "[(k1, r, first_of_level, codes, refine)], (raw, low) | None): levels 0..n in one pass"},
    {"simd", py_simd, METH_VARARGS,
     "simd([enable]) -> whether the SIMD kernels (SSSE3, AVX2, BMI2; as the CPU has them) "
     "are used; simd(False) selects the portable ones (for tests)"},
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
#ifdef HAVE_SSSE3_MERGE
    init_expand();
    cpu_ssse3 = use_ssse3;
    cpu_avx2 = use_avx2;
    cpu_v3 = use_v3;
#endif
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "FORMAT", FORMAT_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
