/* Encoding a tensor in one pass (see gp.h and format.py), a chunk of groups at a time: each
 * group's exponent and its weights' magnitudes, sign, remainder width and low bits; then each
 * plane step's symbol digits (of the weights still 0) and refinement fields (of the others),
 * compacted and packed; the remainder's low bits packed and its whole words gathered.
 */
#include "gp.h"

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
static void compact(const uint8_t *sig, const uint8_t *dig, const uint8_t *fld, ssize n,
                    uint8_t *db, uint8_t *rb, ssize *nd_io, ssize *nr_io);
#ifdef HAVE_X86
__attribute__((target("ssse3"))) static void compact_ssse3(const uint8_t *sig,
                                                           const uint8_t *dig,
                                                           const uint8_t *fld, ssize n,
                                                           uint8_t *db, uint8_t *rb,
                                                           ssize *nd_io,
                                                           ssize *nr_io) {
    ssize nd = *nd_io, nr = *nr_io, i = 0;
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i sg = _mm_loadu_si128((const __m128i *)(sig + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(sg, zero));
        for (int h = 0; h < 2; h++) {
            unsigned m = (mask >> (8 * h)) & 0xffu, nm = m ^ 0xffu;
            __m128i d = _mm_loadl_epi64((const __m128i *)(dig + i + 8 * h));
            __m128i f = _mm_loadl_epi64((const __m128i *)(fld + i + 8 * h));
            __m128i cf = _mm_loadl_epi64((const __m128i *)gp_compress[m]);
            __m128i cd = _mm_loadl_epi64((const __m128i *)gp_compress[nm]);
            _mm_storel_epi64((__m128i *)(rb + nr), _mm_shuffle_epi8(f, cf));
            _mm_storel_epi64((__m128i *)(db + nd), _mm_shuffle_epi8(d, cd));
            nr += gp_pop[m];
            nd += gp_pop[nm];
        }
    }
    *nd_io = nd;
    *nr_io = nr;
    compact(sig + i, dig + i, fld + i, n - i, db, rb, nd_io, nr_io);
}
#endif

#ifdef HAVE_X86
/* 1-bit fields (bytes 0/1), MSB first: each group of 8 reversed, its bits to the tops of the
 * bytes, pmovmskb; returns the fields consumed (a multiple of 16). */
