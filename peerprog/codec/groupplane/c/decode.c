/* One pass over a tensor for any run of consecutive levels (see gp.h). Each chunk of CH
 * weights is read once: its states come from the prior's words (checked to be midpoints of
 * the prior's planes) or start at 0; every plane step updates them in cache (a level's first
 * step sees the padding as 0, as a decoder level by level does); the midpoints are written
 * once, or go through the remainder when the last level is there. */
#include "gp.h"

/* The constants of a float kind (constant-folded where ``kind`` is). */
#define KSIZE(kind) ((kind) == K_F32 ? 4 : 2)
#define KMBITS(kind) ((kind) == K_F32 ? 23 : (kind) == K_BF16 ? 7 : 10)
#define KBIAS(kind) ((kind) == K_F16 ? 15 : 127)
#define KABS(kind) ((kind) == K_F32 ? 0x7fffffffu : 0x7fffu)
#define KINF(kind) ((kind) == K_F32 ? 0x7f800000u : (kind) == K_BF16 ? 0x7f80u : 0x7c00u)

/* The word of a state after K planes, ``h`` = 2**(E - K - 1): ±(2q + 1) * h (exact in the
 * kind), ±0 while q = 0. */
INLINE uint32_t mid_word(int kind, uint32_t sv, float h) {
    uint32_t q = sv & MAG;
    float f = (float)(int32_t)(2 * q + 1) * h;
    uint32_t b = (q ? bits_of(f) : 0u) | (sv & SIGN);
    if (kind == K_F32) return b;
    if (kind == K_BF16) return b >> 16;
    uint32_t a = b & 0x7fffffffu, sg = (b >> 16) & 0x8000u; /* float16, exactly */
    uint32_t normal = (a - 0x38000000u) >> 13;
    uint32_t sub = (uint32_t)(int32_t)(f32_of(a) * 0x1p24f);
    return sg | (a >= 0x38800000u ? normal : sub);
}

/* The state of a prior word, and whether it is a midpoint of the group at k0 planes:
 * ±(2q + 1) * 2**(E - k0 - 1) with 1 <= q < 2**k0, or ±0. ``tgt`` is that exponent, E - k0 - 1,
 * plus the kind's bias and mantissa bits. */
INLINE uint32_t prior_state(int kind, uint32_t w, int tgt, uint32_t top, uint32_t *bad) {
    const int mbits = KMBITS(kind);
    uint32_t a = w & KABS(kind), e = a >> mbits;
    uint32_t sig = (a & ((1u << mbits) - 1)) | (e ? 1u << mbits : 0u);
    uint32_t lsb = sig & (0u - sig);
    int pos = (int)((bits_of((float)(int32_t)lsb) >> 23) & 0xffu) - 127; /* -127 for 0 */
    uint32_t odd = sig >> (pos & 31);
    int eb = e ? (int)e : 1;
    uint32_t ok = a == 0 || (a < KINF(kind) && pos + eb == tgt && odd >= 3 && odd < top);
    *bad |= !ok;
    return (a ? odd >> 1 : 0u) | (w >> (8 * KSIZE(kind) - 1) << 31);
}

/* A state as 32 bits (the 16-bit states of the 16-bit kinds widened), and back. */
INLINE uint32_t get32(const void *s, ssize i, int wide) {
    if (wide) return ((const uint32_t *)s)[i];
    uint32_t v = ((const uint16_t *)s)[i];
    return (v & 0x7fffu) | ((v & 0x8000u) << 16);
}

INLINE void put32(void *s, ssize i, int wide, uint32_t v) {
    if (wide)
        ((uint32_t *)s)[i] = v;
    else
        ((uint16_t *)s)[i] = (uint16_t)((v & 0x7fffu) | (v >> 16));
}

