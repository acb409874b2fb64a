/* The Python module ``peerprog.codec.groupplane._rans``: the rANS lanes of groupplane's
 * symbol bytes (the model, the framing and the format's description are in
 * peerprog/codec/groupplane/rans.py). CPython's buffer protocol only: no numpy headers.
 *
 *   encode(data, freq, cum, lanes) -> (payload, [lane lengths])
 *   decode(payload, lengths, freq, cum, sym, n) -> bytes of n
 *
 * freq and cum are 256 native uint32 (the byte frequencies, summing to 2**15, and their
 * exclusive prefix sums), sym the 2**15 slots' byte values, lengths the lanes' byte lengths
 * as native uint64. Byte i is lane i % lanes' at position i // lanes; a lane's stream is its
 * final state (4 bytes little-endian) then the bytes the decoder reads, in that order.
 * decode raises peerprog.errors.FormatError when the lanes are not exactly n bytes (a lane
 * starting in a state out of L .. 2**31 - 1, running out of bytes, ending with bytes left or
 * in a state other than L); it reads nothing outside the payload. The tables come from
 * rans.py, not from the data, and are checked (ValueError) so that no input can crash.
 *
 *   VERSION: the interface version, checked by rans.py (a stale build is not used)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define VERSION 1
#define SCALE_BITS 15
#define SCALE (1u << SCALE_BITS)
#define RANS_L (1u << 23)
#define STATE_END (1u << 31)

static PyObject *FormatError; /* peerprog.errors.FormatError */

typedef struct {
    const uint32_t *freq;
    const uint32_t *cum;
} Table;

/* --------------------------------------------------------------------------- arguments */

typedef struct {
    Py_buffer views[5];
    int n;
} Views;

/* A C-contiguous view of obj (of size bytes unless size < 0) kept in v; 0 or -1. */
static int get_view(Views *v, PyObject *obj, Py_ssize_t size, const char *name) {
    Py_buffer *view = &v->views[v->n];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    v->n++;
    if (size < 0 || view->len == size) return 0;
    PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, view->len, size);
    return -1;
}

