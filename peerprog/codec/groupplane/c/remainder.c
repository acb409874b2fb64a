/* Decoding the remainder (the exact bits), a chunk of words at a time (see gp.h and
 * format.py): each word so far is a midpoint, whose lowest set bit (the marker) says how many
 * low bits follow in the packed stream, or 0, and then the word comes whole from the
 * remainder's byte planes. Four passes per chunk: the widths, the low bits in order (format
 * 2: a field wider than 8 bits has its bottom byte in a byte plane of its own), the words
 * with low bits, the whole words.
 */
#include "gp.h"

#ifdef HAVE_V3
/* The fields of widths[0..n) from bit bpos of low (every 64-bit window inside it), ``group``
 * (4 or 8) at a time from one window: each field's offset in the group is a prefix sum of
 * the width bytes (one multiply), and four fields are cut at once by variable shifts.
 * Returns the fields done (a group whose fields overrun its window is left to the caller). */
V3_TARGET static ssize bits_v3(const uint8_t *width, ssize n, const uint8_t *low, int group,
                               int64_t *bpos_io, uint32_t *lowv) {
    int64_t bpos = *bpos_io;
    const __m256i s64 = _mm256_set1_epi64x(64);
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    ssize i = 0;
    for (; i + group <= n; i += group) {
        uint64_t w8 = 0, x;
        memcpy(&w8, width + i, (size_t)group);
        uint64_t pre = w8 * 0x0101010101010100ull; /* byte k: the widths before field k */
        unsigned tot = (unsigned)((w8 * 0x0101010101010101ull) >> 56);
        if ((bpos & 7) + tot > 64) break;
        memcpy(&x, low + (bpos >> 3), 8);
        __m256i vx = _mm256_set1_epi64x((long long)(BE64(x) << (bpos & 7)));
        __m128i pb = _mm_cvtsi64_si128((long long)pre), wb = _mm_cvtsi64_si128((long long)w8);
        for (int h = 0; h < group; h += 4) {
            __m256i p = _mm256_cvtepu8_epi64(pb), w = _mm256_cvtepu8_epi64(wb);
            __m256i f = _mm256_srlv_epi64(_mm256_sllv_epi64(vx, p), _mm256_sub_epi64(s64, w));
            __m256i d = _mm256_permutevar8x32_epi32(f, pick);
            _mm_storeu_si128((__m128i *)(lowv + i + h), _mm256_castsi256_si128(d));
            pb = _mm_srli_si128(pb, 4);
            wb = _mm_srli_si128(wb, 4);
        }
        bpos += tot;
    }
    *bpos_io = bpos;
    return i;
}

/* The indices of the set flags (bytes 0 / 1) of zero[0..n), n + 8 readable, in order,
 * compacted 8 flags at a time (gp_compress); returns how many. */
V3_TARGET static ssize zero_list_v3(const uint8_t *zero, ssize n, uint16_t *idx) {
    ssize k = 0;
    for (ssize i = 0; i < n; i += 8) {
        uint64_t z;
        memcpy(&z, zero + i, 8);
        unsigned m = (unsigned)((z * 0x0102040810204080ull) >> 56); /* flag j -> bit j */
        __m128i lanes = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)gp_compress[m]));
        _mm_storeu_si128((__m128i *)(idx + k), _mm_add_epi16(lanes, _mm_set1_epi16((short)i)));
        k += _mm_popcnt_u32(m);
    }
    return k;
}
#endif

/* Word j of the byte planes of the words whose prior is 0 (most significant plane first;
 * 0 past the end: the padding). */
INLINE uint32_t rest_word(const uint8_t *raw, ssize nrest, ssize j, int size) {
    if (j >= nrest)
        return 0;
    if (size == 2)
        return ((uint32_t)raw[j] << 8) | raw[nrest + j];
    return ((uint32_t)raw[j] << 24) | ((uint32_t)raw[nrest + j] << 16) |
           ((uint32_t)raw[2 * nrest + j] << 8) | raw[3 * nrest + j];
}

