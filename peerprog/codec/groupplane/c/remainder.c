/* Decoding the remainder (the exact bits), a chunk of words at a time (see gp.h and
 * format.py): each word so far is a midpoint, whose lowest set bit (the marker) says how many
 * low bits follow in the packed stream, or 0, and then the word comes whole from the
 * remainder's byte planes. Four passes per chunk: the widths, the low bits in order, the
 * words with low bits, the whole words.
 */
#include "gp.h"

INLINE int any_zero(int size, const uint8_t *in, ssize i, ssize n) {
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
    for (ssize k = 0; k < n; k++)
        if (!load_word(in, i + k, size)) return 1;
    return 0;
}

INLINE void remainder_chunk_impl(REM_CHUNK_ARGS) {
    int64_t bpos = rd->bpos;
    ssize j = rd->j;
    uint32_t bad = rd->bad;
    const uint32_t maxw = (uint32_t)rd->mbits + 1;
    const uint8_t *raw = rd->raw, *low = rd->low;
    const ssize nrest = rd->nrest, lowlen = rd->lowlen;
    uint8_t *width = wk->width;
    uint32_t *lowv = wk->low;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    /* 1. the marker's position from the prior: width = its index + 1 (vectorised: the
     * lowest set bit's exponent as a float) */
    for (ssize i = 0; i < nreal; i++) {
        uint32_t pw = load_word(in, i, size);
        uint32_t m = pw & (0u - pw);
        uint32_t wd = ((bits_of((float)(int32_t)m) >> 23) & 0xffu) - 126u;
        width[i] = (uint8_t)(wd & (0u - (pw != 0)));
    }
    uint8_t wmax = 0; /* widths past maxw: not this codec's prior (at most 32: no
                       * read goes wrong, the error is raised after the pass) */
    for (ssize i = 0; i < nreal; i++) wmax = wmax > width[i] ? wmax : width[i];
    bad |= wmax > maxw;
    for (ssize i = nreal; i < n; i++) width[i] = 0;
    /* 2. the low bits, in order: a few fields per 64-bit window */
    ssize i = 0;
    const int group = size == 2 ? 4 : 2; /* at most 4 * 11 or 2 * 24 bits */
    for (; i + group <= n; i += group) {
        uint64_t x = window(low, lowlen, (ssize)(bpos >> 3)) << (bpos & 7);
        for (int k = 0; k < group; k++) {
            int wd = width[i + k];
            lowv[i + k] = (uint32_t)((x >> 1) >> (63 - wd));
            x <<= wd;
            bpos += wd;
        }
    }
    for (; i < n; i++) {
        int wd = width[i];
        uint64_t x = window(low, lowlen, (ssize)(bpos >> 3)) << (bpos & 7);
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
        ssize b1 = i + 16 < n ? i + 16 : n;
        if (b1 <= nreal && !any_zero(size, in, i, b1 - i)) continue;
        for (ssize k = i; k < b1; k++) {
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


#define REM_CHUNK_NAMES size, in, nreal, out, n, rd, wk
void remainder_chunk(REM_CHUNK_ARGS) { remainder_chunk_impl(REM_CHUNK_NAMES); }
#ifdef HAVE_V3
V3_TARGET void remainder_chunk_v3(REM_CHUNK_ARGS) { remainder_chunk_impl(REM_CHUNK_NAMES); }
#endif