static void release_views(Views *v) {
    for (int i = 0; i < v->n; i++) PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

/* freq sums to 2**15 and cum is its exclusive prefix sum (so no byte's interval leaves the
 * slots and f << 16 fits 32 bits); 0 or -1 with ValueError. */
static int check_table(const Table *t) {
    uint32_t sum = 0;
    for (int s = 0; s < 256; s++) {
        if (t->cum[s] != sum || t->freq[s] > SCALE - sum) {
            PyErr_SetString(PyExc_ValueError, "rANS frequencies that are not a distribution");
            return -1;
        }
        sum += t->freq[s];
    }
    if (sum == SCALE) return 0;
    PyErr_SetString(PyExc_ValueError, "rANS frequencies that do not sum to 2**15");
    return -1;
}

/* Every slot maps to the byte value whose interval holds it. */
static int check_slots(const Table *t, const uint8_t *sym) {
    for (uint32_t slot = 0; slot < SCALE; slot++) {
        uint32_t s = sym[slot];
        if (slot < t->cum[s] || slot - t->cum[s] >= t->freq[s]) {
            PyErr_SetString(PyExc_ValueError, "rANS slot table that does not match freq");
            return -1;
        }
    }
    return 0;
}

/* Bytes of lane l of n bytes in k lanes. */
static Py_ssize_t lane_bytes(Py_ssize_t n, Py_ssize_t k, Py_ssize_t l) {
    return n / k + (l < n % k);
}

/* Lanes with a byte at position j. */
static Py_ssize_t active(Py_ssize_t n, Py_ssize_t k, Py_ssize_t j) {
    Py_ssize_t left = n - j * k;
    return left < k ? left : k;
}

/* --------------------------------------------------------------------------- encode */

/* Both directions work in tiles of TILE_ROWS rows by TILE_LANES lanes: the tile's states,
 * positions and stream ends stay in registers or L1 (round-robin over all the lanes, 4096 of
 * them, would not). */
#define TILE_ROWS 64
#define TILE_LANES 32

/* A byte value's encoding constants (ryg_rans' RansEncSymbol): x / f as a multiplication
 * by a reciprocal, exact for x < 2**31, so that x' = x + bias + q * cmpl. */
typedef struct {
    uint32_t freq, rcp, bias, cmpl, shift;
} EncSym;

static void enc_symbols(const Table *t, EncSym *e) {
    for (int s = 0; s < 256; s++) {
        uint32_t f = t->freq[s], shift = 0;
        e[s].freq = f;
        e[s].cmpl = SCALE - f;
        if (f < 2) { /* f == 1: q = x - 1 from the all-ones reciprocal, the bias makes up */
            e[s].rcp = ~0u;
            e[s].shift = 0;
            e[s].bias = t->cum[s] + SCALE - 1;
            continue;
        }
        while (f > (1u << shift)) shift++;
        e[s].rcp = (uint32_t)(((1ull << (shift + 31)) + f - 1) / f);
        e[s].shift = shift - 1;
        e[s].bias = t->cum[s];
    }
}

/* The lanes' streams, each written backward to end at hi[l] in buf (room for 2 bytes per
 * byte and the state, so a byte may write 2 below its lane's position); at[l] is where lane
 * l's stream begins. 0, or -1 if a byte of data has frequency 0. */
static int encode_lanes(const uint8_t *data, Py_ssize_t n, Py_ssize_t k, const EncSym *sy,
                        uint8_t *buf, const Py_ssize_t *hi, Py_ssize_t *at, uint32_t *x) {
    for (Py_ssize_t l = 0; l < k; l++) {
        at[l] = hi[l];
        x[l] = RANS_L;
    }
    Py_ssize_t rows = (n + k - 1) / k;
    for (Py_ssize_t top = rows; top > 0; top -= TILE_ROWS) { /* tiles, as the decoder's */
        Py_ssize_t bottom = top > TILE_ROWS ? top - TILE_ROWS : 0;
        for (Py_ssize_t l0 = 0; l0 < k; l0 += TILE_LANES) {
            Py_ssize_t l1 = k - l0 < TILE_LANES ? k : l0 + TILE_LANES;
            for (Py_ssize_t j = top - 1; j >= bottom; j--) {
                const uint8_t *row = data + j * k;
                Py_ssize_t a = active(n, k, j) < l1 ? active(n, k, j) : l1;
                for (Py_ssize_t l = l0; l < a; l++) {
                    const EncSym *e = &sy[row[l]];
                    uint32_t v = x[l];
                    if (e->freq == 0) return -1;
                    /* emit while v >= ((L >> 15) << 8) * f = f << 16: at most twice
                       (v < 2**31); both bytes written, the second overwritten later if it
                       is not emitted */
                    uint64_t most = (uint64_t)e->freq << 16;
                    uint32_t emit = (v >= most) + (v >= most << 8);
                    Py_ssize_t p = at[l];
                    buf[p - 1] = (uint8_t)v;
                    buf[p - 2] = (uint8_t)(v >> 8);
                    at[l] = p - emit;
                    v >>= 8 * emit;
                    uint32_t q = (uint32_t)(((uint64_t)v * e->rcp) >> 32) >> e->shift;
                    x[l] = v + e->bias + q * e->cmpl; /* ((v / f) << 15) + v % f + cum */
                }
            }
        }
    }
    for (Py_ssize_t l = 0; l < k; l++) {
        at[l] -= 4;
        for (int i = 0; i < 4; i++) buf[at[l] + i] = (uint8_t)(x[l] >> (8 * i));
    }
    return 0;
}

/* Moves the lanes' streams together to the front of buf; their total length. */
static Py_ssize_t pack_lanes(uint8_t *buf, Py_ssize_t k, const Py_ssize_t *hi,
                             const Py_ssize_t *at) {
    Py_ssize_t out = 0;
    for (Py_ssize_t l = 0; l < k; l++) {
        memmove(buf + out, buf + at[l], (size_t)(hi[l] - at[l]));
        out += hi[l] - at[l];
    }
    return out;
}

static PyObject *lengths_list(Py_ssize_t k, const Py_ssize_t *hi, const Py_ssize_t *at) {
    PyObject *list = PyList_New(k);
    if (!list) return NULL;
    for (Py_ssize_t l = 0; l < k; l++) {
        PyObject *v = PyLong_FromSsize_t(hi[l] - at[l]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, l, v);
    }
    return list;
}

static PyObject *encode_views(const Py_buffer *data, const Table *t, Py_ssize_t k) {
    Py_ssize_t n = data->len;
    if (k < 1 || k > PY_SSIZE_T_MAX / 8 || n > (PY_SSIZE_T_MAX - 4 * k) / 2) {
        PyErr_SetString(PyExc_ValueError, "rANS encode: bad number of lanes");
        return NULL;
    }
    Py_ssize_t *hi = PyMem_Malloc((size_t)k * 2 * sizeof(Py_ssize_t));
    uint32_t *x = PyMem_Malloc((size_t)k * sizeof(uint32_t));
    PyObject *buf = PyBytes_FromStringAndSize(NULL, 2 * n + 4 * k), *result = NULL, *lengths;
    Py_ssize_t *at, end = 0, size = 0;
    int err;
    if (!hi || !x || !buf) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    at = hi + k;
    for (Py_ssize_t l = 0; l < k; l++) hi[l] = end += 2 * lane_bytes(n, k, l) + 4;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(buf);
    Py_BEGIN_ALLOW_THREADS;
    EncSym sy[256];
    enc_symbols(t, sy);
    err = encode_lanes(data->buf, n, k, sy, out, hi, at, x);
    if (!err) size = pack_lanes(out, k, hi, at);
    Py_END_ALLOW_THREADS;
    if (err) {
        PyErr_SetString(PyExc_ValueError, "rANS encode: a byte of frequency 0");
        goto done;
    }
    lengths = lengths_list(k, hi, at);
    if (!lengths || _PyBytes_Resize(&buf, size) < 0) {
        Py_XDECREF(lengths);
        goto done;
    }
    result = Py_BuildValue("(ON)", buf, lengths);
done:
    Py_XDECREF(buf);
    PyMem_Free(hi);
    PyMem_Free(x);
    return result;
}

static PyObject *py_encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *data, *freq, *cum;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "OOOn", &data, &freq, &cum, &k)) return NULL;
    Views v = {.n = 0};
    PyObject *result = NULL;
    if (get_view(&v, data, -1, "data") == 0 && get_view(&v, freq, 1024, "freq") == 0 &&
        get_view(&v, cum, 1024, "cum") == 0) {
        Table t = {v.views[1].buf, v.views[2].buf};
        if (check_table(&t) == 0) result = encode_views(&v.views[0], &t, k);
    }
    release_views(&v);
    return result;
}