INLINE void rem_k(int size, const uint8_t *in, ssize nreal, uint8_t *out, ssize n, RemDec *rd,
                  RemWork *wk, int v3) {
    int64_t bpos = rd->bpos;
    ssize j = rd->j;
    const uint32_t maxw = (uint32_t)rd->mbits + 1;
    const uint8_t *raw = rd->raw, *low = rd->low;
    const ssize nrest = rd->nrest, lowlen = rd->lowlen;
    uint8_t *width = wk->width, *zero = wk->zero;
    uint32_t *lowv = wk->low;
    nreal = nreal < 0 ? 0 : nreal > n ? n : nreal;
    /* 1. the marker's position: width = its index + 1 (the lowest set bit's exponent as a
     * float), 0 for a word that is 0 (vectorised) */
    uint32_t wmax = 0, bits = 0;
    if (wk->ready) { /* the caller gave the widths and flags of [0, nreal) */
        wk->ready = 0;
        for (ssize i = 0; i < nreal; i++) { /* vectorised */
            uint32_t wd = width[i];
            wmax = wmax > wd ? wmax : wd;
            bits += wd;
        }
    } else {
        for (ssize i = 0; i < nreal; i++) {
            uint32_t pw = load_word(in, i, size);
            uint32_t m = pw & (0u - pw);
            uint32_t wd =
                (((bits_of((float)(int32_t)m) >> 23) & 0xffu) - 126u) & (0u - (pw != 0));
            width[i] = (uint8_t)wd;
            zero[i] = pw == 0;
            wmax = wmax > wd ? wmax : wd;
            bits += wd;
        }
    }
    if (wmax > maxw) { /* not this codec's prior: the error is raised after the pass */
        rd->bad = 1;
        return;
    }
    uint8_t *big = wk->big;
    if (rd->lowb) { /* split: a field wider than 8 bits has its bottom byte apart */
        for (ssize i = 0; i < nreal; i++) { /* vectorised */
            uint8_t b = width[i] > 8;
            big[i] = b;
            width[i] = (uint8_t)(width[i] - 8 * b);
            bits -= 8u * b;
        }
    }
    for (ssize i = nreal; i < n; i++) {
        width[i] = 0;
        zero[i] = 1;
    }
    memset(zero + n, 0, 8);
    /* 2. the low bits, in order */
    if (((bpos + bits) >> 3) + 8 <= lowlen) { /* every 64-bit window inside the stream */
        /* a window per 4 fields (16-bit words: <= 4 * 11 bits) or 2 (float32: <= 2 * 24) */
        const int group = size == 2 ? 4 : 2;
        ssize i = 0;
#ifdef HAVE_V3
        if (v3) i = bits_v3(width, n, low, size == 2 ? 8 : 4, &bpos, lowv);
#else
        (void)v3;
#endif
        for (; i + group <= n; i += group) {
            uint64_t x;
            memcpy(&x, low + (bpos >> 3), 8);
            x = BE64(x) << (bpos & 7);
            for (int k = 0; k < group; k++) {
                int wd = width[i + k];
                lowv[i + k] = (uint32_t)((x >> 1) >> (63 - wd));
                x <<= wd;
                bpos += wd;
            }
        }
        for (; i < n; i++) {
            int wd = width[i];
            uint64_t x;
            memcpy(&x, low + (bpos >> 3), 8);
            x = BE64(x) << (bpos & 7);
            lowv[i] = (uint32_t)((x >> 1) >> (63 - wd));
            bpos += wd;
        }
    } else {
        for (ssize i = 0; i < n; i++) {
            int wd = width[i];
            uint64_t x = window(low, lowlen, (ssize)(bpos >> 3)) << (bpos & 7);
            lowv[i] = (uint32_t)((x >> 1) >> (63 - wd));
            bpos += wd;
        }
    }
    if (rd->lowb) { /* the bottom bytes, in order (a missing one is counted, not read) */
        ssize jb = rd->jb;
        const ssize nlowb = rd->nlowb;
        for (ssize i = 0; i < nreal; i++)
            if (big[i]) {
                lowv[i] = (lowv[i] << 8) | (jb < nlowb ? rd->lowb[jb] : 0u);
                jb++;
            }
        rd->jb = jb;
    }
    /* 3. the word above the marker, the low bits from it down (vectorised) */
    for (ssize i = 0; i < nreal; i++) {
        uint32_t pw = load_word(in, i, size);
        uint32_t m = pw & (0u - pw);
        store_word(out, i, size, (pw & ~(2u * m - 1u)) | lowv[i]);
    }
    /* 4. the words that are 0 (and the padding) come whole from the byte planes: listed
     * first (x86-64), or found 8 flags at a time */
    ssize scan = n;
#ifdef HAVE_V3
    if (v3) {
        ssize count = zero_list_v3(zero, n, wk->idx);
        for (ssize c = 0; c < count; c++) {
            uint32_t rw = rest_word(raw, nrest, j, size);
            j++;
            store_word(out, wk->idx[c], size, rw);
        }
        scan = 0;
    }
#endif
    for (ssize i = 0; i < scan; i += 8) {
        uint64_t z;
        memcpy(&z, zero + i, 8);
        z = LE64(z); /* flag k + i in byte k */
        while (z) {
            ssize k = i + (ctz64(z) >> 3);
            z &= z - 1;
            uint32_t rw = rest_word(raw, nrest, j, size);
            j++;
            store_word(out, k, size, rw);
        }
    }
    rd->bpos = bpos;
    rd->j = j;
}

INLINE void remainder_chunk_impl(REM_CHUNK_ARGS, int v3) {
    if (size == 2)
        rem_k(2, in, nreal, out, n, rd, wk, v3);
    else
        rem_k(4, in, nreal, out, n, rd, wk, v3);
}

#define REM_CHUNK_NAMES size, in, nreal, out, n, rd, wk
void remainder_chunk(REM_CHUNK_ARGS) { remainder_chunk_impl(REM_CHUNK_NAMES, 0); }
#ifdef HAVE_V3
V3_TARGET void remainder_chunk_v3(REM_CHUNK_ARGS) { remainder_chunk_impl(REM_CHUNK_NAMES, 1); }
#endif
