/* Float formats, the symbol tables, and the CPU's SIMD features (see gp.h). */
#include "gp.h"

int fmt_init(Fmt *f, int size, int ebits, int mbits) {
    if (size == 4 && ebits == 8 && mbits == 23)
        f->kind = K_F32;
    else if (size == 2 && ebits == 8 && mbits == 7)
        f->kind = K_BF16;
    else if (size == 2 && ebits == 5 && mbits == 10)
        f->kind = K_F16;
    else
        return -1;
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

/* ------------------------------------------------------------------------ symbols */

int gp_per[MAX_STEP + 1];
int gp_apow[MAX_STEP + 1];
int8_t gp_table[MAX_STEP + 1][256][8];
int8_t gp_fields[5][256][8];
int gp_tables_ready;

int gp_tables(const int *per) {
    for (int r = 1; r <= MAX_STEP; r++) {
        int a = (1 << (r + 1)) - 1, ap = 1;
        if (per[r - 1] < 1 || per[r - 1] > 8) return -1;
        for (int i = 0; i < per[r - 1]; i++) ap *= a;
        if (ap > 256) return -1;
    }
    for (int r = 1; r <= 4; r *= 2)
        for (int c = 0; c < 256; c++)
            for (int i = 0; i < 8; i++)
                gp_fields[r][c][i] =
                    (int8_t)(i < 8 / r ? (c >> (8 - r * (i + 1))) & ((1 << r) - 1) : 0);
    for (int r = 1; r <= MAX_STEP; r++) {
        int a = (1 << (r + 1)) - 1, p = per[r - 1], ap = 1;
        for (int i = 0; i < p; i++) ap *= a;
        gp_per[r] = p;
        gp_apow[r] = ap;
        for (int c = 0; c < 256; c++) {
            int x = c;
            for (int i = 0; i < 8; i++) {
                gp_table[r][c][i] = (int8_t)(i < p ? x % a - ((1 << r) - 1) : 0);
                if (i < p) x /= a;
            }
        }
    }
    gp_tables_ready = 1;
    return 0;
}

/* ------------------------------------------------------------------------ SIMD */

int gp_use_ssse3, gp_use_avx2, gp_use_v3;
static int cpu_ssse3, cpu_avx2, cpu_v3; /* what the CPU has (gp_use_* may be switched off) */

#ifdef HAVE_X86
uint8_t gp_expand[256][8];
uint8_t gp_compress[256][8];
uint8_t gp_compress16[256][16], gp_compress32[16][16];
uint8_t gp_pop[256];

static void init_shuffles(void) {
    for (int m = 0; m < 256; m++) {
        int k = 0;
        for (int i = 0; i < 8; i++) {
            gp_expand[m][i] = (m >> i) & 1 ? (uint8_t)k : 0x80;
            gp_compress[m][i] = 0x80;
            if ((m >> i) & 1) gp_compress[m][k++] = (uint8_t)i;
        }
        gp_pop[m] = (uint8_t)k;
    }
    for (int m = 0; m < 256; m++) {
        int k = 0;
        memset(gp_compress16[m], 0x80, 16);
        for (int i = 0; i < 8; i++)
            if ((m >> i) & 1) {
                gp_compress16[m][2 * k] = (uint8_t)(2 * i);
                gp_compress16[m][2 * k + 1] = (uint8_t)(2 * i + 1);
                k++;
            }
    }
    for (int m = 0; m < 16; m++) {
        int k = 0;
        memset(gp_compress32[m], 0x80, 16);
        for (int i = 0; i < 4; i++)
            if ((m >> i) & 1) {
                for (int b = 0; b < 4; b++) gp_compress32[m][4 * k + b] = (uint8_t)(4 * i + b);
                k++;
            }
    }
}
#endif

void gp_cpu_init(void) {
#ifdef HAVE_X86
    init_shuffles();
    __builtin_cpu_init();
    cpu_ssse3 = __builtin_cpu_supports("ssse3");
    cpu_avx2 = __builtin_cpu_supports("avx2");
#ifdef HAVE_V3
    cpu_v3 = cpu_avx2 && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
             __builtin_cpu_supports("popcnt");
#endif
#endif
    gp_simd(1);
}

int gp_simd(int enable) {
    if (enable >= 0) {
        gp_use_ssse3 = enable && cpu_ssse3;
        gp_use_avx2 = enable && cpu_avx2;
        gp_use_v3 = enable && cpu_v3;
    }
    return gp_use_ssse3 || gp_use_avx2 || gp_use_v3;
}