/* --------------------------------------------------------------------------- decode */

typedef struct {
    uint32_t *x;    /* state */
    uint64_t *pos;  /* next byte to read, in the payload */
    uint64_t *end;  /* where the lane's bytes end */
} Lanes;

/* Reads each lane's state; the first lane whose state is out of range, or -1. */
static Py_ssize_t start_lanes(const uint8_t *pay, const uint64_t *lengths, Py_ssize_t k,
                              Lanes *ln) {
    uint64_t at = 0;
    Py_ssize_t bad = -1;
    for (Py_ssize_t l = 0; l < k; l++) {
        const uint8_t *p = pay + at;
        uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24;
        if ((v < RANS_L || v >= STATE_END) && bad < 0) bad = l;
        ln->x[l] = v;
        ln->pos[l] = at + 4;
        ln->end[l] = at += lengths[l];
    }
    return bad;
}

/* The lanes are decoded in tiles (see TILE_ROWS): a tile at full speed where each of its
 * lanes has SLACK bytes more than the 2 a row for all its rows (the AVX2 path reads 4 bytes
 * at a lane's position), else checked. Which path decodes a tile changes nothing but the
 * speed. */
#define SLACK 2

typedef struct {
    const uint8_t *pay;
    const Table *t;
    const uint8_t *sym;    /* 2**15 */
    const uint8_t *sym4;   /* the same with 3 bytes more, for 4-byte gathers */
    const uint32_t *fc;    /* freq << 16 | cum, per byte value */
    uint8_t *out;
    Py_ssize_t k;
    int simd;              /* the AVX2 path (the payload is below 2 GiB, the CPU has it) */
} Decoder;

/* One byte of a lane: its state v advanced past the slot's byte value (written to *o) and
 * renormalised with as many of the next two bytes w = b0 << 8 | b1 as it takes (at most 2:
 * the states stay in L .. 2**31 - 1); how many. */
static inline uint32_t decode_one(uint32_t *v, uint32_t w, const uint32_t *restrict freq,
                                  const uint32_t *restrict cum, const uint8_t *restrict sym,
                                  uint8_t *restrict o) {
    uint32_t x = *v, slot = x & (SCALE - 1), s = sym[slot];
    *o = (uint8_t)s;
    x = freq[s] * (x >> SCALE_BITS) + slot - cum[s];
    uint32_t n = (x < RANS_L) + (x < (RANS_L >> 8)), bits = 8 * n;
    *v = x << bits | w >> (16 - bits);
    return n;
}

