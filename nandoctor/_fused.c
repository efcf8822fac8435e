/* nandoctor._fused: a chunk's zip CRC-32 and its 64 KiB segments' word ORs in one pass over its bytes.
 *
 * The scan of a torch `.bin` file owes every storage's CRC-32 (torch never checks it), and the health
 * census's prefilter needs the OR of each 64 KiB segment's 64-bit words (kernels/census.py,
 * segment_ors). Done apart, they are two passes over each chunk, ISA-L's CRC and numpy's OR-reduction,
 * each at ~60 GB/s a core here, and the chunk does not stay in L2 between them: the `.bin` scan reached
 * ~0.5 of the machine's read floor where a safetensors scan reaches ~0.75. Here one loop loads each
 * 256 bytes once into four 512-bit registers, folds them into the CRC (carry-less multiplication,
 * VPCLMULQDQ) and ORs them into an accumulator stored at every segment's end.
 *
 * The folding is the one of "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction"
 * (Gopal, Ozturk et al., Intel, 2009) widened to 512 bits as Chromium's zlib does (crc32_simd.c); the
 * fold constants are x^n mod P for the zip polynomial, bit-reflected (tests/test_fused.py checks every
 * result against zlib.crc32 and numpy's reduceat). Only x86-64 CPUs with AVX-512 and VPCLMULQDQ take this
 * path (checked at run time); everywhere else `available()` is False and the scan keeps its two passes.
 * The GIL is released while a buffer is read, so the scan's worker threads run side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SEGMENT_BYTES 65536 /* census.SEGMENT_BYTES */

static uint32_t crc_table[256];

