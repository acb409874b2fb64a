/* Decoding plane steps, a chunk of weights at a time (see gp.h and format.py).
 *
 * A step's symbols (of the weights whose magnitude is 0 so far) and refinement fields (of
 * the others) are expanded a chunk ahead, one value a byte. A chunk's weights are held as
 * their state (gp.h: the magnitude q and the sign); a step merges the two streams into the
 * weights' order by their significance and updates each state: ``q << r | field`` for a
 * significant weight, ``|symbol|`` and the symbol's sign for the others. This is the
 * integer form of numpy's ``v + delta * copysign(2**(E - k1 - 1), v)`` on the midpoints, to
 * the bit (a -0 weight keeps flipping the symbol's sign, as copysign does).
 */
#include "gp.h"

/* Keep the unread values and expand more until at least CH are there (zeros once the
 * source runs out: the counts checked after the pass then fail). Returns where to write. */
INLINE int8_t *keep(Expander *x) {
    int rem = x->end - x->pos;
    if (rem < 0) rem = 0; /* read past the end: only zeros were there */
    if (rem) memmove(x->buf, x->buf + x->pos, (size_t)rem);
    x->pos = 0;
    return x->buf + rem;
}

INLINE void done(Expander *x, int8_t *o, ssize at) {
    x->end = (int)(o - x->buf);
    x->at = at;
    if (x->end < CH + 8) memset(o, 0, (size_t)(CH + 16));
}

/* Symbols: the table's 8 bytes per code byte, ``per`` of them used. */
static void expand_syms(Expander *x, const int8_t (*table)[8], int per) {
    int8_t *o = keep(x), *stop = x->buf + CH + 8;
    const uint8_t *src = x->src;
    ssize at = x->at, len = x->len;
    for (; o < stop && at < len; at++, o += per) memcpy(o, table[src[at]], 8);
    done(x, o, at);
}

/* r-bit fields, MSB first: 8 fields per r bytes. */
static void expand_fields(Expander *x, int r) {
    int8_t *o = keep(x), *stop = x->buf + CH + 8;
    const uint8_t *src = x->src;
    ssize at = x->at, len = x->len;
    if (8 % r == 0) { /* r = 1, 2, 4: whole fields in each byte, by table */
        const int per = 8 / r;
        const int8_t(*t)[8] = (const int8_t(*)[8])gp_fields[r];
        for (; o < stop && at < len; at++, o += per) memcpy(o, t[src[at]], 8);
        done(x, o, at);
        return;
    }
    const uint64_t mask = (1u << r) - 1;
    for (; o < stop && at < len; at += r, o += 8) {
        uint64_t w = 0;
        if (at + 8 <= len) { /* r <= 7 bytes of a big-endian window */
            memcpy(&w, src + at, 8);
            w = BE64(w) >> (64 - 8 * r);
        } else {
            for (int i = 0; i < r; i++) w = (w << 8) | (at + i < len ? src[at + i] : 0u);
        }
        for (int k = 0; k < 8; k++) o[k] = (int8_t)((w >> (r * (7 - k))) & mask);
    }
    done(x, o, at);
}

#ifdef HAVE_V3
/* expand_syms() 16 or 32 code bytes at a time where a byte holds 1 or 2 symbols: d - off,
 * and the two base-A digits (d0 = c - A * (c / A), by a multiply: c < 226). */
V3_TARGET static void expand_syms_v3(Expander *x, const int8_t (*table)[8], int per, int r) {
    int8_t *o = keep(x), *stop = x->buf + CH + 8;
    const uint8_t *src = x->src;
    ssize at = x->at, len = x->len;
    const int a = (1 << (r + 1)) - 1, off = (1 << r) - 1;
    if (per == 1) {
        const __m256i voff = _mm256_set1_epi8((char)off);
        for (; o < stop && at + 32 <= len; at += 32, o += 32)
            _mm256_storeu_si256((__m256i *)o, _mm256_sub_epi8(_mm256_loadu_si256(
                                                                  (const __m256i *)(src + at)),
                                                              voff));
    } else if (per == 2) {
        const __m256i recip = _mm256_set1_epi16((short)(65536 / a + 1));
        const __m256i va = _mm256_set1_epi16((short)a), voff = _mm256_set1_epi16((short)off);
        const __m256i lo = _mm256_set1_epi16(0xff);
        for (; o < stop && at + 16 <= len; at += 16, o += 32) {
            __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + at)));
            __m256i q = _mm256_mulhi_epu16(c, recip);
            __m256i d0 = _mm256_sub_epi16(c, _mm256_mullo_epi16(q, va));
            __m256i v = _mm256_or_si256(_mm256_and_si256(_mm256_sub_epi16(d0, voff), lo),
                                        _mm256_slli_epi16(_mm256_sub_epi16(q, voff), 8));
            _mm256_storeu_si256((__m256i *)o, v);
        }
    }
    for (; o < stop && at < len; at++, o += per) memcpy(o, table[src[at]], 8);
    done(x, o, at);
}

/* expand_fields() for r = 1, 2, 4, 16 source bytes at a time: each byte's fields spread to
 * bytes by shuffles (r = 1: the bits tested) or by nibbles and pairs split in turn. */