/* Rows j .. j + rows - 1 of lanes l0 .. l1 - 1, every lane having the bytes for them. */
static void decode_fast(const Decoder *d, Lanes *ln, Py_ssize_t j, Py_ssize_t rows,
                        Py_ssize_t l0, Py_ssize_t l1) {
    const uint8_t *restrict pay = d->pay, *restrict sym = d->sym;
    const uint32_t *restrict freq = d->t->freq, *restrict cum = d->t->cum;
    uint32_t *restrict x = ln->x;
    uint64_t *restrict pos = ln->pos;
    uint8_t *restrict row = d->out + j * d->k;
    for (Py_ssize_t r = 0; r < rows; r++, row += d->k) {
        for (Py_ssize_t l = l0; l < l1; l++) {
            uint64_t p = pos[l];
            uint32_t w = (uint32_t)pay[p] << 8 | pay[p + 1];
            pos[l] = p + decode_one(&x[l], w, freq, cum, sym, row + l);
        }
    }
}

/* The same, reading a 0 in place of a byte past a lane's end (the lane then ends past its
 * end, which check_ends reports); lanes past the last byte (in the last row) skipped. */
static void decode_checked(const Decoder *d, Lanes *ln, Py_ssize_t j, Py_ssize_t rows,
                           Py_ssize_t l0, Py_ssize_t l1, Py_ssize_t n) {
    for (Py_ssize_t r = j; r < j + rows; r++) {
        Py_ssize_t stop = active(n, d->k, r);
        for (Py_ssize_t l = l0; l < l1 && l < stop; l++) {
            uint64_t p = ln->pos[l], e = ln->end[l];
            uint32_t b0 = p < e ? d->pay[p] : 0, b1 = p + 1 < e ? d->pay[p + 1] : 0;
            ln->pos[l] = p + decode_one(&ln->x[l], b0 << 8 | b1, d->t->freq, d->t->cum, d->sym,
                                        d->out + r * d->k + l);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2")))

/* decode_one on 8 lanes (states x, positions pos), their bytes to o[0 .. 7]. */
AVX2_INLINE void decode8(const Decoder *d, __m256i *x, __m256i *pos, uint8_t *o) {
    const __m256i low = _mm256_set1_epi32(SCALE - 1), byte = _mm256_set1_epi32(0xff);
    /* per 32-bit element: b1 to byte 0, b0 to byte 1 (w = b0 << 8 | b1); the low bytes of
       the four elements of each half to its bytes 0 .. 3 */
    const __m256i swap = _mm256_setr_epi8(1, 0, -1, -1, 5, 4, -1, -1, 9, 8, -1, -1, 13, 12,
                                          -1, -1, 1, 0, -1, -1, 5, 4, -1, -1, 9, 8, -1, -1, 13,
                                          12, -1, -1);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1, -1);
    __m256i slot = _mm256_and_si256(*x, low);
    __m256i s = _mm256_and_si256(_mm256_i32gather_epi32((const int *)d->sym4, slot, 1), byte);
    __m256i w = _mm256_shuffle_epi8(_mm256_i32gather_epi32((const int *)d->pay, *pos, 1), swap);
    __m256i fc = _mm256_i32gather_epi32((const int *)d->fc, s, 4);
    __m256i v = _mm256_mullo_epi32(_mm256_srli_epi32(fc, 16), _mm256_srli_epi32(*x, SCALE_BITS));
    v = _mm256_add_epi32(v, _mm256_sub_epi32(slot, _mm256_and_si256(fc, _mm256_set1_epi32(0xffff))));
    __m256i one = _mm256_cmpgt_epi32(_mm256_set1_epi32(RANS_L), v); /* -1: a byte to read */
    __m256i two = _mm256_cmpgt_epi32(_mm256_set1_epi32(RANS_L >> 8), v);
    __m256i n = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_add_epi32(one, two));
    __m256i bits = _mm256_slli_epi32(n, 3);
    *x = _mm256_or_si256(_mm256_sllv_epi32(v, bits),
                         _mm256_srlv_epi32(w, _mm256_sub_epi32(_mm256_set1_epi32(16), bits)));
    *pos = _mm256_add_epi32(*pos, n);
    __m256i b = _mm256_shuffle_epi8(s, pick);
    __m128i out = _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storel_epi64((__m128i *)o, out);
}

/* decode_fast for G groups of 8 lanes from lane l, their states in registers. */
AVX2_INLINE void decode_groups(const Decoder *d, Lanes *ln, Py_ssize_t j, Py_ssize_t rows,
                               Py_ssize_t l, int G) {
    __m256i x[4], pos[4];
    int32_t p[8];
    for (int g = 0; g < G; g++) {
        x[g] = _mm256_loadu_si256((const __m256i *)(ln->x + l + 8 * g));
        for (int i = 0; i < 8; i++) p[i] = (int32_t)ln->pos[l + 8 * g + i];
        pos[g] = _mm256_loadu_si256((const __m256i *)p);
    }
    uint8_t *row = d->out + j * d->k + l;
    for (Py_ssize_t r = 0; r < rows; r++, row += d->k)
        for (int g = 0; g < G; g++) decode8(d, &x[g], &pos[g], row + 8 * g);
    for (int g = 0; g < G; g++) {
        _mm256_storeu_si256((__m256i *)(ln->x + l + 8 * g), x[g]);
        _mm256_storeu_si256((__m256i *)p, pos[g]);
        for (int i = 0; i < 8; i++) ln->pos[l + 8 * g + i] = (uint32_t)p[i];
    }
}

/* decode_fast with AVX2: 32 lanes at a time, then 8, then one by one. */
AVX2 static void decode_fast_avx2(const Decoder *d, Lanes *ln, Py_ssize_t j, Py_ssize_t rows,
                                  Py_ssize_t l0, Py_ssize_t l1) {
    for (; l0 + 32 <= l1; l0 += 32) decode_groups(d, ln, j, rows, l0, 4);
    for (; l0 + 8 <= l1; l0 += 8) decode_groups(d, ln, j, rows, l0, 1);
    if (l0 < l1) decode_fast(d, ln, j, rows, l0, l1);
}

static int cpu_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
#define HAVE_AVX2 0
static int cpu_avx2(void) { return 0; }
#endif

static int simd_enabled; /* the AVX2 path, where the CPU has it (simd()) */

/* Whether lanes l0 .. l1 - 1 have at least need bytes left each. */
static int lanes_have(const Lanes *ln, Py_ssize_t l0, Py_ssize_t l1, uint64_t need) {
    for (Py_ssize_t l = l0; l < l1; l++)
        if (ln->pos[l] + need > ln->end[l]) return 0;
    return 1;
}

/* Decodes n bytes in k lanes, tile by tile. */
static void decode_lanes(const Decoder *d, Py_ssize_t n, Lanes *ln) {
    Py_ssize_t k = d->k, rows = (n + k - 1) / k, full = n / k;
    for (Py_ssize_t j = 0; j < rows; j += TILE_ROWS) {
        Py_ssize_t h = rows - j < TILE_ROWS ? rows - j : TILE_ROWS;
        for (Py_ssize_t l0 = 0; l0 < k; l0 += TILE_LANES) {
            Py_ssize_t l1 = k - l0 < TILE_LANES ? k : l0 + TILE_LANES;
            if (j + h > full || !lanes_have(ln, l0, l1, 2 * (uint64_t)h + SLACK))
                decode_checked(d, ln, j, h, l0, l1, n);
#if HAVE_AVX2
            else if (d->simd)
                decode_fast_avx2(d, ln, j, h, l0, l1);
#endif
            else
                decode_fast(d, ln, j, h, l0, l1);
        }
    }
}

/* FormatError for the first lane that did not end exactly, or 0. */
static int check_ends(const Lanes *ln, Py_ssize_t k) {
    for (Py_ssize_t l = 0; l < k; l++) {
        if (ln->pos[l] != ln->end[l]) {
            PyErr_Format(FormatError, "rANS lane %zd ends at byte %llu, not %llu", l,
                         (unsigned long long)ln->pos[l], (unsigned long long)ln->end[l]);
            return -1;
        }
    }
    for (Py_ssize_t l = 0; l < k; l++) {
        if (ln->x[l] != RANS_L) {
            PyErr_Format(FormatError, "rANS lane %zd ends in state 0x%x, not 0x%x", l,
                         (unsigned int)ln->x[l], (unsigned int)RANS_L);
            return -1;
        }
    }
    return 0;
}

/* The lengths are at least 4 and sum to the payload's. */
static int check_lengths(const uint64_t *lengths, Py_ssize_t k, Py_ssize_t size) {
    uint64_t sum = 0;
    for (Py_ssize_t l = 0; l < k; l++) {
        if (lengths[l] < 4 || lengths[l] > (uint64_t)size - sum) {
            PyErr_SetString(PyExc_ValueError, "rANS lane lengths that do not fit the payload");
            return -1;
        }
        sum += lengths[l];
    }
    if (sum == (uint64_t)size) return 0;
    PyErr_SetString(PyExc_ValueError, "rANS lane lengths that do not sum to the payload's");
    return -1;
}

static PyObject *decode_views(const Py_buffer *pay, const uint64_t *lengths, Py_ssize_t k,
                              const Table *t, const uint8_t *sym, Py_ssize_t n) {
    if (k < 1 || n < 0 || check_lengths(lengths, k, pay->len) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "rANS decode: bad sizes");
        return NULL;
    }
    Lanes ln = {PyMem_Malloc((size_t)k * sizeof(uint32_t)),
                PyMem_Malloc((size_t)k * sizeof(uint64_t)),
                PyMem_Malloc((size_t)k * sizeof(uint64_t))};
    uint8_t *sym4 = PyMem_Malloc(SCALE + 3);
    uint32_t fc[256];
    PyObject *out = NULL;
    if (!ln.x || !ln.pos || !ln.end || !sym4) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t bad = start_lanes(pay->buf, lengths, k, &ln);
    if (bad >= 0) {
        PyErr_Format(FormatError, "rANS lane %zd starts in state 0x%x, out of range", bad,
                     (unsigned int)ln.x[bad]);
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, n);
    if (!out) goto done;
    memcpy(sym4, sym, SCALE);
    memset(sym4 + SCALE, 0, 3);
    for (int s = 0; s < 256; s++) fc[s] = t->freq[s] << 16 | t->cum[s];
    Decoder d = {pay->buf, t,  sym, sym4, fc, (uint8_t *)PyBytes_AS_STRING(out), k,
                 simd_enabled && pay->len <= INT32_MAX};
    Py_BEGIN_ALLOW_THREADS;
    decode_lanes(&d, n, &ln);
    Py_END_ALLOW_THREADS;
    if (check_ends(&ln, k) < 0) Py_CLEAR(out);
done:
    PyMem_Free(ln.x);
    PyMem_Free(ln.pos);
    PyMem_Free(ln.end);
    PyMem_Free(sym4);
    return out;
}