#ifdef HAVE_V3
/* 8 words of a kind at p, as 32-bit lanes. */
V3_TARGET static inline __m256i load8(int kind, const uint8_t *p) {
    if (kind == K_F32) return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* prior_state() of a segment's words [i, e), 8 at a time. */
V3_TARGET static uint32_t prior_seg_v3(int kind, const uint8_t *in, ssize i, ssize e, int tgt,
                                       uint32_t top, void *st) {
    const int size = KSIZE(kind), mbits = KMBITS(kind);
    const __m256i absm = _mm256_set1_epi32((int)KABS(kind)), zero = _mm256_setzero_si256();
    const __m256i mant = _mm256_set1_epi32((1 << mbits) - 1), imp = _mm256_set1_epi32(1 << mbits);
    const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
    const __m256i b127 = _mm256_set1_epi32(127), m31 = _mm256_set1_epi32(31);
    const __m256i inf = _mm256_set1_epi32((int)KINF(kind)), vtgt = _mm256_set1_epi32(tgt);
    const __m256i vtop = _mm256_set1_epi32((int)top);
    __m256i bad = zero;
    for (; i + 8 <= e; i += 8) {
        __m256i w = load8(kind, in + i * size);
        __m256i a = _mm256_and_si256(w, absm);
        __m256i ex = _mm256_srli_epi32(a, mbits);
        __m256i enz = _mm256_xor_si256(_mm256_cmpeq_epi32(ex, zero), _mm256_set1_epi32(-1));
        __m256i sig = _mm256_or_si256(_mm256_and_si256(a, mant), _mm256_and_si256(enz, imp));
        __m256i lsb = _mm256_and_si256(sig, _mm256_sub_epi32(zero, sig));
        __m256i pos = _mm256_sub_epi32(
            _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(lsb)), 23), b127);
        __m256i odd = _mm256_srlv_epi32(sig, _mm256_and_si256(pos, m31));
        __m256i eb = _mm256_max_epi32(ex, one);
        __m256i ok = _mm256_and_si256(
            _mm256_and_si256(_mm256_cmpgt_epi32(inf, a),
                             _mm256_cmpeq_epi32(_mm256_add_epi32(pos, eb), vtgt)),
            _mm256_and_si256(_mm256_cmpgt_epi32(odd, two), _mm256_cmpgt_epi32(vtop, odd)));
        __m256i az = _mm256_cmpeq_epi32(a, zero);
        bad = _mm256_or_si256(bad, _mm256_andnot_si256(_mm256_or_si256(ok, az), _mm256_set1_epi32(-1)));
        __m256i q = _mm256_andnot_si256(az, _mm256_srli_epi32(odd, 1));
        if (kind == K_F32) {
            __m256i sg = _mm256_slli_epi32(_mm256_srli_epi32(w, 31), 31);
            _mm256_storeu_si256((__m256i *)((uint32_t *)st + i), _mm256_or_si256(q, sg));
        } else { /* 16-bit states: the sign stays in bit 15 */
            __m256i x = _mm256_or_si256(q, _mm256_and_si256(w, _mm256_set1_epi32(0x8000)));
            __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
            _mm_storeu_si128((__m128i *)((uint16_t *)st + i), p);
        }
    }
    uint32_t b = !_mm256_testz_si256(bad, bad);
    for (; i < e; i++)
        put32(st, i, kind == K_F32, prior_state(kind, load_word(in, i, size), tgt, top, &b));
    return b;
}

/* The words of a segment's states [i, e) after K planes, h = 2**(E - K - 1), 16 at a
 * time. */
/* Bytes of the 16 32-bit lanes of a and b, in order. */
V3_TARGET static inline __m128i bytes16(__m256i a, __m256i b) {
    __m256i p = _mm256_packus_epi32(a, b);
    p = _mm256_packus_epi16(p, p);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
    return _mm256_castsi256_si128(p);
}

/* The marker widths (lowest set bit's index + 1, 0 for 0) of words in 32-bit lanes. */
V3_TARGET static inline __m256i widths8(__m256i x) {
    __m256i m = _mm256_and_si256(x, _mm256_sub_epi32(_mm256_setzero_si256(), x));
    __m256i e = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(m)), 23),
                                 _mm256_set1_epi32(0xff));
    __m256i w = _mm256_sub_epi32(e, _mm256_set1_epi32(126));
    return _mm256_andnot_si256(_mm256_cmpeq_epi32(x, _mm256_setzero_si256()), w);
}

/* The midpoint words of a segment's states [i, e) after K planes, h = 2**(E - K - 1), 16 at a
 * time; with ``wk``, also their marker widths and zero flags for the remainder. */
