/* What groupplane's C kernels share: portability macros, float formats, the symbol tables,
 * the CPU's SIMD features, and each file's entry points.
 *
 * The byte format is peerprog/codec/groupplane/format.py's; zstd and the framing stay in
 * Python: these kernels produce and consume the uncompressed streams. The files:
 *   tables.c     float formats, symbol tables (symbols per byte come from format.py),
 *                the CPU's SIMD features
 *   planes.c     decoding plane steps, chunk by chunk
 *   remainder.c  decoding the remainder (the exact bits), chunk by chunk
 *   decode.c     one pass over a tensor: every plane step and the remainder per chunk
 *   encode.c     one pass over a tensor: scales, every plane step, the remainder
 *   module.c     the Python module: arguments, buffers, errors, the interface version
 *
 * Words are the dtype's bit patterns in native byte order (uint16 for bfloat16 and float16,
 * uint32 for float32), as numpy's ``array.view(dt.word)`` gives them. Only module.c knows
 * Python; the kernels run without the GIL.
 *
 * Untrusted input (symbol bytes, refinement bits, remainder bytes) is never read or written
 * out of bounds: every read of a variable-length stream goes through a bounds-checked load,
 * every cursor is clamped, and the counts are checked against the stream lengths after the
 * pass. Output buffers are sized by the caller from the tensor's shape.
 */
#ifndef GROUPPLANE_GP_H
#define GROUPPLANE_GP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STEP 7
#define CH 1024 /* weights per chunk of the decoder */
#define MAX_STEPS 160

typedef ptrdiff_t ssize; /* counts and indices */

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
static __forceinline int ctz64(uint64_t x) {
    unsigned long i;
    _BitScanForward64(&i, x);
    return (int)i;
}
#define BSWAP64 _byteswap_uint64
#define BSWAP32 _byteswap_ulong
#define HIDDEN
#else
#define INLINE static inline __attribute__((always_inline))
#define ctz32(x) __builtin_ctz(x)
#define ctz64(x) __builtin_ctzll(x)
#define clz32(x) __builtin_clz(x)
#define BSWAP64 __builtin_bswap64
#define BSWAP32 __builtin_bswap32
#define HIDDEN __attribute__((visibility("hidden")))
#endif

/* x86-64 (GCC, clang): each kernel is also compiled for AVX2 + BMI2 (variable shifts without
 * the cl register) and picked once at load when the CPU has them (gp_use_v3); SSSE3 byte
 * shuffles spread and gather the streams (gp_use_ssse3). Other CPUs run the portable C
 * (-DGP_PORTABLE builds only that, to test it). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(GP_PORTABLE)
#define HAVE_V3 1
#define V3_TARGET __attribute__((target("avx2,bmi,bmi2,popcnt")))
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(GP_PORTABLE)
#define HAVE_X86 1
#include <immintrin.h>
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define BE64(x) (x)
#define BE32(x) (x)
#define LE64(x) BSWAP64(x)
#else
#define BE64(x) BSWAP64(x)
#define BE32(x) BSWAP32(x)
#define LE64(x) (x)
#endif

/* ------------------------------------------------------------------------ float formats */

enum { K_F32 = 0, K_BF16 = 1, K_F16 = 2 };

typedef struct {
    int kind, size, ebits, mbits, bits, bias;
    uint32_t absmask, infbits, mantmask, implicit;
} Fmt;

/* 0, or -1 if (size, ebits, mbits) is not float32, bfloat16 or float16. */
HIDDEN int fmt_init(Fmt *f, int size, int ebits, int mbits);

INLINE uint32_t load_word(const uint8_t *p, ssize i, int size) {
    if (size == 2) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        return v;
    }
    uint32_t v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

