/* The Python module ``peerprog.codec.groupplane._kernels`` (see gp.h for the kernels and
 * peerprog/codec/groupplane/c_kernels.py for how they are called). CPython's buffer protocol
 * only: no numpy headers.
 *
 *   tables(per)  the symbols per byte of r = 1 .. 7 (format.py's rule), before anything else
 *   encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps)
 *   encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps, split)
 *       -> (scales, [(codes, refine) per step], rest, low, low_bytes)
 *   decode(out, numel, scales, e_floor, gsize, size, ebits, mbits, prior | None,
 *          [(k1, r, first_of_level, codes, refine)], (rest, low, low_bytes | None) | None)
 *       -> None
 *   split / low_bytes: format 2, a low-bit field wider than 8 bits has its bottom byte in
 *   low_bytes (in order); without it (format 1) every field is whole in low
 *   simd([enable]) -> whether the SIMD paths are used
 *   FORMAT: the interface version, checked by c_kernels.py (a stale build is not used)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "gp.h"

#define FORMAT_VERSION 5

static PyObject *FormatError; /* peerprog.errors.FormatError */

typedef struct {
    Py_buffer views[8];
    int n;
} Views;

static int get_view(Views *v, PyObject *obj, Py_buffer **out, int writable) {
    Py_buffer *b = &v->views[v->n];
    if (PyObject_GetBuffer(obj, b, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                            : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    v->n++;
    *out = b;
    return 0;
}

static void release_views(Views *v) {
    for (int i = 0; i < v->n; i++) PyBuffer_Release(&v->views[i]);
    v->n = 0;
}

static int ready(void) {
    if (gp_tables_ready) return 1;
    PyErr_SetString(PyExc_RuntimeError, "groupplane kernels: tables() was not called");
    return 0;
}

static int check_fmt(Fmt *f, int size, int ebits, int mbits) {
    if (fmt_init(f, size, ebits, mbits) == 0) return 0;
    PyErr_SetString(PyExc_ValueError, "unsupported float format");
    return -1;
}

static PyObject *py_tables(PyObject *self, PyObject *arg) {
    (void)self;
    int per[MAX_STEP];
    PyObject *seq = PySequence_Fast(arg, "tables() takes a sequence");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != MAX_STEP) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "tables() takes %d counts", MAX_STEP);
        return NULL;
    }
    for (int i = 0; i < MAX_STEP; i++) {
        per[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (per[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    if (gp_tables(per) < 0) {
        PyErr_SetString(PyExc_ValueError, "symbols per byte that do not fit a byte");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ decode */

static PyObject *py_decode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *out_o, *scales_o, *prior_o, *steps_o, *rem_o;
    Py_ssize_t numel, gsize;
    int e_floor, size, ebits, mbits;
    if (!PyArg_ParseTuple(args, "OnOiniiiOOO", &out_o, &numel, &scales_o, &e_floor, &gsize,
                          &size, &ebits, &mbits, &prior_o, &steps_o, &rem_o))
        return NULL;
    Decode d = {0};
    if (!ready() || check_fmt(&d.f, size, ebits, mbits) < 0) return NULL;
    PyObject *seq = PySequence_Fast(steps_o, "steps must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t nsteps = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    Views v = {.n = 0};
    Py_buffer *out, *scales, *prior = NULL, *raw = NULL, *low = NULL, *lowb = NULL;
    Py_buffer *codes[MAX_STEPS], *refs[MAX_STEPS];
    int k1s[MAX_STEPS], rs[MAX_STEPS];
    uint8_t first[MAX_STEPS];
    StepDec *st = NULL;
    Views *vs = NULL; /* the step buffers: 2 views per step */
    int nvs = 0;
    if (nsteps > MAX_STEPS || gsize < 1 || (nsteps == 0 && rem_o == Py_None) ||
        (prior_o == Py_None && nsteps == 0)) {
        PyErr_SetString(PyExc_ValueError, "bad steps");
        goto done;
    }
    if (get_view(&v, out_o, &out, 1) < 0 || get_view(&v, scales_o, &scales, 0) < 0) goto done;
    if (prior_o != Py_None && get_view(&v, prior_o, &prior, 0) < 0) goto done;
    if (rem_o != Py_None) {
        PyObject *r_raw, *r_low, *r_lowb;
        if (!PyArg_ParseTuple(rem_o, "OOO", &r_raw, &r_low, &r_lowb)) goto done;
        if (get_view(&v, r_raw, &raw, 0) < 0 || get_view(&v, r_low, &low, 0) < 0) goto done;
        if (r_lowb != Py_None && get_view(&v, r_lowb, &lowb, 0) < 0) goto done;
    }
    Py_ssize_t total = out->len / size, ngroups = total / gsize;
    if (out->len != total * size || total != ngroups * gsize || scales->len < ngroups ||
        numel < 0 || numel > total || (prior && prior->len < numel * size)) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes do not match the tensor");
        goto done;
    }
    vs = PyMem_Calloc((size_t)(nsteps + 3) / 4 + 1, sizeof(Views));
    if (!vs) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        PyObject *c_o, *r_o;
        int fst;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, s), "iipOO", &k1s[s], &rs[s], &fst,
                              &c_o, &r_o))
            goto done;
        first[s] = (uint8_t)fst;
        if (rs[s] < 1 || rs[s] > MAX_STEP || k1s[s] < rs[s] || k1s[s] > mbits) {
            PyErr_SetString(PyExc_ValueError, "bad plane step");
            goto done;
        }
        Views *w = &vs[s / 4];
        nvs = (int)(s / 4) + 1;
        if (get_view(w, c_o, &codes[s], 0) < 0 || get_view(w, r_o, &refs[s], 0) < 0) goto done;
    }
    st = PyMem_RawMalloc(sizeof(StepDec) * (size_t)(nsteps ? nsteps : 1));
    d.state = PyMem_RawMalloc(sizeof(uint32_t) * CH);
    d.words = PyMem_RawMalloc((size_t)CH * 4);
    d.rw = PyMem_RawMalloc(sizeof(RemWork));
    if (!st || !d.state || !d.words || !d.rw) {
        PyErr_NoMemory();
        goto done;
    }
    d.rw->ready = 0;
    for (Py_ssize_t s = 0; s < nsteps; s++)
        step_init(&st[s], k1s[s], rs[s], codes[s]->buf, codes[s]->len, refs[s]->buf,
                  refs[s]->len);
    static const uint8_t no_bytes[1] = {0};
    RemDec rd = {raw ? raw->buf : NULL, low ? low->buf : NULL, raw ? raw->len / size : 0,
                 low ? low->len : 0, 0, 0, 0, mbits,
                 lowb ? (lowb->len ? lowb->buf : no_bytes) : NULL, lowb ? lowb->len : 0, 0};
    d.out = out->buf;
    d.prior = prior ? prior->buf : NULL;
    d.numel = numel;
    d.total = total;
    d.gsize = gsize;
    d.scales = scales->buf;
    d.e_floor = e_floor;
    d.nsteps = (int)nsteps;
    d.steps = st;
    d.first = first;
    d.rem = raw ? &rd : NULL;
    d.k0 = nsteps ? k1s[0] - rs[0] : 0;
    int bad_code = 0, bad_scale = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t s = 0; s < nsteps; s++)
        bad_code |= max_byte(codes[s]->buf, codes[s]->len) >= gp_apow[rs[s]];
    bad_scale = max_byte(scales->buf, ngroups) + e_floor > (1 << (ebits - 1)); /* e_ceil */
    if (!bad_code && !bad_scale && (!raw || raw->len % size == 0)) gp_decode(&d);
    Py_END_ALLOW_THREADS;
    if (bad_scale) {
        PyErr_SetString(FormatError, "group exponent out of range");
        goto done;
    }
    if (bad_code) {
        PyErr_SetString(FormatError, "symbol byte out of range");
        goto done;
    }
    if (d.bad_prior) {
        PyErr_SetString(FormatError, "prior values are not midpoints of this codec");
        goto done;
    }
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        Py_ssize_t nsig = st[s].nsig, nsym = total - nsig;
        Py_ssize_t want_codes = (nsym + gp_per[rs[s]] - 1) / gp_per[rs[s]];
        Py_ssize_t want_ref = (Py_ssize_t)(((int64_t)nsig * rs[s] + 7) / 8);
        if (refs[s]->len != want_ref) {
            PyErr_Format(FormatError, "step %zd: refinement bits of %zd bytes, expected %zd", s,
                         refs[s]->len, want_ref);
            goto done;
        }
        if (codes[s]->len != want_codes) {
            PyErr_Format(FormatError, "step %zd: %zd symbol bytes, expected %zd", s,
                         codes[s]->len, want_codes);
            goto done;
        }
    }
    if (raw) {
        if (rd.bad) {
            PyErr_SetString(FormatError, "prior values are not midpoints of this codec");
            goto done;
        }
        if (raw->len % size || rd.j != rd.nrest) {
            PyErr_Format(FormatError, "remainder of %zd whole bytes, expected %zd", raw->len,
                         (Py_ssize_t)(rd.j * size));
            goto done;
        }
        if (lowb && rd.jb != rd.nlowb) {
            PyErr_Format(FormatError, "%zd low bytes, expected %zd", rd.nlowb, rd.jb);
            goto done;
        }
        if (low->len != (Py_ssize_t)((rd.bpos + 7) / 8)) {
            PyErr_Format(FormatError, "%zd bytes of packed bits, expected %zd", low->len,
                         (Py_ssize_t)((rd.bpos + 7) / 8));
            goto done;
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    for (int i = 0; i < nvs; i++) release_views(&vs[i]);
    PyMem_Free(vs);
    release_views(&v);
    PyMem_RawFree(st);
    PyMem_RawFree(d.state);
    PyMem_RawFree(d.words);
    PyMem_RawFree(d.rw);
    Py_DECREF(seq);
    return result;
}

/* ------------------------------------------------------------------------ encode */

static PyObject *py_encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *words_o, *steps_o;
    Py_ssize_t gsize;
    int size, ebits, mbits, e_floor, e_ceil, top, split;
    if (!PyArg_ParseTuple(args, "OniiiiiiOp", &words_o, &gsize, &size, &ebits, &mbits, &e_floor,
                          &e_ceil, &top, &steps_o, &split))
        return NULL;
    Enc *e = PyMem_RawCalloc(1, sizeof(Enc));
    if (!e) return PyErr_NoMemory();
    PyObject *result = NULL, *scales = NULL, *low = NULL, *rest = NULL, *steplist = NULL;
    PyObject *lowb = NULL;
    PyObject *codes[32] = {0}, *refs[32] = {0};
    uint8_t *scratch = NULL, *resttmp = NULL;
    Views v = {.n = 0};
    Py_buffer *words;
    if (!ready() || check_fmt(&e->f, size, ebits, mbits) < 0) goto done;
    if (get_view(&v, words_o, &words, 0) < 0) goto done;
    PyObject *seq = PySequence_Fast(steps_o, "steps must be a sequence");
    if (!seq) goto done;
    Py_ssize_t nsteps = PySequence_Fast_GET_SIZE(seq);
    if (gsize < 1 || top < 1 || top > mbits || nsteps > 32 || words->len % size) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "bad encode arguments");
        goto done;
    }
    e->nsteps = (int)nsteps;
    for (Py_ssize_t s = 0; s < nsteps; s++) {
        int a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, s), "ii", &a, &b)) {
            Py_DECREF(seq);
            goto done;
        }
        if (a < 0 || b <= a || b - a > MAX_STEP || b > top) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "bad plane step");
            goto done;
        }
        Step *st = &e->steps[s];
        st->r = b - a;
        st->hi = top - a;
        st->lo = top - b;
        st->mask = (1u << st->r) - 1;
        st->per = gp_per[st->r];
        st->a = (1 << (st->r + 1)) - 1;
        st->off = (1 << st->r) - 1;
    }
    Py_DECREF(seq);
    e->words = words->buf;
    e->numel = words->len / size;
    e->gsize = gsize;
    Py_ssize_t ngroups = (e->numel + gsize - 1) / gsize;
    e->total = ngroups * gsize;
    e->e_floor = e_floor;
    e->e_ceil = e_ceil;
    e->top = top;
    Py_ssize_t total = e->total;
    if (!(scales = PyBytes_FromStringAndSize(NULL, ngroups))) goto done;
    e->scales = (uint8_t *)PyBytes_AS_STRING(scales);
    for (int s = 0; s < e->nsteps; s++) {
        Step *st = &e->steps[s];
        if (!(codes[s] = PyBytes_FromStringAndSize(NULL, total / st->per + 2))) goto done;
        if (!(refs[s] = PyBytes_FromStringAndSize(NULL, (total * st->r + 7) / 8 + 8)))
            goto done;
        st->codes = (uint8_t *)PyBytes_AS_STRING(codes[s]);
        st->ref = (uint8_t *)PyBytes_AS_STRING(refs[s]);
    }
    Py_ssize_t lowcap = (Py_ssize_t)(((int64_t)total * (mbits + 1) + 7) / 8 + 8);
    if (!(low = PyBytes_FromStringAndSize(NULL, lowcap))) goto done;
    e->low.out = (uint8_t *)PyBytes_AS_STRING(low);
    if (!(lowb = PyBytes_FromStringAndSize(NULL, split ? total : 0))) goto done;
    e->lowb = split ? (uint8_t *)PyBytes_AS_STRING(lowb) : NULL;
    Py_ssize_t chunk_groups = gsize >= 4096 ? 1 : 4096 / gsize;
    Py_ssize_t chunk = chunk_groups * gsize;
    size_t per_step = (size_t)chunk + 16;
    scratch = PyMem_RawMalloc((size_t)chunk * 10 + per_step * (size_t)(2 * e->nsteps + 3));
    resttmp = PyMem_RawMalloc((size_t)total * (size_t)size + 32);
    if (!scratch || !resttmp) {
        PyErr_NoMemory();
        goto done;
    }
    e->q = (uint32_t *)scratch;
    e->lowv = (uint32_t *)(scratch + (size_t)chunk * 4);
    e->neg = scratch + (size_t)chunk * 8;
    e->width = scratch + (size_t)chunk * 9;
    uint8_t *sb = scratch + (size_t)chunk * 10;
    for (int s = 0; s < e->nsteps; s++) {
        e->steps[s].dbuf = sb + (2 * (size_t)s) * per_step;
        e->steps[s].rbuf = sb + (2 * (size_t)s + 1) * per_step;
    }
    e->tmp = sb + 2 * (size_t)e->nsteps * per_step;
    e->rest = resttmp;
    Py_BEGIN_ALLOW_THREADS;
    gp_encode(e, chunk_groups);
    Py_END_ALLOW_THREADS;
    Py_ssize_t nrest = e->nrest;
    if (!(rest = PyBytes_FromStringAndSize(NULL, nrest * size))) goto done;
    uint8_t *ro = (uint8_t *)PyBytes_AS_STRING(rest);
    for (Py_ssize_t j = 0; j < nrest; j++) { /* byte planes, most significant first */
        uint32_t w = load_word(resttmp, j, size);
        for (int p = 0; p < size; p++) ro[p * nrest + j] = (uint8_t)(w >> (8 * (size - 1 - p)));
    }
    if (_PyBytes_Resize(&low, e->low.out - (uint8_t *)PyBytes_AS_STRING(low)) < 0) goto done;
    if (_PyBytes_Resize(&lowb, e->nlowb) < 0) goto done;
    if (!(steplist = PyList_New(e->nsteps))) goto done;
    for (int s = 0; s < e->nsteps; s++) {
        if (_PyBytes_Resize(&codes[s], e->steps[s].ncodes) < 0 ||
            _PyBytes_Resize(&refs[s], e->steps[s].nref) < 0)
            goto done;
        PyObject *pair = PyTuple_Pack(2, codes[s], refs[s]);
        if (!pair) goto done;
        PyList_SET_ITEM(steplist, s, pair);
    }
    result = PyTuple_Pack(5, scales, steplist, rest, low, lowb);