V3_TARGET static void expand_fields_v3(Expander *x, int r) {
    if (8 % r) {
        expand_fields(x, r);
        return;
    }
    int8_t *o = keep(x), *stop = x->buf + CH + 8;
    const uint8_t *src = x->src;
    ssize at = x->at, len = x->len;
    const __m128i m4 = _mm_set1_epi8(0x0f), m2 = _mm_set1_epi8(0x03);
    if (r == 1) {
        const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x((long long)0x0102040810204080ull);
        const __m256i one = _mm256_set1_epi8(1);
        for (; o < stop && at + 4 <= len; at += 4, o += 32) {
            int32_t w;
            memcpy(&w, src + at, 4);
            __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32(w), spread);
            __m256i f = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit), one);
            _mm256_storeu_si256((__m256i *)o, f);
        }
    } else {
        for (; o < stop && at + 16 <= len; at += 16) {
            __m128i c = _mm_loadu_si128((const __m128i *)(src + at));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(c, 4), m4), lo = _mm_and_si128(c, m4);
            __m128i n[2] = {_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)};
            if (r == 4) {
                _mm_storeu_si128((__m128i *)o, n[0]);
                _mm_storeu_si128((__m128i *)(o + 16), n[1]);
                o += 32;
                continue;
            }
            for (int k = 0; k < 2; k++) { /* r = 2: each nibble's two pairs */
                __m128i h2 = _mm_and_si128(_mm_srli_epi16(n[k], 2), m2);
                __m128i l2 = _mm_and_si128(n[k], m2);
                _mm_storeu_si128((__m128i *)o, _mm_unpacklo_epi8(h2, l2));
                _mm_storeu_si128((__m128i *)(o + 16), _mm_unpackhi_epi8(h2, l2));
                o += 32;
            }
        }
    }
    const int per = 8 / r;
    const int8_t(*t)[8] = (const int8_t(*)[8])gp_fields[r];
    for (; o < stop && at < len; at++, o += per) memcpy(o, t[src[at]], 8);
    done(x, o, at);
}

V3_TARGET void step_refill_v3(StepDec *st) {
    if (st->syms.end - st->syms.pos < CH)
        expand_syms_v3(&st->syms, st->table, st->per, st->r);
    if (st->flds.end - st->flds.pos < CH) expand_fields_v3(&st->flds, st->r);
}
#endif

void step_init(StepDec *st, int k1, int r, const uint8_t *codes, ssize ncodes,
               const uint8_t *ref, ssize nref) {
    memset(st, 0, sizeof(*st));
    st->syms.src = codes;
    st->syms.len = ncodes;
    st->flds.src = ref;
    st->flds.len = nref;
    st->table = (const int8_t(*)[8])gp_table[r];
    st->per = gp_per[r];
    st->r = r;
    st->k1 = k1;
}

void step_refill(StepDec *st) {
    if (st->syms.end - st->syms.pos < CH) expand_syms(&st->syms, st->table, st->per);
    if (st->flds.end - st->flds.pos < CH) expand_fields(&st->flds, st->r);
}

/* A state of 16 or 32 bits (gp.h): the magnitude, and the sign in the top bit. */
#define TOP(wide) ((wide) ? SIGN : 0x8000u)

INLINE uint32_t get(const void *s, ssize i, int wide) {
    return wide ? ((const uint32_t *)s)[i] : ((const uint16_t *)s)[i];
}

INLINE void put(void *s, ssize i, int wide, uint32_t v) {
    if (wide)
        ((uint32_t *)s)[i] = v;
    else
        ((uint16_t *)s)[i] = (uint16_t)v;
}

INLINE void first_k(void *s, ssize n, StepDec *st, int wide) {
    const int8_t *S = st->syms.buf + st->syms.pos;
    for (ssize i = 0; i < n; i++) { /* vectorised */
        int32_t v = S[i];
        put(s, i, wide, (uint32_t)(v < 0 ? -v : v) | (v < 0 ? TOP(wide) : 0u));
    }
    st->syms.pos += (int)n;
}

void step_first(void *s, ssize n, StepDec *st, int wide) {
    if (wide)
        first_k(s, n, st, 1);
    else
        first_k(s, n, st, 0);
}

/* The scalar update of weights [i, n), the streams at S[js], F[jr]. */
INLINE void update_tail(void *s, ssize i, ssize n, int r, const int8_t *S, const int8_t *F,
                        ssize *js_io, ssize *jr_io, int wide) {
    ssize js = *js_io, jr = *jr_io;
    const uint32_t top = TOP(wide), mag_mask = top - 1;
    for (; i < n; i++) {
        uint32_t sv = get(s, i, wide), mag = sv & mag_mask;
        int sig = mag != 0;
        int32_t v = sig ? F[jr] : S[js];
        jr += sig;
        js += 1 - sig;
        uint32_t neg = v < 0 ? top : 0u;
        put(s, i, wide,
            sig ? (mag << r) | (uint32_t)v | (sv & top)
                : (uint32_t)(v < 0 ? -v : v) | ((sv ^ neg) & top));
    }
    *js_io = js;
    *jr_io = jr;
}

