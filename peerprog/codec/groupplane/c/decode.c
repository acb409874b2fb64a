/* One pass over a tensor for any run of consecutive levels (see gp.h): each chunk goes through
 * every plane step in cache (a level's first step sees the padding as +0, as a decoder level
 * by level does), then through the remainder if the last level is there, and is written out
 * once. */
#include "gp.h"

typedef void (*PlaneFn)(PLANE_CHUNK_ARGS);
typedef void (*RemFn)(REM_CHUNK_ARGS);

void gp_decode(Decode *d) {
    PlaneFn plane = plane_chunk;
    RemFn rem = remainder_chunk;
#ifdef HAVE_V3
    if (gp_use_v3) {
        plane = plane_chunk_v3;
        rem = remainder_chunk_v3;
    }
#endif
    const int size = d->f.size;
    PlaneScratch *sc = d->sc;
    RemWork *rw = d->rw;
    uint8_t *cbuf = d->cbuf;
    for (ssize c0 = 0; c0 < d->total; c0 += CH) {
        ssize n = d->total - c0 < CH ? d->total - c0 : CH, real = d->numel - c0;
        const uint8_t *prior = d->prior && real > 0 ? d->prior + c0 * size : NULL;
        uint8_t *dst = d->rem ? cbuf : d->out + c0 * size;
        for (int s = 0; s < d->nsteps; s++) {
            const uint8_t *in = s ? dst : prior;
            ssize n_in = s == 0 ? (prior ? real : 0) : d->first[s] ? real : n;
            plane(&d->f, in, n_in, dst, n, c0 / d->gsize, c0 % d->gsize, d->gsize, d->scales,
                  d->e_floor, &d->steps[s], sc);
        }
        if (d->rem) {
            const uint8_t *in = d->nsteps ? cbuf : prior;
            rem(size, in, in ? real : 0, d->out + c0 * size, n, d->rem, rw);
        }
    }
}