V3_TARGET static void mid_seg_v3(int kind, const void *st, ssize i, ssize e, float h,
                                 uint8_t *dst, RemWork *wk) {
    const __m256i magm = _mm256_set1_epi32((int)MAG), signm = _mm256_set1_epi32((int)SIGN);
    const __m256i one = _mm256_set1_epi32(1), zero = _mm256_setzero_si256();
    const __m256 vh = _mm256_set1_ps(h);
    for (; i + 16 <= e; i += 16) {
        __m256i b[2];
        for (int k = 0; k < 2; k++) {
            __m256i sv;
            if (kind == K_F32) {
                sv = _mm256_loadu_si256((const __m256i *)((const uint32_t *)st + i + 8 * k));
            } else { /* the sign from bit 15 to bit 31 */
                __m256i x = _mm256_cvtepu16_epi32(
                    _mm_loadu_si128((const __m128i *)((const uint16_t *)st + i + 8 * k)));
                sv = _mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi32(0x7fff)),
                                     _mm256_slli_epi32(_mm256_srli_epi32(x, 15), 31));
            }
            __m256i q = _mm256_and_si256(sv, magm);
            __m256i odd = _mm256_or_si256(_mm256_add_epi32(q, q), one);
            __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(odd), vh);
            __m256i fb = _mm256_andnot_si256(_mm256_cmpeq_epi32(q, zero), _mm256_castps_si256(f));
            __m256i x = _mm256_or_si256(fb, _mm256_and_si256(sv, signm));
            if (kind == K_BF16) {
                x = _mm256_srli_epi32(x, 16);
            } else if (kind == K_F16) {
                __m256i a = _mm256_and_si256(x, magm);
                __m256i sg = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x8000));
                __m256i nrm =
                    _mm256_srli_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(0x38000000)), 13);
                __m256i sub = _mm256_cvttps_epi32(
                    _mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(0x1p24f)));
                __m256i isn = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x387fffff));
                x = _mm256_or_si256(sg, _mm256_blendv_epi8(sub, nrm, isn));
            }
            b[k] = x;
        }
        if (wk) {
            _mm_storeu_si128((__m128i *)(wk->width + i), bytes16(widths8(b[0]), widths8(b[1])));
            __m256i z0 = _mm256_and_si256(_mm256_cmpeq_epi32(b[0], zero), one);
            __m256i z1 = _mm256_and_si256(_mm256_cmpeq_epi32(b[1], zero), one);
            _mm_storeu_si128((__m128i *)(wk->zero + i), bytes16(z0, z1));
        }
        if (kind == K_F32) {
            _mm256_storeu_si256((__m256i *)(dst + 4 * i), b[0]);
            _mm256_storeu_si256((__m256i *)(dst + 4 * i + 32), b[1]);
        } else {
            __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(b[0], b[1]), 0xd8);
            _mm256_storeu_si256((__m256i *)(dst + 2 * i), p);
        }
    }
    for (; i < e; i++) {
        uint32_t w = mid_word(kind, get32(st, i, kind == K_F32), h), m = w & (0u - w);
        store_word(dst, i, KSIZE(kind), w);
        if (wk) {
            wk->width[i] = (uint8_t)((((bits_of((float)(int32_t)m) >> 23) & 0xffu) - 126u) &
                                     (0u - (w != 0)));
            wk->zero[i] = w == 0;
        }
    }
}
#endif

