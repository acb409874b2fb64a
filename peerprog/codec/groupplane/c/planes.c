/* Decoding plane steps, a chunk of weights at a time (see gp.h and format.py).
 *
 * A step's symbols (of the weights whose value is 0 so far) and refinement fields (of the
 * others) are expanded a chunk ahead, one value a byte; the significance of the chunk's
 * weights then merges the two streams into the weights' order, and each weight's new value
 * is computed in float32 exactly as numpy does: ``v + delta * copysign(2**(E - k1 - 1), v)``.
 */
#include "gp.h"

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
        const int8_t(*t)[8] = (const int8_t(*)[8])gp_fields[r];
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
INLINE int sig_flags(int kind, int size, const uint8_t *in, ssize i0, ssize n,
                     ssize n_in, uint8_t *sig) {
    ssize nreal = n_in - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    const uint32_t absmask = size == 2 ? 0x7fffu : 0x7fffffffu;
    int count = 0;
    (void)kind;
    for (ssize i = 0; i < nreal; i++) {
        uint8_t s = (load_word(in, i0 + i, size) & absmask) != 0;
        sig[i] = s;
        count += s;
    }
    for (ssize i = nreal; i < n; i++) sig[i] = 0;
    return count;
}

/* The values of a chunk: the refinement field of a significant weight, the symbol of the
 * others, each stream read in order. */
static void merge(const uint8_t *sig, ssize n, Expander *syms, Expander *flds,
                  int8_t *val) {
    const int8_t *S = syms->buf + syms->pos, *F = flds->buf + flds->pos;
    ssize js = 0, jr = 0;
    for (ssize i = 0; i < n; i++) {
        int s = sig[i], m = -s; /* masks, not a branch: sig is unpredictable */
        val[i] = (int8_t)((F[jr] & m) | (S[js] & ~m));
        jr += s;
        js += 1 - s;
    }
    syms->pos += (int)js;
    flds->pos += (int)jr;
}

#ifdef HAVE_X86
/* merge() 16 weights at a time: the significant lanes take the next fields, the others
 * the next symbols, by two byte shuffles per 8 lanes. Both buffers hold at least CH + 8
 * readable bytes past their position (expand_*), and n <= CH. */
__attribute__((target("ssse3"))) static void merge_ssse3(const uint8_t *sig, ssize n,
                                                         Expander *syms, Expander *flds,
                                                         int8_t *val) {
    const int8_t *S = syms->buf + syms->pos, *F = flds->buf + flds->pos;
    ssize js = 0, jr = 0, i = 0;
    const __m128i zero = _mm_setzero_si128();
    for (; i + 16 <= n; i += 16) {
        __m128i sg = _mm_loadu_si128((const __m128i *)(sig + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_cmpgt_epi8(sg, zero));
        for (int h = 0; h < 2; h++) {
            unsigned m = (mask >> (8 * h)) & 0xffu, nm = m ^ 0xffu;
            __m128i f = _mm_loadl_epi64((const __m128i *)(F + jr));
            __m128i s = _mm_loadl_epi64((const __m128i *)(S + js));
            __m128i cf = _mm_loadl_epi64((const __m128i *)gp_expand[m]);
            __m128i cs = _mm_loadl_epi64((const __m128i *)gp_expand[nm]);
            __m128i v = _mm_or_si128(_mm_shuffle_epi8(f, cf), _mm_shuffle_epi8(s, cs));
            _mm_storel_epi64((__m128i *)(val + i + 8 * h), v);
            jr += gp_pop[m];
            js += gp_pop[nm];
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
INLINE void plane_compute(int kind, int size, const uint8_t *in, ssize i0, ssize n,
                          ssize n_in, uint8_t *out, const uint8_t *sig, const int8_t *val,
                          const float *hs, int r) {
    const int base = 1 - (1 << r);
    ssize nreal = n_in - i0;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    for (ssize i = 0; i < nreal; i++) { /* vectorised */
        float v = to_f32(load_word(in, i0 + i, size), kind);
        int x = val[i];
        int st = sig[i] ? 2 * x + base : 2 * x + (x > 0) - (x < 0);
        float o = v + (float)st * copysignf(hs[i], v);
        store_word(out, i0 + i, size, from_f32(o, kind));
    }
    for (ssize i = nreal; i < n; i++) { /* the zero padding of the last group */
        int x = val[i];
        float o = (float)(2 * x + (x > 0) - (x < 0)) * hs[i];
        store_word(out, i0 + i, size, from_f32(o, kind));
    }
}

void step_init(StepDec *st, int k1, int r, const uint8_t *codes, ssize ncodes,
                      const uint8_t *ref, ssize nref) {
    st->syms.src = codes;
    st->syms.len = ncodes;
    st->flds.src = ref;
    st->flds.len = nref;
    st->syms.at = st->flds.at = 0;
    st->syms.pos = st->syms.end = st->flds.pos = st->flds.end = 0;
    st->table = (const int8_t(*)[8])gp_table[r];
    st->per = gp_per[r];
    st->r = r;
    st->k1 = k1;
    st->nsig = 0;
}

INLINE void plane_chunk_k(int kind, int size, const uint8_t *in, ssize n_in, uint8_t *out,
                          ssize n, ssize g, ssize goff, ssize gsize, const uint8_t *scales,
                          int e_floor, StepDec *st, PlaneScratch *sc) {
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
#ifdef HAVE_X86
        if (gp_use_ssse3)
            merge_ssse3(sc->sig, n, &st->syms, &st->flds, sc->val);
        else
#endif
            merge(sc->sig, n, &st->syms, &st->flds, sc->val);
    }
    /* each weight's half step 2**(E - k1 - 1), group by group */
    for (ssize i = 0; i < n;) {
        ssize seg = gsize - goff < n - i ? gsize - goff : n - i;
        float h = pow2f((int)scales[g] + e_floor - st->k1 - 1);
        for (ssize k = 0; k < seg; k++) sc->hs[i + k] = h;
        i += seg;
        goff += seg;
        if (goff == gsize) {
            goff = 0;
            g++;
        }
    }
    plane_compute(kind, size, in, 0, n, n_in, out, sc->sig, val, sc->hs, st->r);
}


INLINE void plane_chunk_impl(PLANE_CHUNK_ARGS) {
    switch (f->kind) {
    case K_BF16:
        plane_chunk_k(K_BF16, 2, in, n_in, out, n, g, goff, gsize, scales, e_floor, st, sc);
        break;
    case K_F32:
        plane_chunk_k(K_F32, 4, in, n_in, out, n, g, goff, gsize, scales, e_floor, st, sc);
        break;
    default:
        plane_chunk_k(K_F16, 2, in, n_in, out, n, g, goff, gsize, scales, e_floor, st, sc);
    }
}

#define PLANE_CHUNK_NAMES f, in, n_in, out, n, g, goff, gsize, scales, e_floor, st, sc
void plane_chunk(PLANE_CHUNK_ARGS) { plane_chunk_impl(PLANE_CHUNK_NAMES); }
#ifdef HAVE_V3
V3_TARGET void plane_chunk_v3(PLANE_CHUNK_ARGS) { plane_chunk_impl(PLANE_CHUNK_NAMES); }
#endif