static PyObject *py_decode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *pay, *len, *freq, *cum, *sym;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOOOOn", &pay, &len, &freq, &cum, &sym, &n)) return NULL;
    Views v = {.n = 0};
    PyObject *result = NULL;
    if (get_view(&v, pay, -1, "payload") == 0 && get_view(&v, len, -1, "lengths") == 0 &&
        get_view(&v, freq, 1024, "freq") == 0 && get_view(&v, cum, 1024, "cum") == 0 &&
        get_view(&v, sym, SCALE, "sym") == 0) {
        Table t = {v.views[2].buf, v.views[3].buf};
        const uint8_t *slots = v.views[4].buf;
        if (v.views[1].len % 8)
            PyErr_SetString(PyExc_ValueError, "rANS decode: lengths are not uint64");
        else if (check_table(&t) == 0 && check_slots(&t, slots) == 0)
            result = decode_views(&v.views[0], v.views[1].buf, v.views[1].len / 8, &t, slots, n);
    }
    release_views(&v);
    return result;
}

/* --------------------------------------------------------------------------- module */

static PyObject *py_simd(PyObject *self, PyObject *args) {
    (void)self;
    int enable = -1;
    if (!PyArg_ParseTuple(args, "|p", &enable)) return NULL;
    if (enable >= 0) simd_enabled = enable && cpu_avx2();
    return PyBool_FromLong(simd_enabled);
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS,
     "encode(data, freq, cum, lanes) -> (payload, [lane lengths]): the lanes' rANS streams"},
    {"decode", py_decode, METH_VARARGS,
     "decode(payload, lengths, freq, cum, sym, n) -> bytes: n bytes from the lanes' rANS "
     "streams (FormatError unless they hold exactly that)"},
    {"simd", py_simd, METH_VARARGS,
     "simd([enable]) -> whether decode uses AVX2 (where the CPU has it); simd(False) selects "
     "the portable path (for tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rans",
    "rANS lanes of groupplane's symbol bytes (see peerprog/codec/groupplane/rans.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rans(void) {
    PyObject *errors = PyImport_ImportModule("peerprog.errors");
    if (!errors) return NULL;
    FormatError = PyObject_GetAttrString(errors, "FormatError");
    Py_DECREF(errors);
    if (!FormatError) return NULL;
    simd_enabled = cpu_avx2();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