__attribute__((target("ssse3"))) static ssize pack1_ssse3(const uint8_t *f, ssize n,
                                                               uint8_t *out) {
    const __m128i rev = _mm_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
    ssize k = 0;
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
__attribute__((target("ssse3"))) static ssize pack2_ssse3(const uint8_t *d, ssize n,
                                                               uint8_t *out, int a) {
    const __m128i w = _mm_set1_epi16((short)((a << 8) | 1));
    ssize k = 0;
    for (; k + 32 <= n; k += 32, out += 16) {
        __m128i s0 = _mm_maddubs_epi16(_mm_loadu_si128((const __m128i *)(d + k)), w);
        __m128i s1 = _mm_maddubs_epi16(_mm_loadu_si128((const __m128i *)(d + k + 16)), w);
        _mm_storeu_si128((__m128i *)out, _mm_packus_epi16(s0, s1));
    }
    return k;
}
#endif

static void compact(const uint8_t *sig, const uint8_t *dig, const uint8_t *fld, ssize n,
                    uint8_t *db, uint8_t *rb, ssize *nd_io, ssize *nr_io) {
    ssize nd = *nd_io, nr = *nr_io;
    for (ssize i = 0; i < n; i++) {
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
    for (ssize i = i0; i < n; i++) {                                                  \
        QT qi = ((const QT *)q)[i];                                                        \
        uint8_t b = (uint8_t)((QT)(qi >> (lo & QB)) & (QT)mask), ng = neg[i];              \
        uint8_t nm = (uint8_t)(0u - ng);                                                   \
        tsig[i] = (uint8_t)((QT)(qi >> (hi & QB)) != 0);                                   \
        tdig[i] = (uint8_t)(off8 + (uint8_t)((uint8_t)(b ^ nm) + ng)); /* off -/+ b */     \
        tfld[i] = b;                                                                       \
    }

#ifdef HAVE_X86
/* STEP_STAGE1 for 16-bit magnitudes in 16-bit lanes, 32 weights at a time; returns the
 * weights done. */
__attribute__((target("avx2"))) static ssize stage1_avx2(const uint16_t *q,
                                                              const uint8_t *neg, ssize n,
                                                              int lo, int hi, uint32_t mask,
                                                              int off, uint8_t *tsig,
                                                              uint8_t *tdig, uint8_t *tfld) {
    const __m128i clo = _mm_cvtsi32_si128(lo), chi = _mm_cvtsi32_si128(hi);
    const __m256i m16 = _mm256_set1_epi16((short)mask), zero = _mm256_setzero_si256();
    const __m256i one8 = _mm256_set1_epi8(1), off8 = _mm256_set1_epi8((char)off);
    ssize i = 0;
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
                              ssize n, uint8_t *t) {
    uint8_t *db = st->dbuf, *rb = st->rbuf;
    ssize nd = st->npd, nr = st->npr;
    const int hi = st->hi, lo = st->lo, off = st->off;
    const uint32_t mask = st->mask;
    uint8_t *tsig = t, *tdig = t + n + 16, *tfld = t + 2 * (n + 16);
    const uint8_t off8 = (uint8_t)off;
    ssize i0 = 0;
    if (qsize == 2) {
#ifdef HAVE_X86
        if (gp_use_avx2)
            i0 = stage1_avx2((const uint16_t *)q, neg, n, lo, hi, mask, off, tsig, tdig, tfld);
#endif
        STEP_STAGE1(uint16_t, 15)
    } else {
        STEP_STAGE1(uint32_t, 31)
    }
#ifdef HAVE_X86
    if (gp_use_ssse3)
        compact_ssse3(tsig, tdig, tfld, n, db, rb, &nd, &nr);
    else
#endif
        compact(tsig, tdig, tfld, n, db, rb, &nd, &nr);
    ssize full = nd / st->per * st->per;
    uint8_t *co = st->codes + st->ncodes;
    switch (st->per) { /* constant per: unrolled */
    case 5:
        for (ssize k = 0; k < full; k += 5) *co++ = pack_digits(db + k, 5, 3);
        break;
    case 2: {
        ssize k = 0;
#ifdef HAVE_X86
        if (gp_use_ssse3) k = pack2_ssse3(db, full, co, st->a);
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
        for (ssize k = 0; k < full; k += st->per) *co++ = pack_digits(db + k, st->per, st->a);
    }
    st->ncodes = co - st->codes;
    memmove(db, db + full, (size_t)(nd - full));
    st->npd = (int)(nd - full);
    ssize fullr = nr & ~(ssize)7, rb_done = 0;
    uint8_t *ro = st->ref + st->nref;
#ifdef HAVE_X86
    if (st->r == 1 && gp_use_ssse3) { /* bits: 16 fields per movemask */
        ssize k = pack1_ssse3(rb, fullr, ro);
        ro += k / 8;
        rb_done = k;
    }
#endif
    switch (st->r) { /* constant r: unrolled, one 8-byte store per 8 fields */
#define PACK_R(R)                                                                          \
    case R:                                                                                \
        for (ssize k = rb_done; k < fullr; k += 8, ro += R)                          \
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

INLINE void enc_group(Enc *e, int size, const uint8_t *words, ssize i0, ssize n,
                      ssize navail, void *q, uint8_t *neg, uint8_t *width,
                      uint32_t *low, uint8_t *scale) {
    const Fmt *f = &e->f;
    uint32_t amax = 0;
    ssize nreal = navail < n ? (navail > 0 ? navail : 0) : n;
    const uint32_t absmask = f->absmask, infbits = f->infbits, mantmask = f->mantmask;
    const int mbits = f->mbits;
    if (size == 2) {
        uint16_t m16 = 0; /* vectorised: max over the finite magnitudes */
        for (ssize i = 0; i < nreal; i++) {
            uint16_t a = (uint16_t)(load_word(words, i0 + i, 2) & absmask);
            uint16_t keep = a & (uint16_t)(0u - (a < infbits));
            m16 = m16 > keep ? m16 : keep;
        }
        amax = m16;
    } else {
        for (ssize i = 0; i < nreal; i++) {
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
    for (ssize i = 0; i < nreal; i++) { /* vectorised */
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
    for (ssize i = nreal; i < n; i++) { /* the zero padding of the last group */
        if (size == 2)
            ((uint16_t *)q)[i] = 0;
        else
            ((uint32_t *)q)[i] = 0;
        neg[i] = 0;
        width[i] = 0;
        low[i] = 0;
    }
}

#ifdef HAVE_X86
/* The words whose width is 0 (q == 0) appended to rest, 8 (16-bit) or 4 (32-bit) words per
 * shuffle; returns the weights done. rest has 16 bytes of room past its end. */
__attribute__((target("ssse3"))) static ssize rest_ssse3(int size, const uint8_t *words,
                                                              ssize i0, ssize n,
                                                              const uint8_t *width,
                                                              uint8_t *rest,
                                                              ssize *nrest_io) {
    ssize nrest = *nrest_io, i = 0;
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
                (const __m128i *)(size == 2 ? gp_compress16[m] : gp_compress32[m]));
            _mm_storeu_si128((__m128i *)(rest + nrest * size), _mm_shuffle_epi8(w, c));
            nrest += gp_pop[m];
        }
    }
    *nrest_io = nrest;
    return i;
}
#endif

/* The remainder of a chunk: the low bits of the weights with q != 0, the whole words of the
 * others (the zero padding too). */
INLINE void enc_remainder(Enc *e, int size, const uint8_t *words, ssize i0, ssize n,
                          uint8_t *width, uint32_t *low) {
    BitWriter bw = e->low;
    uint8_t *rest = e->rest;
    ssize nrest = e->nrest;
    ssize nreal = e->numel - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    if (e->lowb) { /* split: a field wider than 8 bits sends its bottom byte apart */
        ssize nb = e->nlowb;
        for (ssize i = 0; i < nreal; i++)
            if (width[i] > 8) {
                e->lowb[nb++] = (uint8_t)low[i];
                low[i] >>= 8;
                width[i] = (uint8_t)(width[i] - 8);
            }
        e->nlowb = nb;
    }
    /* fields in pairs (float32: <= 24 bits each) or fours (16-bit words: <= 11 bits), so
     * that one put takes at most 48 bits */
    ssize i = 0;
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
#ifdef HAVE_X86
    if (gp_use_ssse3) i = rest_ssse3(size, words, i0, nreal, width, rest, &nrest);
#endif
    for (; i < nreal; i += 32) { /* q == 0: rare; 32 at a time when none is */
        ssize b1 = i + 32 < nreal ? i + 32 : nreal;
        unsigned z = 0;
        for (ssize k = i; k < b1; k++) z |= width[k] == 0;
        if (z)
            for (ssize k = i; k < b1; k++)
                if (width[k] == 0) store_word(rest, nrest++, size, load_word(words, i0 + k, size));
    }
    for (ssize i = nreal; i < n; i++) store_word(rest, nrest++, size, 0u);
    e->low = bw;
    e->nrest = nrest;
}

INLINE void enc_run_impl(Enc *e, ssize chunk_groups) {
    const ssize gsize = e->gsize, ngroups = e->total / gsize;
    for (ssize g0 = 0; g0 < ngroups; g0 += chunk_groups) {
        ssize g1 = g0 + chunk_groups < ngroups ? g0 + chunk_groups : ngroups;
        for (ssize g = g0; g < g1; g++) {
            ssize i0 = g * gsize;
            ssize o = (g - g0) * gsize;
            if (e->f.size == 2)
                enc_group(e, 2, e->words, i0, gsize, e->numel - i0, (uint16_t *)e->q + o, e->neg + o,
                          e->width + o, e->lowv + o, e->scales + g);
            else
                enc_group(e, 4, e->words, i0, gsize, e->numel - i0, e->q + o, e->neg + o,
                          e->width + o, e->lowv + o, e->scales + g);
        }
        ssize n = (g1 - g0) * gsize;
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
V3_TARGET static void enc_run_v3(Enc *e, ssize chunk_groups) { enc_run_impl(e, chunk_groups); }
#endif
void gp_encode(Enc *e, ssize chunk_groups) {
#ifdef HAVE_V3
    if (gp_use_v3) {
        enc_run_v3(e, chunk_groups);
        return;
    }
#endif
    enc_run_impl(e, chunk_groups);
}