done:
    release_views(&v);
    PyMem_RawFree(scratch);
    PyMem_RawFree(resttmp);
    PyMem_RawFree(e);
    for (int s = 0; s < 32; s++) {
        Py_XDECREF(codes[s]);
        Py_XDECREF(refs[s]);
    }
    Py_XDECREF(scales);
    Py_XDECREF(low);
    Py_XDECREF(lowb);
    Py_XDECREF(rest);
    Py_XDECREF(steplist);
    return result;
}


/* ------------------------------------------------------------------------ module */

static PyObject *py_simd(PyObject *self, PyObject *args) {
    (void)self;
    int enable = -1;
    if (!PyArg_ParseTuple(args, "|p", &enable)) return NULL;
    return PyBool_FromLong(gp_simd(enable));
}

static PyMethodDef methods[] = {
    {"tables", py_tables, METH_O,
     "tables(per): the symbols per byte of r = 1 .. 7 planes, before any other call"},
    {"encode", py_encode, METH_VARARGS,
     "encode(words, gsize, size, ebits, mbits, e_floor, e_ceil, top, steps) -> "
     "(scales, [(codes, refine)], rest, low)"},
    {"decode", py_decode, METH_VARARGS,
     "decode(out, numel, scales, e_floor, gsize, size, ebits, mbits, prior | None, "
     "[(k1, r, first_of_level, codes, refine)], (rest, low) | None): consecutive levels in "
     "one pass"},
    {"simd", py_simd, METH_VARARGS,
     "simd([enable]) -> whether the SIMD kernels (SSSE3, AVX2, BMI2; as the CPU has them) "
     "are used; simd(False) selects the portable ones (for tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "groupplane's kernels in C (see peerprog/codec/groupplane/c_kernels.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *errors = PyImport_ImportModule("peerprog.errors");
    if (!errors) return NULL;
    FormatError = PyObject_GetAttrString(errors, "FormatError");
    Py_DECREF(errors);
    if (!FormatError) return NULL;
    gp_cpu_init();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "FORMAT", FORMAT_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