INLINE void store_word(uint8_t *p, ssize i, int size, uint32_t w) {
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
INLINE float pow2f(int e) {
    if (e < -149) return 0.0f;
    if (e > 127) return f32_of(0x7f800000u);
    if (e >= -126) return f32_of((uint32_t)(e + 127) << 23);
    return f32_of(1u << (e + 149));
}

/* Big-endian 64-bit window at byte ``off`` of p[0..len), zeros past the end. */
INLINE uint64_t window(const uint8_t *p, ssize len, ssize off) {
    if (off + 8 <= len) {
        uint64_t v;
        memcpy(&v, p + off, 8);
        return BE64(v);
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (off + i < len ? p[off + i] : 0u);
    return v;
}

INLINE int max_byte(const uint8_t *p, ssize n) {
    uint8_t m = 0;
    for (ssize i = 0; i < n; i++) m = m > p[i] ? m : p[i];
    return m;
}

/* ------------------------------------------------------------------------ tables (tables.c) */

/* Symbols of r new bits with their sign, s in [-(2**r - 1), 2**r - 1], travel as digits
 * d = s + 2**r - 1 in base A = 2**(r+1) - 1, gp_per[r] digits per byte (first digit lowest). */
extern HIDDEN int gp_per[MAX_STEP + 1];
extern HIDDEN int gp_apow[MAX_STEP + 1];                /* A ** per: a code byte must be below */
extern HIDDEN int8_t gp_table[MAX_STEP + 1][256][8];    /* the symbols of each code byte */
extern HIDDEN int8_t gp_fields[5][256][8]; /* r = 1, 2, 4: the 8 / r fields of a byte, MSB first */
extern HIDDEN int gp_tables_ready;

/* Build the symbol tables from the symbols per byte of r = 1 .. MAX_STEP (format.py's rule);
 * -1 if one does not fit (A ** per > 256 or per > 8). */
HIDDEN int gp_tables(const int *per);

#ifdef HAVE_X86
extern HIDDEN uint8_t gp_expand[256][8];   /* pshufb: consecutive bytes to the set lanes of m */
extern HIDDEN uint8_t gp_compress[256][8]; /* the set lanes of m, gathered to the front */
extern HIDDEN uint8_t gp_compress16[256][16], gp_compress32[16][16]; /* 2- and 4-byte lanes */
extern HIDDEN uint8_t gp_pop[256];         /* the set lanes of m */
#endif
extern HIDDEN int gp_use_ssse3, gp_use_avx2, gp_use_v3; /* the SIMD paths in use */

/* Detect the CPU's features (once, at module load). */
HIDDEN void gp_cpu_init(void);
/* enable >= 0: use the SIMD paths the CPU has (1) or none (0); returns whether any is used. */
HIDDEN int gp_simd(int enable);

/* ------------------------------------------------------------------------ decode */

typedef struct { /* a stream of small values expanded chunk by chunk into buf */
    const uint8_t *src;
    ssize len, at; /* source bytes, next one to expand */
    int8_t buf[2 * CH + 64];
    int pos, end; /* next value, end of the expanded ones */
} Expander;

typedef struct { /* one plane step's decoding state across chunks (planes.c) */
    Expander syms, flds;
    const int8_t (*table)[8];
    int per, r, k1;
    ssize nsig;
} StepDec;

/* A weight's state while its chunk is decoded: the magnitude q after the steps so far and,
 * in the top bit, the sign (known once q != 0, or a -0 prior's). 16 bits for the 16-bit
 * kinds (q < 2**10), 32 for float32 (``wide``). */
#define SIGN 0x80000000u
#define MAG 0x7fffffffu

HIDDEN void step_init(StepDec *st, int k1, int r, const uint8_t *codes, ssize ncodes,
                      const uint8_t *ref, ssize nref);
/* Expand both streams until at least CH values are ahead (before each chunk). */
HIDDEN void step_refill(StepDec *st);
/* A step on n (<= CH) states where every weight takes a symbol (no prior: level 0). */
HIDDEN void step_first(void *s, ssize n, StepDec *st, int wide);
/* A step on n (<= CH) states; returns the significant ones. */
HIDDEN ssize step_update(void *s, ssize n, StepDec *st, int wide);
#ifdef HAVE_V3
HIDDEN void step_refill_v3(StepDec *st);
HIDDEN ssize step_update_v3(void *s, ssize n, StepDec *st, int wide);
#endif

typedef struct { /* the remainder's per-chunk scratch */
    uint8_t width[CH + 32];
    uint8_t zero[CH + 32];
    uint32_t low[CH + 8];
    uint16_t idx[CH + 16]; /* the zero words' indices */
    uint8_t big[CH + 32];  /* split: the word's bottom 8 low bits come from the byte plane */
    int ready; /* width and zero of the chunk's real words are filled in already */
} RemWork;

typedef struct { /* the remainder's decoding state across chunks (remainder.c) */
    const uint8_t *raw, *low;
    ssize nrest, lowlen, j;
    int64_t bpos;
    uint32_t bad;
    int mbits;
    const uint8_t *lowb; /* split (format 2): the bottom bytes of fields wider than 8 bits, */
    ssize nlowb, jb;     /* their count and how many were used; NULL: not split */
} RemDec;

/* One chunk of n words: ``in`` (the values so far, its first nreal words; the rest +0) and
 * ``out`` point at the chunk. */
#define REM_CHUNK_ARGS                                                                         \
    int size, const uint8_t *in, ssize nreal, uint8_t *out, ssize n, RemDec *rd, RemWork *wk
HIDDEN void remainder_chunk(REM_CHUNK_ARGS);
#ifdef HAVE_V3
HIDDEN void remainder_chunk_v3(REM_CHUNK_ARGS);
#endif

typedef struct { /* one pass of decode.c */
    Fmt f;
    uint8_t *out;            /* total words */
    const uint8_t *prior;    /* numel words, or NULL: all 0 */
    ssize numel, total, gsize;
    const uint8_t *scales;   /* ngroups bytes */
    int e_floor, nsteps;
    StepDec *steps;
    const uint8_t *first;    /* per step: the first of its level */
    RemDec *rem;             /* or NULL */
    int k0;                  /* the prior's planes (steps[0].k1 - steps[0].r) */
    int bad_prior;           /* out: a prior word is not a midpoint of k0 planes */
    uint32_t *state;         /* CH */
    uint8_t *words;          /* CH * 4 bytes: the midpoints of a chunk */
    RemWork *rw;
} Decode;

/* Every step, then the remainder, chunk by chunk; the counts are checked by the caller. */
HIDDEN void gp_decode(Decode *d);

/* ------------------------------------------------------------------------ encode */

typedef struct {
    int hi, lo, r, per, a, off;
    uint32_t mask;
    uint8_t *codes; /* output: code bytes */
    ssize ncodes;
    uint8_t *ref; /* output: packed refinement bits */
    ssize nref;
    uint8_t *dbuf, *rbuf; /* per chunk: compacted digits and refinement fields */
    int npd, npr;         /* pending (not yet packed) at the head of dbuf / rbuf */
} Step;

typedef struct { /* MSB-first bit writer: acc holds ``fill`` (< 8) pending bits at its top */
    uint8_t *out;
    uint64_t acc;
    int fill;
} BitWriter;

typedef struct {
    Fmt f;
    const uint8_t *words;
    ssize numel, total, gsize;
    int e_floor, e_ceil, top, nsteps;
    uint8_t *scales;
    Step steps[32];
    uint8_t *rest; /* rest words, native order, then shuffled by the caller */
    ssize nrest;
    BitWriter low;
    uint8_t *lowb; /* split (format 2): bottom bytes of fields wider than 8 bits; or NULL */
    ssize nlowb;
    uint32_t *q, *lowv;
    uint8_t *neg, *width, *tmp;
} Enc;

/* The whole tensor, chunk_groups groups at a time. */
HIDDEN void gp_encode(Enc *e, ssize chunk_groups);

#endif