static void make_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* The running (inverted) CRC continued over a few bytes: the tails the wide loop leaves. */
static uint32_t crc_bytes(uint32_t crc, const uint8_t *p, size_t n) {
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_WIDE 1
#define WIDE __attribute__((target("avx512f,avx512bw,avx512vl,vpclmulqdq,pclmul,sse4.1")))

/* The running CRC of n >= 256 bytes (n a multiple of 256) continued from `crc`; when `ors` is given, the OR of
 * each whole 64 KiB segment's words stored there in order, and the OR of the last, partial one returned in
 * *partial (0 when the bytes end on a segment boundary). */
WIDE static uint32_t crc_wide(uint32_t crc, const uint8_t *buf, size_t n, uint64_t *ors, uint64_t *partial) {
    /* Fold by 4 x 512 bits: k1 = x^(2048+32) mod P, k2 = x^(2048-32) mod P; by 512 bits: k3, k4; by 128
     * bits: k5, k6; 64 -> 32 bits: k7; the polynomial and its Barrett constant (all bit-reflected, << 1). */
    const __m512i k1k2 = _mm512_set_epi64(0x01322d1430, 0x011542778a, 0x01322d1430, 0x011542778a,
                                          0x01322d1430, 0x011542778a, 0x01322d1430, 0x011542778a);
    const __m512i k3k4 = _mm512_set_epi64(0x01c6e41596, 0x0154442bd4, 0x01c6e41596, 0x0154442bd4,
                                          0x01c6e41596, 0x0154442bd4, 0x01c6e41596, 0x0154442bd4);
    const __m128i k5k6 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k7k0 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
    const size_t per_segment = SEGMENT_BYTES / 256;

    __m512i x1 = _mm512_loadu_si512((const void *)(buf + 0x00));
    __m512i x2 = _mm512_loadu_si512((const void *)(buf + 0x40));
    __m512i x3 = _mm512_loadu_si512((const void *)(buf + 0x80));
    __m512i x4 = _mm512_loadu_si512((const void *)(buf + 0xC0));
    __m512i acc = _mm512_or_si512(_mm512_or_si512(x1, x2), _mm512_or_si512(x3, x4));
    x1 = _mm512_xor_si512(x1, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)crc)));
    size_t blocks = n / 256, block = 1;
    for (const uint8_t *p = buf + 256; block < blocks; block++, p += 256) {
        if (ors && block % per_segment == 0) {
            *ors++ = (uint64_t)_mm512_reduce_or_epi64(acc);
            acc = _mm512_setzero_si512();
        }
        __m512i y1 = _mm512_loadu_si512((const void *)(p + 0x00));
        __m512i y2 = _mm512_loadu_si512((const void *)(p + 0x40));
        __m512i y3 = _mm512_loadu_si512((const void *)(p + 0x80));
        __m512i y4 = _mm512_loadu_si512((const void *)(p + 0xC0));
        acc = _mm512_or_si512(acc, _mm512_or_si512(_mm512_or_si512(y1, y2), _mm512_or_si512(y3, y4)));
        __m512i t1 = _mm512_clmulepi64_epi128(x1, k1k2, 0x00);
        __m512i t2 = _mm512_clmulepi64_epi128(x2, k1k2, 0x00);
        __m512i t3 = _mm512_clmulepi64_epi128(x3, k1k2, 0x00);
        __m512i t4 = _mm512_clmulepi64_epi128(x4, k1k2, 0x00);
        x1 = _mm512_clmulepi64_epi128(x1, k1k2, 0x11);
        x2 = _mm512_clmulepi64_epi128(x2, k1k2, 0x11);
        x3 = _mm512_clmulepi64_epi128(x3, k1k2, 0x11);
        x4 = _mm512_clmulepi64_epi128(x4, k1k2, 0x11);
        x1 = _mm512_ternarylogic_epi64(x1, t1, y1, 0x96); /* three-way XOR */
        x2 = _mm512_ternarylogic_epi64(x2, t2, y2, 0x96);
        x3 = _mm512_ternarylogic_epi64(x3, t3, y3, 0x96);
        x4 = _mm512_ternarylogic_epi64(x4, t4, y4, 0x96);
    }
    if (ors) {
        if (blocks % per_segment == 0) {
            *ors = (uint64_t)_mm512_reduce_or_epi64(acc);
            *partial = 0;
        } else {
            *partial = (uint64_t)_mm512_reduce_or_epi64(acc);
        }
    }

    /* Four 512-bit remainders into one. */
    __m512i t = _mm512_clmulepi64_epi128(x1, k3k4, 0x00);
    x1 = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x1, k3k4, 0x11), t, x2, 0x96);
    t = _mm512_clmulepi64_epi128(x1, k3k4, 0x00);
    x1 = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x1, k3k4, 0x11), t, x3, 0x96);
    t = _mm512_clmulepi64_epi128(x1, k3k4, 0x00);
    x1 = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x1, k3k4, 0x11), t, x4, 0x96);

    /* 512 bits into 128, lane by lane. */
    __m128i a1 = _mm512_extracti32x4_epi32(x1, 0);
    for (int lane = 1; lane < 4; lane++) {
        __m128i next = lane == 1 ? _mm512_extracti32x4_epi32(x1, 1)
                     : lane == 2 ? _mm512_extracti32x4_epi32(x1, 2)
                                 : _mm512_extracti32x4_epi32(x1, 3);
        __m128i a3 = _mm_clmulepi64_si128(a1, k5k6, 0x00);
        a1 = _mm_clmulepi64_si128(a1, k5k6, 0x11);
        a1 = _mm_xor_si128(_mm_xor_si128(a1, a3), next);
    }

    /* 128 bits into 64, then Barrett's reduction to 32. */
    __m128i a2 = _mm_clmulepi64_si128(a1, k5k6, 0x10);
    a1 = _mm_xor_si128(_mm_srli_si128(a1, 8), a2);
    a2 = _mm_srli_si128(a1, 4);
    a1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(a1, low32), k7k0, 0x00), a2);
    a2 = _mm_clmulepi64_si128(_mm_and_si128(a1, low32), poly, 0x10);
    a2 = _mm_clmulepi64_si128(_mm_and_si128(a2, low32), poly, 0x00);
    a1 = _mm_xor_si128(a1, a2);
    return (uint32_t)_mm_extract_epi32(a1, 1);
}

/* The OR of each 64 KiB segment's words of n bytes (the last segment partial), without a CRC: a chunk owing none
 * (safetensors) still has its segment ORs read at the machine's pace instead of numpy's reduceat's. */
WIDE static void ors_wide(const uint8_t *buf, size_t n, uint64_t *ors) {
    size_t words = n / 8;
    for (size_t at = 0; at < words * 8; at += SEGMENT_BYTES) {
        size_t end = at + SEGMENT_BYTES < words * 8 ? at + SEGMENT_BYTES : words * 8;
        __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
        size_t p = at;
        for (; p + 256 <= end; p += 256) {
            a = _mm512_or_si512(a, _mm512_loadu_si512((const void *)(buf + p)));
            b = _mm512_or_si512(b, _mm512_loadu_si512((const void *)(buf + p + 64)));
            c = _mm512_or_si512(c, _mm512_loadu_si512((const void *)(buf + p + 128)));
            d = _mm512_or_si512(d, _mm512_loadu_si512((const void *)(buf + p + 192)));
        }
        uint64_t acc = (uint64_t)_mm512_reduce_or_epi64(_mm512_or_si512(_mm512_or_si512(a, b), _mm512_or_si512(c, d)));
        for (uint64_t word; p < end; p += 8) {
            memcpy(&word, buf + p, 8);
            acc |= word;
        }
        *ors++ = acc;
    }
}