INLINE void run_k(int kind, Decode *d, int v3) {
    const int size = KSIZE(kind), wide = kind == K_F32;
    void *st = d->state;
    uint32_t bad = 0;
    const ssize gsize = d->gsize;
    const int K = d->nsteps ? d->steps[d->nsteps - 1].k1 : 0;
    const uint32_t top = 2u << d->k0;
    for (ssize c0 = 0; c0 < d->total; c0 += CH) {
        ssize n = d->total - c0 < CH ? d->total - c0 : CH, real = d->numel - c0;
        ssize nreal = real < 0 ? 0 : real > n ? n : real;
        const uint8_t *prior = d->prior && nreal ? d->prior + c0 * size : NULL;
        uint8_t *out = d->out + c0 * size;
        if (!d->nsteps) { /* the remainder alone, from the prior */
#ifdef HAVE_V3
            if (v3) {
                remainder_chunk_v3(size, prior, nreal, out, n, d->rem, d->rw);
                continue;
            }
#endif
            remainder_chunk(size, prior, nreal, out, n, d->rem, d->rw);
            continue;
        }
        if (prior) { /* the prior's states, group by group */
            ssize g = c0 / gsize, goff = c0 % gsize;
            for (ssize i = 0; i < nreal; g++, goff = 0) {
                ssize seg = gsize - goff < nreal - i ? gsize - goff : nreal - i;
                int tgt = (int)d->scales[g] + d->e_floor - d->k0 - 1 + KBIAS(kind) + KMBITS(kind);
#ifdef HAVE_V3
                if (v3) {
                    bad |= prior_seg_v3(kind, prior, i, i + seg, tgt, top, st);
                    i += seg;
                    continue;
                }
#endif
                for (ssize k = i; k < i + seg; k++)
                    put32(st, k, wide, prior_state(kind, load_word(prior, k, size), tgt, top, &bad));
                i += seg;
            }
            memset((uint8_t *)st + nreal * (wide ? 4 : 2), 0, (size_t)(n - nreal) * (wide ? 4 : 2));
        }
        for (int s = 0; s < d->nsteps; s++) {
            StepDec *sd = &d->steps[s];
#ifdef HAVE_V3
            if (v3)
                step_refill_v3(sd);
            else
#endif
                step_refill(sd);
            if (s == 0 && !prior) { /* nothing before: every weight takes a symbol */
                step_first(st, n, sd, wide);
                continue;
            }
            if (s && d->first[s]) /* a level starts: the padding counts as 0 */
                memset((uint8_t *)st + nreal * (wide ? 4 : 2), 0,
                       (size_t)(n - nreal) * (wide ? 4 : 2));
#ifdef HAVE_V3
            if (v3) {
                sd->nsig += step_update_v3(st, n, sd, wide);
                continue;
            }
#endif
            sd->nsig += step_update(st, n, sd, wide);
        }
        uint8_t *dst = d->rem ? d->words : out;
        ssize g = c0 / gsize, goff = c0 % gsize;
        for (ssize i = 0; i < n; g++, goff = 0) { /* the midpoints, group by group */
            ssize seg = gsize - goff < n - i ? gsize - goff : n - i;
            float h = pow2f((int)d->scales[g] + d->e_floor - K - 1);
#ifdef HAVE_V3
            if (v3) { /* the remainder's widths too, where it follows */
                mid_seg_v3(kind, st, i, i + seg < nreal ? i + seg : nreal > i ? nreal : i, h,
                           dst, d->rem ? d->rw : NULL);
                if (i + seg > nreal) /* the padding */
                    mid_seg_v3(kind, st, nreal > i ? nreal : i, i + seg, h, dst, NULL);
                i += seg;
                continue;
            }
#endif
            for (ssize k = i; k < i + seg; k++)
                store_word(dst, k, size, mid_word(kind, get32(st, k, wide), h));
            i += seg;
        }
        if (d->rem) {
#ifdef HAVE_V3
            if (v3) {
                d->rw->ready = 1; /* the words' widths are known */
                remainder_chunk_v3(size, d->words, nreal, out, n, d->rem, d->rw);
                continue;
            }
#endif
            remainder_chunk(size, d->words, nreal, out, n, d->rem, d->rw);
        }
    }
    d->bad_prior = bad != 0;
}

static void run(Decode *d) {
    switch (d->f.kind) {
    case K_BF16:
        run_k(K_BF16, d, 0);
        break;
    case K_F32:
        run_k(K_F32, d, 0);
        break;
    default:
        run_k(K_F16, d, 0);
    }
}

#ifdef HAVE_V3
V3_TARGET static void run_v3(Decode *d) {
    switch (d->f.kind) {
    case K_BF16:
        run_k(K_BF16, d, 1);
        break;
    case K_F32:
        run_k(K_F32, d, 1);
        break;
    default:
        run_k(K_F16, d, 1);
    }
}
#endif

void gp_decode(Decode *d) {
#ifdef HAVE_V3
    if (gp_use_v3) {
        run_v3(d);
        return;
    }
#endif
    run(d);
}