ssize step_update(void *s, ssize n, StepDec *st, int wide) {
    const int8_t *S = st->syms.buf + st->syms.pos, *F = st->flds.buf + st->flds.pos;
    ssize js = 0, jr = 0;
    if (wide)
        update_tail(s, 0, n, st->r, S, F, &js, &jr, 1);
    else
        update_tail(s, 0, n, st->r, S, F, &js, &jr, 0);
    st->syms.pos += (int)js;
    st->flds.pos += (int)jr;
    return jr;
}

#ifdef HAVE_V3
/* The next 8 values of the merged streams for the lanes of mask m (fields where set): two
 * byte shuffles (gp_expand); both buffers hold at least CH + 8 readable bytes past their
 * position (expand_*), and n <= CH. */
V3_TARGET static inline __m128i merge8(unsigned m, const int8_t *F, const int8_t *S, ssize *jr,
                                       ssize *js) {
    __m128i f = _mm_loadl_epi64((const __m128i *)(F + *jr));
    __m128i y = _mm_loadl_epi64((const __m128i *)(S + *js));
    __m128i cf = _mm_loadl_epi64((const __m128i *)gp_expand[m]);
    __m128i cy = _mm_loadl_epi64((const __m128i *)gp_expand[m ^ 0xffu]);
    unsigned k = (unsigned)_mm_popcnt_u32(m);
    *jr += k;
    *js += 8 - k;
    return _mm_or_si128(_mm_shuffle_epi8(f, cf), _mm_shuffle_epi8(y, cy));
}

/* step_update() 8 (32-bit states) or 16 (16-bit states) weights at a time. */
V3_TARGET ssize step_update_v3(void *s, ssize n, StepDec *st, int wide) {
    const int8_t *S = st->syms.buf + st->syms.pos, *F = st->flds.buf + st->flds.pos;
    ssize js = 0, jr = 0, i = 0;
    const __m256i zero = _mm256_setzero_si256();
    const __m128i r = _mm_cvtsi32_si128(st->r);
    if (wide) {
        uint32_t *s32 = s;
        const __m256i magm = _mm256_set1_epi32((int)MAG), signm = _mm256_set1_epi32((int)SIGN);
        for (; i + 8 <= n; i += 8) {
            __m256i sv = _mm256_loadu_si256((const __m256i *)(s32 + i));
            __m256i mag = _mm256_and_si256(sv, magm);
            __m256i z = _mm256_cmpeq_epi32(mag, zero);
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(z)) ^ 0xffu;
            __m256i v = _mm256_cvtepi8_epi32(merge8(m, F, S, &jr, &js));
            __m256i sig = _mm256_or_si256(_mm256_or_si256(_mm256_sll_epi32(mag, r), v),
                                          _mm256_and_si256(sv, signm));
            __m256i neg = _mm256_and_si256(_mm256_cmpgt_epi32(zero, v), signm);
            __m256i ins = _mm256_or_si256(_mm256_abs_epi32(v),
                                          _mm256_and_si256(_mm256_xor_si256(sv, neg), signm));
            _mm256_storeu_si256((__m256i *)(s32 + i), _mm256_blendv_epi8(sig, ins, z));
        }
    } else {
        uint16_t *s16 = s;
        const __m256i magm = _mm256_set1_epi16(0x7fff), signm = _mm256_set1_epi16((short)0x8000);
        for (; i + 16 <= n; i += 16) {
            __m256i sv = _mm256_loadu_si256((const __m256i *)(s16 + i));
            __m256i mag = _mm256_and_si256(sv, magm);
            __m256i z = _mm256_cmpeq_epi16(mag, zero);
            /* one bit a lane: the lanes' low bytes packed (within each half), then both */
            unsigned zm = (unsigned)_mm256_movemask_epi8(_mm256_packs_epi16(z, zero));
            unsigned m = ((zm & 0xffu) | ((zm >> 8) & 0xff00u)) ^ 0xffffu;
            __m128i lo = merge8(m & 0xffu, F, S, &jr, &js);
            __m128i hi = merge8(m >> 8, F, S, &jr, &js);
            __m256i v = _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(lo, hi));
            __m256i sig = _mm256_or_si256(_mm256_or_si256(_mm256_sll_epi16(mag, r), v),
                                          _mm256_and_si256(sv, signm));
            __m256i neg = _mm256_and_si256(_mm256_cmpgt_epi16(zero, v), signm);
            __m256i ins = _mm256_or_si256(_mm256_abs_epi16(v),
                                          _mm256_and_si256(_mm256_xor_si256(sv, neg), signm));
            _mm256_storeu_si256((__m256i *)(s16 + i), _mm256_blendv_epi8(sig, ins, z));
        }
    }
    if (wide)
        update_tail(s, i, n, st->r, S, F, &js, &jr, 1);
    else
        update_tail(s, i, n, st->r, S, F, &js, &jr, 0);
    st->syms.pos += (int)js;
    st->flds.pos += (int)jr;
    return jr;
}
#endif