static int wide_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq") &&
           __builtin_cpu_supports("pclmul");
}
#else
#define HAVE_WIDE 0
static int wide_available(void) { return 0; }
#endif

static int wide = 0;

/* The scalar OR of the words in [p, p + n) (n a multiple of 8), the last segment's tail. */
static uint64_t or_words(const uint8_t *p, size_t n) {
    uint64_t acc = 0, word;
    for (size_t i = 0; i < n; i += 8) {
        memcpy(&word, p + i, 8);
        acc |= word;
    }
    return acc;
}

static PyObject *crc32_ors(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    PyObject *value_object, *ors_object;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*OO", &data, &value_object, &ors_object))
        return NULL;
    int with_crc = value_object != Py_None, with_ors = ors_object != Py_None;
    unsigned long value = 0;
    if (with_crc) {
        value = PyLong_AsUnsignedLongMask(value_object);
        if (value == (unsigned long)-1 && PyErr_Occurred()) {
            PyBuffer_Release(&data);
            return NULL;
        }
    }
    size_t n = (size_t)data.len, words = n / 8, segments = (words + SEGMENT_BYTES / 8 - 1) / (SEGMENT_BYTES / 8);
    if (with_ors) {
        if (PyObject_GetBuffer(ors_object, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&data);
            return NULL;
        }
        const char *wrong = (size_t)out.len < segments * 8 ? "crc32_ors: ors must hold a uint64 per 64 KiB segment"
                          : (uintptr_t)out.buf % 8                ? "crc32_ors: ors must be 8-byte aligned"
                          : words && (uintptr_t)data.buf % 8      ? "crc32_ors: the data must be 8-byte aligned for its ORs"
                                                                  : NULL;
        if (wrong) {
            PyBuffer_Release(&out);
            PyBuffer_Release(&data);
            PyErr_SetString(PyExc_ValueError, wrong);
            return NULL;
        }
    }
    if (!wide) {
        if (with_ors)
            PyBuffer_Release(&out);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_RuntimeError, "crc32_ors: this CPU has no AVX-512 carry-less multiplication");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)data.buf;
    uint64_t *ors = with_ors ? (uint64_t *)out.buf : NULL;
    uint32_t crc = ~(uint32_t)value;
    if (!with_crc) {
        if (with_ors) {
            Py_BEGIN_ALLOW_THREADS
#if HAVE_WIDE
            ors_wide(p, n, ors);
#endif
            Py_END_ALLOW_THREADS
            PyBuffer_Release(&out);
        }
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    Py_BEGIN_ALLOW_THREADS
    size_t body = n / 256 * 256;
    uint64_t partial = 0;
#if HAVE_WIDE
    if (body)
        crc = crc_wide(crc, p, body, ors, &partial);
#endif
    crc = crc_bytes(crc, p + body, n - body);
    if (ors) {
        size_t done = body / SEGMENT_BYTES; /* whole segments stored; the partial one (if any) is next */
        uint64_t tail = or_words(p + body, (words * 8 > body ? words * 8 - body : 0));
        if (!body) {
            if (words)
                ors[0] = tail;
        } else if (done < segments) {
            ors[done] = partial | tail;
        }
    }
    Py_END_ALLOW_THREADS
    if (with_ors)
        PyBuffer_Release(&out);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong((unsigned long)(~crc));
}

static PyObject *available(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(wide);
}

static PyMethodDef methods[] = {
    {"crc32_ors", crc32_ors, METH_VARARGS,
     "crc32_ors(data, value, ors) -> int | None: the CRC-32 of data continued from value (as zlib.crc32; None: no\n"
     "CRC, returns None), and, when ors (a writable uint64 buffer, one item per 64 KiB segment) is not None, the OR\n"
     "of each segment's 64-bit words."},
    {"available", available, METH_NOARGS, "available() -> bool: whether this CPU runs crc32_ors (AVX-512, VPCLMULQDQ)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods, NULL, NULL, NULL, NULL};

/* What kernels/fused.py expects of this module: raised with every change of its functions' signatures, so that a
 * stale build left in a source tree (an editable install after `git pull`) is passed over, never called wrongly. */
#define API_VERSION 2

PyMODINIT_FUNC PyInit__fused(void) {
    make_table();
    wide = wide_available();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* (its only state is set once here and read-only after: a free-threaded Python keeps its GIL off) */
    if (m != NULL)
        PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    return m;
}
