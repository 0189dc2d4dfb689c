/* FP8-state AdamW step on the CPU in one pass per block (``methods/fp8/optim_native.py`` builds and calls it).
 *
 * Per block of B values: the gradient, the weight (or master copy) and the FP8 codes of m and v are read
 * once, decoded, updated, reduced (per-block amax, and amin for DRE) into fp32 arrays on the stack
 * (L1-sized), encoded and written back once. Two builds of the same operations:
 *   - portable: plain loops over the block that the compiler vectorises (-O3 -march=native);
 *   - AVX-512 (where the compiler targets it): full blocks in one fused pass of 16 lanes, then the
 *     encodes, in intrinsics. Table lookups are register permutes (a gather is slow on many CPUs) and the
 *     divisions Markstein corrections in fused multiply-adds (the divider is the step's slowest unit).
 *     It gives the portable build's bits (tests/optim/test_optim_native*.py pin the two together).
 * There are no library calls in the loops.
 *
 * The arithmetic is the reference's (``FP8AdamW(impl="torch")``: ``optim_codec.decode``,
 * ``adamw_base.adamw_update_``, ``optim_codec.encode``, ``round_bf16_stochastic``) op for op and in fp32,
 * with the same rounding order (lerp and addcmul as the eager CPU kernels' fused multiply-adds), the same
 * FP8 and bf16 casts (round to nearest even, c10's bit recipes) and the same hash. The one difference,
 * DRE only: log2 is the kernel's own (a table and a polynomial, within ~1 fp32 ulp) where eager calls
 * SLEEF or MKL; the encode rounds exp2(log2(a / amax) k) fmax to FP8 by searching the FP8 midpoints in
 * log2 space (no exp2; below), with log2(a / amax) as log2(a) - log2(amax); the decode evaluates
 * exp2(log2(|c| / fmax) / k) once per magnitude and k (a polynomial in FMAs, times 1/k). So a code moves
 * by one step only where a value lies within a few fp32 ulps of a rounding midpoint (counted in the test).
 * Compiled with -ffp-contract=off, so no other multiply-add is fused behind the reference's back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* the 16-lane build: AVX-512 F and DQ (vreduceps), every AVX-512 CPU but the Xeon Phi */
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define LANES512 1
#include <immintrin.h>
#else
#define LANES512 0
#endif

#define MAX_BLOCK 4096

typedef struct {
    void *p;              /* the parameter: bf16 (p_bf16) or fp32, n values */
    const void *g;        /* its gradient: bf16 (g_bf16) or fp32 */
    float *master;        /* fp32 master copy or NULL */
    uint8_t *mc, *vc;     /* codes, (nb, B) */
    float *ms, *vs;       /* per-block scales (nb,) */
    uint16_t *mk, *vk;    /* per-block DRE exponents as bf16 bits, or NULL */
    int64_t n, block, b0, b1;  /* values, block size, blocks [b0, b1) to step */
    int32_t p_bf16, g_bf16, stochastic, lerp_hi;
    int32_t m_fmt, v_fmt;      /* 0: e4m3 (fn), 1: e5m2 */
    int32_t m_tr, v_tr;        /* 0: none, 1: sqrt, 2: dre */
    uint32_t salt;
    float m_log2nr, v_log2nr;  /* log2(fmax / smallest normal), as the fp32 scalar eager multiplies by */
    float b1c, b1c_m1, b2, b2c, decay, bc2_sqrt, eps, step_size;
} Args;

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- FP8 formats: mant bits M, exponent bias E, largest finite value ------------------------------ */
#define E4M3_M 3
#define E4M3_E 7
#define E4M3_MAX 448.0f
#define E5M2_M 2
#define E5M2_E 15
#define E5M2_MAX 57344.0f

/* fp32 -> FP8 bits, round to nearest even (c10's fp8e4m3fn/fp8e5m2_from_fp32_value) */
static inline __attribute__((always_inline)) uint8_t enc8(float x, const int M, const int E) {
    uint32_t u = f2u(x);
    uint32_t sign = (u >> 24) & 0x80u;
    u &= 0x7FFFFFFFu;
    /* at or above the overflow bound: NaN for e4m3fn; inf (or NaN) for e5m2 */
    uint32_t big = (M == 3) ? 0x43F00000u : 0x47800000u;
    uint32_t over = (M == 3) ? 0x7Fu : (u > 0x7F800000u ? 0x7Fu : 0x7Cu);
    /* subnormal: an fp32 add at an exponent where one fp32 ulp is one FP8 subnormal step rounds it */
    float magic = u2f((uint32_t)(127 + 1 - E - M + 23) << 23);
    uint32_t sub = f2u(u2f(u) + magic) - f2u(magic);
    const int sh = 23 - M;
    uint32_t odd = (u >> sh) & 1u;
    uint32_t nrm = (u + ((uint32_t)(E - 127) << 23) + ((1u << (sh - 1)) - 1u) + odd) >> sh;
    uint32_t r = u >= big ? over : (u < ((uint32_t)(128 - E) << 23) ? sub : nrm);
    return (uint8_t)(r | sign);
}

/* FP8 bits -> fp32, exact (e4m3fn: 0x7F is NaN; e5m2: exponent 31 is inf / NaN) */
static inline __attribute__((always_inline)) float dec8(uint8_t c, const int M, const int E) {
    uint32_t sign = ((uint32_t)c & 0x80u) << 24;
    uint32_t mag = (uint32_t)c & 0x7Fu;
    uint32_t e = mag >> M, f = mag & ((1u << M) - 1u);
    float sub = (float)(int32_t)f * u2f((uint32_t)(127 + 1 - E - M) << 23);
    uint32_t nrm = ((e + 127u - (uint32_t)E) << 23) | (f << (23 - M));
    uint32_t special = (M == 3) ? (mag == 0x7Fu ? 0x7FC00000u : nrm)
                                : (e == 31u ? (f ? 0x7FC00000u : 0x7F800000u) : nrm);
    uint32_t bits = e == 0 ? f2u(sub) : special;
    return u2f(bits | sign);
}

static inline float bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

/* fp32 -> bf16 bits, round to nearest even (c10::round_to_nearest_even) */
static inline uint16_t f32_to_bf16(float x) {
    uint32_t u = f2u(x);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)(x != x ? 0x7FC0u : r);
}

/* ---- log2 and exp2 for DRE ------------------------------------------------------------------------ */
/* log2(x), x >= 0: x = 2^e * m with m in [1, 2) (subnormal x rescaled by 2^23 first), m's top five
 * mantissa bits pick i, and log2(m) = log2(m r_i) - log2(r_i) with r_i = fp32(1 / (1 + i / 32)): z =
 * m r_i - 1 in [0, 1/32) in one fused multiply-add, log2(1 + z) to z^4 (truncation < 1e-8), -log2(r_i)
 * from a table (both tables computed in double precision, rounded to fp32). Within ~1 fp32 ulp
 * (measured: 1.0 for |log2 x| >= 1, 2.8 near x = 1); exact at powers of two. log2(0) = -inf. The
 * AVX-512 lanes (log2_v) do the same operations, so give the same bits. */
static const float LOG2_R[32] = {
    0x1.p+0f, 0x1.f07c20p-1f, 0x1.e1e1e2p-1f, 0x1.d41d42p-1f, 0x1.c71c72p-1f, 0x1.bacf92p-1f, 0x1.af286cp-1f, 0x1.a41a42p-1f,
    0x1.99999ap-1f, 0x1.8f9c18p-1f, 0x1.861862p-1f, 0x1.7d05f4p-1f, 0x1.745d18p-1f, 0x1.6c16c2p-1f, 0x1.642c86p-1f, 0x1.5c9882p-1f,
    0x1.555556p-1f, 0x1.4e5e0ap-1f, 0x1.47ae14p-1f, 0x1.414142p-1f, 0x1.3b13b2p-1f, 0x1.3521d0p-1f, 0x1.2f684cp-1f, 0x1.29e412p-1f,
    0x1.24924ap-1f, 0x1.1f7048p-1f, 0x1.1a7b96p-1f, 0x1.15b1e6p-1f, 0x1.111112p-1f, 0x1.0c9714p-1f, 0x1.084210p-1f, 0x1.041042p-1f,
};
static const float LOG2_T[32] = {
    0.0f, 0x1.6bad20p-5f, 0x1.663f6ep-4f, 0x1.08c588p-3f, 0x1.5c01a2p-3f, 0x1.acf5dep-3f, 0x1.fbc16ap-3f, 0x1.24407ap-2f,
    0x1.49a784p-2f, 0x1.6e2220p-2f, 0x1.91bba6p-2f, 0x1.b47ec0p-2f, 0x1.d6753cp-2f, 0x1.f7a854p-2f, 0x1.0c1050p-1f, 0x1.1bf314p-1f,
    0x1.2b8034p-1f, 0x1.3abb40p-1f, 0x1.49a786p-1f, 0x1.584820p-1f, 0x1.66a008p-1f, 0x1.74b1fcp-1f, 0x1.82809cp-1f, 0x1.900e62p-1f,
    0x1.9d5d9ep-1f, 0x1.aa708ep-1f, 0x1.b7494ap-1f, 0x1.c3e9cap-1f, 0x1.d053f4p-1f, 0x1.dc899ep-1f, 0x1.e88c6cp-1f, 0x1.f45e06p-1f,
};
#define LOG2_C1 0x1.715476p+0f
#define LOG2_C2 -0x1.715476p-1f
#define LOG2_C3 0x1.ec709ep-2f
#define LOG2_C4 -0x1.715476p-2f
static inline __attribute__((always_inline)) float log2_(float x) {
    uint32_t u = f2u(x);
    int sub = u < 0x00800000u;  /* zero or subnormal */
    uint32_t v = sub ? f2u(x * 8388608.0f) : u;
    float e = (float)((int32_t)(v >> 23) - 127 - (sub ? 23 : 0));
    e = x == 0.0f ? -__builtin_inff() : e;  /* then r = e: m = 1, z = 0 */
    e = (x != x || x == __builtin_inff()) ? x : e;
    float m = u2f((v & 0x007FFFFFu) | 0x3F800000u);
    int i = (int)((v >> 18) & 31u);
    float z = __builtin_fmaf(m, LOG2_R[i], -1.0f);
    float p = __builtin_fmaf(LOG2_C4, z, LOG2_C3);
    p = __builtin_fmaf(p, z, LOG2_C2);
    p = __builtin_fmaf(p, z, LOG2_C1);
    return __builtin_fmaf(z, p, LOG2_T[i]) + e;
}

/* exp2(y): y = n + f, n an integer, |f| <= 1/2; 2^f by its Taylor series to f^7 (truncation < 1e-8),
 * scaled by 2^n in two exact power-of-two factors so subnormal results round once. */
static inline __attribute__((always_inline)) float exp2_(float y) {
    y = y < -160.0f ? -160.0f : y;   /* below: 0 (also -inf); NaN passes through the comparisons */
    y = y > 129.0f ? 129.0f : y;     /* above: inf */
    float n = (y + 12582912.0f) - 12582912.0f;  /* round to nearest integer (1.5 * 2^23) */
    float f = y - n;
    float p = 1.5252734e-5f;                    /* ln2^7 / 7! */
    p = __builtin_fmaf(p, f, 1.5403530e-4f);    /* ln2^6 / 6! */
    p = __builtin_fmaf(p, f, 1.3333558e-3f);    /* ln2^5 / 5! */
    p = __builtin_fmaf(p, f, 9.6181291e-3f);    /* ln2^4 / 4! */
    p = __builtin_fmaf(p, f, 5.5504109e-2f);    /* ln2^3 / 3! */
    p = __builtin_fmaf(p, f, 0.240226507f);     /* ln2^2 / 2! */
    p = __builtin_fmaf(p, f, 0.693147181f);     /* ln2 */
    p = __builtin_fmaf(p, f, 1.0f);
    int32_t ni = (int32_t)(n == n ? n : 0.0f);
    int32_t n1 = ni >> 1, n2 = ni - n1;
    return p * u2f((uint32_t)(n1 + 127) << 23) * u2f((uint32_t)(n2 + 127) << 23);
}

/* ---- the DRE encode without exp2 ------------------------------------------------------------------ */
/* The reference encodes y = exp2(log2(a / amax) * k) * fmax to the nearest FP8 value. Rounding y to
 * nearest is a search in log space: with u = log2(y) = log2(a / amax) * k + log2(fmax), y's code is the
 * number of midpoints between consecutive FP8 values whose log2 is <= u. Here U = 16 u (one fused
 * multiply-add) and n = floor(U): for a normal result, e = n >> 4 is floor(u) and the code is
 * (e + bias) * 2^M + j, j the number of mantissa midpoints log2(1 + (i - 1/2) / 2^M), i = 1..2^M, at or
 * below u - e (j = 2^M carries into the next exponent, as rounding does). Each sixteenth b = n & 15 of an
 * octave holds at most one of those midpoints, so j is a 16-entry lookup of the midpoints below b plus one
 * compare of U - n (exact) with 16 x (the midpoint in b) - b (exact). Subnormal results (u < 1 - bias)
 * count the 2^M subnormal midpoints log2(i + 1/2) - (bias + M - 1) instead. The midpoints are computed in
 * double precision and rounded to fp32. Against the reference's exp2, a multiply and a rounding, a code
 * differs only where y lies within a few fp32 ulps of a midpoint (counted in the test). */
#define F_INF __builtin_inff()
typedef struct {
    float log2max, min_exp;  /* 16 log2(fmax); 16 (1 - bias), the smallest normal exponent */
    float thr[16];           /* 16 x the mantissa midpoint in sixteenth b, minus b (inf where there is none) */
    int32_t base[16];        /* the mantissa midpoints below sixteenth b */
    float sub[8];            /* 16 x the subnormal midpoints (inf past 2^M) */
} DreTab;
#define T16(x, b) (16.0f * (x) - (b))  /* exact: x in [b / 16, (b + 1) / 16) */
static const DreTab DRE_E4M3 = {
    16.0f * 0x1.19d5dap+3f, 16.0f * -6.0f,
    {F_INF, T16(0x1.663f70p-4f, 1), F_INF, T16(0x1.fbc16cp-3f, 3), F_INF, F_INF, T16(0x1.91bba8p-2f, 6), F_INF,
     T16(0x1.0c1050p-1f, 8), F_INF, T16(0x1.49a784p-1f, 10), F_INF, T16(0x1.82809ep-1f, 12),
     T16(0x1.b74948p-1f, 13), F_INF, T16(0x1.e88c6cp-1f, 15)},
    {0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7},
    {16.0f * -0x1.4p+3f, 16.0f * -0x1.0d47fcp+3f, 16.0f * -0x1.eb6588p+2f, 16.0f * -0x1.cc544cp+2f,
     16.0f * -0x1.b51ff2p+2f, 16.0f * -0x1.a298acp+2f, 16.0f * -0x1.932bfep+2f, 16.0f * -0x1.85f582p+2f}};
static const DreTab DRE_E5M2 = {
    16.0f * 0x1.f9d5dap+3f, 16.0f * -14.0f,
    {F_INF, F_INF, T16(0x1.5c01a4p-3f, 2), F_INF, F_INF, F_INF, F_INF, T16(0x1.d6753ep-2f, 7),
     F_INF, F_INF, F_INF, T16(0x1.66a008p-1f, 11), F_INF, F_INF, T16(0x1.d053f6p-1f, 14), F_INF},
    {0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4},
    {16.0f * -0x1.1p+4f, 16.0f * -0x1.ed47fcp+3f, 16.0f * -0x1.d5b2c4p+3f, 16.0f * -0x1.c62a26p+3f,
     F_INF, F_INF, F_INF, F_INF}};

/* a subnormal, zero or NaN code: U below the normal range, or NaN (rare: the slow path) */
static inline uint32_t dre_code_low(float U, const DreTab *t, const int M) {
    if (U != U) return 0x7Fu;
    uint32_t c = 0;
    for (int j = 0; j < (1 << M); j++) c += U >= t->sub[j];
    return c;
}

/* the FP8 code of x under DRE (exponent k16 = 16 k, log2(amax) l2hi): x's sign, magnitude as above */
static inline __attribute__((always_inline)) uint8_t dre_enc(float x, float k16, float l2hi, const DreTab *t,
                                                            const int M, const int E) {
    uint32_t ux = f2u(x);
    float U = __builtin_fmaf(log2_(u2f(ux & 0x7FFFFFFFu)) - l2hi, k16, t->log2max);
    U = t->log2max < U ? t->log2max : U;  /* y <= fmax; NaN passes */
    uint32_t c;
    if (!(U >= t->min_exp)) {
        c = dre_code_low(U, t, M);
    } else {
        int32_t n = (int32_t)__builtin_floorf(U), b = n & 15;
        c = ((uint32_t)((n >> 4) + E) << M) + (uint32_t)t->base[b] + (U - (float)n >= t->thr[b]);
    }
    return (uint8_t)(c | ((ux >> 24) & 0x80u));
}

#if LANES512
/* log2_ on 16 lanes, op for op (so bit for bit): getexp and getmant are e and m (with 0, inf and NaN as
 * log2_ sets them), and the tables sit in two registers each */
static inline __m512 log2_v(__m512 x) {
    __m512 e = _mm512_getexp_ps(x);
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512i i = _mm512_srli_epi32(_mm512_castps_si512(m), 18);  /* the permutes read its low 5 bits */
    __m512 r = _mm512_permutex2var_ps(_mm512_loadu_ps(LOG2_R), i, _mm512_loadu_ps(LOG2_R + 16));
    __m512 t = _mm512_permutex2var_ps(_mm512_loadu_ps(LOG2_T), i, _mm512_loadu_ps(LOG2_T + 16));
    __m512 z = _mm512_fmadd_ps(m, r, _mm512_set1_ps(-1.0f));
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(LOG2_C4), z, _mm512_set1_ps(LOG2_C3));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(LOG2_C2));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(LOG2_C1));
    return _mm512_add_ps(_mm512_fmadd_ps(z, p, t), e);  /* getexp: -inf at 0, inf, NaN; getmant: 1 at 0 and inf */
}

/* enc8 on 16 lanes, op for op */
static inline __m128i enc8_v(__m512 x, const int M, const int E) {
    __m512i ux = _mm512_castps_si512(x), u = _mm512_and_si512(ux, _mm512_set1_epi32(0x7FFFFFFF));
    const int sh = 23 - M;
    __m512i over = _mm512_set1_epi32(0x7F);
    if (M != 3)
        over = _mm512_mask_mov_epi32(_mm512_set1_epi32(0x7C), _mm512_cmpgt_epu32_mask(u, _mm512_set1_epi32(0x7F800000)), over);
    const __m512 magic = _mm512_castsi512_ps(_mm512_set1_epi32((127 + 1 - E - M + 23) << 23));
    __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(u), magic)),
                                   _mm512_castps_si512(magic));
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, sh), _mm512_set1_epi32(1));
    __m512i nrm = _mm512_add_epi32(u, _mm512_set1_epi32((int32_t)(((uint32_t)(E - 127) << 23) + ((1u << (sh - 1)) - 1u))));
    nrm = _mm512_srli_epi32(_mm512_add_epi32(nrm, odd), sh);
    __m512i r = _mm512_mask_mov_epi32(nrm, _mm512_cmplt_epu32_mask(u, _mm512_set1_epi32((128 - E) << 23)), sub);
    r = _mm512_mask_mov_epi32(r, _mm512_cmpge_epu32_mask(u, _mm512_set1_epi32(M == 3 ? 0x43F00000 : 0x47800000)), over);
    r = _mm512_ternarylogic_epi32(r, _mm512_srli_epi32(ux, 24), _mm512_set1_epi32(0x80), 0xF8);
    return _mm512_cvtepi32_epi8(r);
}

/* dre_enc on 16 lanes */
static inline __m128i dre_enc_v(__m512 x, __m512 k16, __m512 l2hi, const DreTab *t, const int M, const int E) {
    __m512i ux = _mm512_castps_si512(x);
    __m512 a = _mm512_castsi512_ps(_mm512_and_si512(ux, _mm512_set1_epi32(0x7FFFFFFF)));
    __m512 lm = _mm512_set1_ps(t->log2max);
    __m512 U = _mm512_min_ps(lm, _mm512_fmadd_ps(_mm512_sub_ps(log2_v(a), l2hi), k16, lm));  /* NaN passes */
    __m512i n = _mm512_cvt_roundps_epi32(U, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 fr = _mm512_reduce_ps(U, _MM_FROUND_TO_NEG_INF);  /* U - floor(U), exact */
    __m512i j = _mm512_permutexvar_epi32(n, _mm512_add_epi32(_mm512_loadu_si512(t->base), _mm512_set1_epi32(E << M)));
    __mmask16 up = _mm512_cmp_ps_mask(fr, _mm512_permutexvar_ps(n, _mm512_loadu_ps(t->thr)), _CMP_GE_OQ);
    j = _mm512_mask_add_epi32(j, up, j, _mm512_set1_epi32(1));  /* lanes n & 15, plus bias << M */
    __m512i c = _mm512_add_epi32(_mm512_slli_epi32(_mm512_srai_epi32(n, 4), M), j);
    __mmask16 low = _mm512_cmp_ps_mask(U, _mm512_set1_ps(t->min_exp), _CMP_NGE_UQ);
    if (low) {
        float Us[16];
        uint32_t cs[16];
        _mm512_storeu_ps(Us, U);
        _mm512_storeu_si512(cs, c);
        for (int i = 0; i < 16; i++)
            if (low >> i & 1) cs[i] = dre_code_low(Us[i], t, M);
        c = _mm512_loadu_si512(cs);
    }
    /* c | ((ux >> 24) & 0x80) */
    c = _mm512_ternarylogic_epi32(c, _mm512_srli_epi32(ux, 24), _mm512_set1_epi32(0x80), 0xF8);
    return _mm512_cvtepi32_epi8(c);
}
#endif

/* the DRE codes of n values under exponent k, l2hi = log2(amax) */
static inline __attribute__((always_inline)) void dre_encode(const float *restrict x, uint8_t *restrict c, int64_t n,
                                                             const int M, const int E, float k, float l2hi) {
    const DreTab *tab = M == 3 ? &DRE_E4M3 : &DRE_E5M2;
    int64_t i = 0;
#if LANES512
    __m512 kv = _mm512_set1_ps(16.0f * k), lv = _mm512_set1_ps(l2hi);
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(c + i), dre_enc_v(_mm512_loadu_ps(x + i), kv, lv, tab, M, E));
#endif
    for (; i < n; i++) c[i] = dre_enc(x[i], 16.0f * k, l2hi, tab, M, E);
}

/* ---- one moment: decode a block, encode a block ---------------------------------------------------- */
#define FMT_DISPATCH(fmt, ...) do { \
    if ((fmt) == 0) { const int M = E4M3_M, E = E4M3_E; const float FMAX = E4M3_MAX; __VA_ARGS__ } \
    else { const int M = E5M2_M, E = E5M2_E; const float FMAX = E5M2_MAX; __VA_ARGS__ } } while (0)

/* the block-independent half of a decode, per magnitude |c| of a format: log2(|c| / fmax) for DRE, else |c| */
static void moment_table(float *restrict lt, int fmt, int tr) {
    FMT_DISPATCH(fmt, {
        for (int j = 0; j < 128; j++) lt[j] = tr == 2 ? log2_(dec8((uint8_t)j, M, E) / FMAX) : dec8((uint8_t)j, M, E);
    });
}

#if LANES512
/* t[|c|] with the sign of c for 16 codes, as permutes of the table (a gather is slow on many CPUs) */
static inline __m512 lookup16(const uint8_t *c, const float *t) {
    __m512i ci = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    __mmask16 b5 = _mm512_test_epi32_mask(ci, _mm512_set1_epi32(32));
    __mmask16 b6 = _mm512_test_epi32_mask(ci, _mm512_set1_epi32(64));
    __m512 lo = _mm512_mask_blend_ps(b5, _mm512_permutex2var_ps(_mm512_loadu_ps(t), ci, _mm512_loadu_ps(t + 16)),
                                     _mm512_permutex2var_ps(_mm512_loadu_ps(t + 32), ci, _mm512_loadu_ps(t + 48)));
    __m512 hi = _mm512_mask_blend_ps(b5, _mm512_permutex2var_ps(_mm512_loadu_ps(t + 64), ci, _mm512_loadu_ps(t + 80)),
                                     _mm512_permutex2var_ps(_mm512_loadu_ps(t + 96), ci, _mm512_loadu_ps(t + 112)));
    __m512i r = _mm512_castps_si512(_mm512_mask_blend_ps(b6, lo, hi));
    __m512i sg = _mm512_slli_epi32(_mm512_and_si512(ci, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(r, sg));
}
#endif

/* x = t[|c|] with the sign of c (t: the block's 128 decoded magnitudes) */
static void lookup_block(float *restrict x, const uint8_t *restrict c, int64_t B, const float *restrict t) {
    int64_t i = 0;
#if LANES512
    for (; i + 16 <= B; i += 16) _mm512_storeu_ps(x + i, lookup16(c + i, t));
#endif
    for (; i < B; i++) x[i] = u2f(f2u(t[c[i] & 0x7Fu]) | ((uint32_t)(c[i] & 0x80u) << 24));
}

/* (|c| / fmax)^(1/k) for the 128 magnitudes, per format and DRE exponent k. k is a bf16 in [1/16, 16]
 * (optim_codec clamps it): 1025 values, so a table per k, filled on first use and kept (it depends on
 * nothing else), computes the exp2s once per k and thread instead of once per block (the same bits).
 * Per thread, so threads never share an entry being written; allocated on first use (1 MB) and kept
 * for the thread's life. */
#define K_LO 0x3D80u  /* bf16(1/16) */
#define K_HI 0x4180u  /* bf16(16) */
typedef struct {
    uint8_t ready[2][K_HI - K_LO + 1];
    float t[2][K_HI - K_LO + 1][128];
} PowTables;

static const float *pow_table(PowTables *pt, float *restrict scratch, int fmt, uint16_t kbits,
                              const float *restrict lt) {
    float *t = scratch;  /* a k outside the clamp (a state from elsewhere) or no table: computed each time */
    if (pt && kbits >= K_LO && kbits <= K_HI) {
        if (pt->ready[fmt][kbits - K_LO]) return pt->t[fmt][kbits - K_LO];
        t = pt->t[fmt][kbits - K_LO];
    }
    float rk = 1.0f / bf16_to_f32(kbits);  /* eager divides by k: one rounding more here, within the bound */
    for (int j = 0; j < 128; j++) t[j] = exp2_(lt[j] * rk);
    if (t != scratch) pt->ready[fmt][kbits - K_LO] = 1;
    return t;
}

/* The block's 128 decoded magnitudes (plain or DRE; lt: moment_table of the format and transform, pw:
 * pow_table of the block's k). A block holds at most 128 magnitudes: each is decoded once into a table
 * (the arithmetic of one value, so the same bits; the product with s is sign-symmetric), then looked up */
static inline void decode_table(float *restrict t, int tr, float s, const float *restrict pw, const float *restrict lt) {
    if (tr == 2) for (int j = 0; j < 128; j++) t[j] = pw[j] * s;  /* (|c| / fmax)^(1/k) * s */
    else for (int j = 0; j < 128; j++) t[j] = lt[j] * s;
}

static void decode_block(float *restrict x, const uint8_t *restrict c, int64_t B, int fmt, int tr, float s,
                         const float *restrict pw, const float *restrict lt) {
    if (tr == 1) {  /* (c * s)^2: no sign to restore */
        FMT_DISPATCH(fmt, { (void)FMAX; for (int64_t i = 0; i < B; i++) { float y = dec8(c[i], M, E) * s; x[i] = y * y; } });
        return;
    }
    float t[128];
    decode_table(t, tr, s, pw, lt);
    lookup_block(x, c, B, t);
}

/* max of |x| over a block as fp32 bits: non-negative floats order as their bits, and NaN above inf,
 * so NaN propagates as torch's amax does */
static inline uint32_t amax_bits(const float *restrict x, int64_t B) {
    uint32_t am = 0;
    for (int64_t i = 0; i < B; i++) { uint32_t u = f2u(x[i]) & 0x7FFFFFFFu; am = u > am ? u : am; }
    return am;
}

/* smallest nonzero |x| as fp32 bits (zeros and NaN count as inf, as torch.where(a > 0, a, inf) does) */
static inline uint32_t amin_bits(const float *restrict x, int64_t B) {
    uint32_t mn = 0x7F800000u;
    for (int64_t i = 0; i < B; i++) {
        uint32_t u = f2u(x[i]) & 0x7FFFFFFFu;
        u = (u == 0 || u > 0x7F800000u) ? 0x7F800000u : u;
        mn = u < mn ? u : mn;
    }
    return mn;
}

/* the codes, scale (and DRE exponent) of a block whose amax_bits (and, DRE, amin_bits) are am and mn */
static inline void encode_reduced(const float *restrict x, uint8_t *restrict c, int64_t B, int fmt, int tr,
                                  float log2nr, float *scale, uint16_t *kout, uint32_t am, uint32_t mn) {
    float amax = u2f(am);
    FMT_DISPATCH(fmt, {
        if (tr == 2) {
            float amin = u2f(mn);
            /* optim_codec.dre_exponent: log2nr / log2(amax / amin), a Python float over a tensor being
             * reciprocal() * log2nr; then where(amax > 0, k, 1), clamp, bf16 */
            float kf = (1.0f / log2_(amax / amin)) * log2nr;
            kf = amax > 0.0f ? kf : 1.0f;
            kf = kf < 0.0625f ? 0.0625f : kf;
            kf = kf > 16.0f ? 16.0f : kf;
            uint16_t kb = f32_to_bf16(kf);
            float hi = amax < 1e-30f ? 1e-30f : amax;
            /* log2(a / hi) as log2(a) - log2(hi): no division; a = hi still maps to fmax */
            dre_encode(x, c, B, M, E, bf16_to_f32(kb), log2_(hi));
            *scale = hi;
            *kout = kb;
        } else {
            const float s = (amax < 1e-30f ? 1e-30f : amax) / FMAX;
            int64_t i = 0;
#if LANES512
            /* x / s as Markstein's q + (x - q s) / s in fused multiply-adds: correctly rounded, as the
             * division is, for y = 1 / s correctly rounded and s normal (and q never overflows: |x| <= amax) */
            if (s <= 0x1p125f) {  /* not inf or NaN (a block holding one): those divide */
                const __m512 sv = _mm512_set1_ps(s), y = _mm512_set1_ps(1.0f / s), hi = _mm512_set1_ps(FMAX),
                             lo = _mm512_set1_ps(-FMAX);
                for (; i + 16 <= B; i += 16) {
                    __m512 xv = _mm512_loadu_ps(x + i), qv = _mm512_mul_ps(xv, y);
                    qv = _mm512_fmadd_ps(_mm512_fnmadd_ps(qv, sv, xv), y, qv);
                    qv = _mm512_max_ps(lo, _mm512_min_ps(hi, qv));  /* NaN passes both, as below */
                    _mm_storeu_si128((__m128i *)(c + i), enc8_v(qv, M, E));
                }
            }
#endif
            for (; i < B; i++) {
                float q = x[i] / s;
                q = q > FMAX ? FMAX : q;
                q = q < -FMAX ? -FMAX : q;
                c[i] = enc8(q, M, E);
            }
            *scale = s;
        }
    });
}

static void encode_block(float *restrict x, uint8_t *restrict c, int64_t B, int fmt, int tr, float log2nr,
                         float *scale, uint16_t *kout) {
    if (tr == 1)  /* sqrt: store sqrt(max(v, 0)) */
        for (int64_t i = 0; i < B; i++) { float y = x[i] < 0.0f ? 0.0f : x[i]; x[i] = __builtin_sqrtf(y); }
    encode_reduced(x, c, B, fmt, tr, log2nr, scale, kout, amax_bits(x, B), tr == 2 ? amin_bits(x, B) : 0);
}

/* ---- the step ------------------------------------------------------------------------------------- */
static inline uint32_t hash32(uint32_t x) {
    x = ((x >> 16) ^ x) * 0x45D9F3Bu;
    x = ((x >> 16) ^ x) * 0x45D9F3Bu;
    return (x >> 16) ^ x;
}

static void load_block(float *restrict x, const void *src, int bf16, int64_t e0, int64_t nv, int64_t B) {
    if (bf16) {
        const uint16_t *s = (const uint16_t *)src + e0;
        for (int64_t i = 0; i < nv; i++) x[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(x, (const float *)src + e0, (size_t)nv * 4);
    }
    for (int64_t i = nv; i < B; i++) x[i] = 0.0f;  /* the reference pads the last block with zeros */
}

#if LANES512
/* the update's scalars on 16 lanes */
typedef struct { __m512 b1c, b1c_m1, b2, b2c, decay, bc2, ybc2, eps, step; } Lanes;

static inline Lanes lanes(float b1c, float b1c_m1, float b2, float b2c, float decay, float bc2, float eps, float step) {
    Lanes L = {_mm512_set1_ps(b1c), _mm512_set1_ps(b1c_m1), _mm512_set1_ps(b2), _mm512_set1_ps(b2c),
               _mm512_set1_ps(decay), _mm512_set1_ps(bc2), _mm512_set1_ps(1.0f / bc2), _mm512_set1_ps(eps),
               _mm512_set1_ps(step)};
    return L;
}

/* (step m) / (sqrt(v) / bc2 + eps) with the two divisions off the divider (the step's slowest unit): a / b
 * as q = a y, then q + (a - q b) y in fused multiply-adds (Markstein), which is a / b correctly rounded
 * where y is 1 / b correctly rounded (so sqrt(v) / bc2 is exact: y a scalar division once; bc2 is checked
 * to be normal by the caller) and, for the per-value divisor, where y (rcp14 and a Newton step, within
 * about an ulp) is close enough, which fails only where a / b lies within ~2^-28 relative of a rounding
 * midpoint (none in 3.2e8 random quotients). Divisors outside [2^-125, 2^125] (0, inf, NaN) divide. */
static inline __m512 adam_delta16(__m512 vi, __m512 mi, const Lanes *L) {
    __m512 sq = _mm512_sqrt_ps(vi);
    __m512 q = _mm512_mul_ps(sq, L->ybc2);
    q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, L->bc2, sq), L->ybc2, q);
    __m512 den = _mm512_add_ps(q, L->eps);
    __m512 num = _mm512_mul_ps(L->step, mi);
    __m512 y = _mm512_rcp14_ps(den);
    y = _mm512_fmadd_ps(_mm512_fnmadd_ps(den, y, _mm512_set1_ps(1.0f)), y, y);
    q = _mm512_mul_ps(num, y);
    q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, den, num), y, q);
    __mmask16 small = _mm512_cmp_ps_mask(den, _mm512_set1_ps(0x1p-125f), _CMP_NGE_UQ),
              big = _mm512_cmp_ps_mask(den, _mm512_set1_ps(0x1p125f), _CMP_NLE_UQ);
    if (!_kortestz_mask16_u8(small, big)) q = _mm512_mask_div_ps(q, _kor_mask16(small, big), num, den);
    return q;
}

static inline __m512 bf16x16(const uint16_t *h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)h)), 16));
}

/* One full block in one pass of 16 lanes: load the gradient and the weight, look up m and v in their
 * decode tables tm and tv, lerp, addcmul, addcdiv, keep m, v and w (fp32) for the encode, and reduce
 * |m| and |v| to their amax (and amin, for DRE) bits on the way: red = {max m, min m, max v, min v}. */
static void fused_block(const Args *a, int64_t e0, const float *restrict tm, const float *restrict tv,
                        float *restrict m, float *restrict v, float *restrict w, uint32_t red[4], const Lanes *L) {
    const int64_t B = a->block;
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
    __m512i mxm = _mm512_setzero_si512(), mxv = mxm, mnm = inf, mnv = inf;
    for (int64_t i = 0; i < B; i += 16) {
        __m512 gi = a->g_bf16 ? bf16x16((const uint16_t *)a->g + e0 + i) : _mm512_loadu_ps((const float *)a->g + e0 + i);
        __m512 wi = a->master ? _mm512_loadu_ps(a->master + e0 + i)
                    : a->p_bf16 ? bf16x16((const uint16_t *)a->p + e0 + i) : _mm512_loadu_ps((const float *)a->p + e0 + i);
        __m512 mi = lookup16(a->mc + e0 + i, tm), vi = lookup16(a->vc + e0 + i, tv);
        mi = a->lerp_hi ? _mm512_fmadd_ps(L->b1c_m1, _mm512_sub_ps(gi, mi), gi)
                        : _mm512_fmadd_ps(L->b1c, _mm512_sub_ps(gi, mi), mi);
        vi = _mm512_fmadd_ps(_mm512_mul_ps(L->b2c, gi), gi, _mm512_mul_ps(vi, L->b2));
        wi = _mm512_add_ps(_mm512_mul_ps(wi, L->decay), adam_delta16(vi, mi, L));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(w + i, wi);
        __m512i um = _mm512_and_si512(_mm512_castps_si512(mi), absm), uv = _mm512_and_si512(_mm512_castps_si512(vi), absm);
        mxm = _mm512_max_epu32(mxm, um);
        mxv = _mm512_max_epu32(mxv, uv);
        if (a->m_tr == 2)  /* amin_bits: zeros and NaN count as inf */
            mnm = _mm512_min_epu32(mnm, _mm512_mask_mov_epi32(um, _mm512_cmpeq_epi32_mask(um, _mm512_setzero_si512()) |
                                                                  _mm512_cmpgt_epu32_mask(um, inf), inf));
        if (a->v_tr == 2)
            mnv = _mm512_min_epu32(mnv, _mm512_mask_mov_epi32(uv, _mm512_cmpeq_epi32_mask(uv, _mm512_setzero_si512()) |
                                                                  _mm512_cmpgt_epu32_mask(uv, inf), inf));
    }
    red[0] = _mm512_reduce_max_epu32(mxm);
    red[1] = _mm512_reduce_min_epu32(mnm);
    red[2] = _mm512_reduce_max_epu32(mxv);
    red[3] = _mm512_reduce_min_epu32(mnv);
}
#endif

/* the updated fp32 weights of a block into the master copy and the parameter */
static inline void store_weights(const Args *a, const float *restrict w, int64_t e0, int64_t nv) {
    if (a->master) memcpy(a->master + e0, w, (size_t)nv * 4);
    if (!a->p_bf16) {
        memcpy((float *)a->p + e0, w, (size_t)nv * 4);
    } else if (a->stochastic) {
        /* round_bf16_stochastic: add the low 16 bits of hash32(index ^ salt), keep the high 16 */
        uint16_t *p = (uint16_t *)a->p + e0;
        const uint32_t salt = a->salt, base = (uint32_t)e0;
        for (int64_t i = 0; i < nv; i++) {
            uint32_t h = hash32((base + (uint32_t)i) ^ salt) & 0xFFFFu;
            p[i] = (uint16_t)((f2u(w[i]) + h) >> 16);
        }
    } else {
        uint16_t *p = (uint16_t *)a->p + e0;
        for (int64_t i = 0; i < nv; i++) p[i] = f32_to_bf16(w[i]);
    }
}

/* addcmul, then addcdiv: v = v b2 + (b2c g) g; w = w decay + (step m) / (sqrt(v) / bc2 + eps) */
static inline void update_block(float *restrict w, const float *restrict m, float *restrict v, const float *restrict g,
                                int64_t B, float b2, float b2c, float decay, float bc2, float eps, float step) {
    int64_t i = 0;
#if LANES512
    if (bc2 >= 0x1p-125f && bc2 <= 0x1p125f) {  /* adam_delta16's scalar reciprocal is exact */
        const Lanes L = lanes(0.0f, 0.0f, b2, b2c, decay, bc2, eps, step);
        for (; i + 16 <= B; i += 16) {
            __m512 gi = _mm512_loadu_ps(g + i);
            __m512 vi = _mm512_fmadd_ps(_mm512_mul_ps(L.b2c, gi), gi, _mm512_mul_ps(_mm512_loadu_ps(v + i), L.b2));
            _mm512_storeu_ps(v + i, vi);
            __m512 q = adam_delta16(vi, _mm512_loadu_ps(m + i), &L);
            _mm512_storeu_ps(w + i, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(w + i), L.decay), q));
        }
    }
#endif
    for (; i < B; i++) {
        v[i] = __builtin_fmaf(b2c * g[i], g[i], v[i] * b2);
        float den = __builtin_sqrtf(v[i]) / bc2 + eps;
        w[i] = w[i] * decay + (step * m[i]) / den;
    }
}

int fp8_adamw_blocks(const Args *a) {
    const int64_t B = a->block;
    if (B < 1 || B > MAX_BLOCK) return 1;
    float g[MAX_BLOCK], w[MAX_BLOCK], m[MAX_BLOCK], v[MAX_BLOCK];
    const float b1c = a->b1c, b1c_m1 = a->b1c_m1, b2 = a->b2, b2c = a->b2c, decay = a->decay,
                bc2 = a->bc2_sqrt, eps = a->eps, step = a->step_size;
    float mlt[128], vlt[128];
    static __thread PowTables *pt;
    if (!pt && (a->m_tr == 2 || a->v_tr == 2)) pt = calloc(1, sizeof *pt);  /* NULL: every block computes */
    float scratch_m[128], scratch_v[128];
    moment_table(mlt, a->m_fmt, a->m_tr);
    moment_table(vlt, a->v_fmt, a->v_tr);
#if LANES512
    /* full blocks of plain or DRE moments take one fused pass (the partial last block, sqrt and an
     * abnormal bc2 take the loops below) */
    const int fusable = B % 16 == 0 && a->m_tr != 1 && a->v_tr != 1 && bc2 >= 0x1p-125f && bc2 <= 0x1p125f;
    const Lanes L = lanes(b1c, b1c_m1, b2, b2c, decay, bc2, eps, step);
#endif
    for (int64_t b = a->b0; b < a->b1; b++) {
        const int64_t e0 = b * B, nv = a->n - e0 < B ? a->n - e0 : B;
        const float *pm = a->m_tr == 2 ? pow_table(pt, scratch_m, a->m_fmt, a->mk[b], mlt) : NULL,
                    *pv = a->v_tr == 2 ? pow_table(pt, scratch_v, a->v_fmt, a->vk[b], vlt) : NULL;
#if LANES512
        if (fusable && nv == B) {
            float tm[128], tv[128];
            uint32_t red[4];
            decode_table(tm, a->m_tr, a->ms[b], pm, mlt);
            decode_table(tv, a->v_tr, a->vs[b], pv, vlt);
            fused_block(a, e0, tm, tv, m, v, w, red, &L);
            encode_reduced(m, a->mc + e0, B, a->m_fmt, a->m_tr, a->m_log2nr, a->ms + b, a->mk ? a->mk + b : NULL,
                           red[0], red[1]);
            encode_reduced(v, a->vc + e0, B, a->v_fmt, a->v_tr, a->v_log2nr, a->vs + b, a->vk ? a->vk + b : NULL,
                           red[2], red[3]);
            store_weights(a, w, e0, nv);
            continue;
        }
#endif
        load_block(g, a->g, a->g_bf16, e0, nv, B);
        if (a->master) load_block(w, a->master, 0, e0, nv, B);
        else load_block(w, a->p, a->p_bf16, e0, nv, B);
        decode_block(m, a->mc + e0, B, a->m_fmt, a->m_tr, a->ms[b], pm, mlt);
        decode_block(v, a->vc + e0, B, a->v_fmt, a->v_tr, a->vs[b], pv, vlt);
        /* adamw_update_: lerp as fma(w, end - start, start) (or fma(w - 1, end - start, end) for w >= 0.5),
         * addcmul as fma(value * t1, t2, self), addcdiv as self + (value * t1) / t2 */
        if (a->lerp_hi) for (int64_t i = 0; i < B; i++) m[i] = __builtin_fmaf(b1c_m1, g[i] - m[i], g[i]);
        else for (int64_t i = 0; i < B; i++) m[i] = __builtin_fmaf(b1c, g[i] - m[i], m[i]);
        update_block(w, m, v, g, B, b2, b2c, decay, bc2, eps, step);
        encode_block(m, a->mc + e0, B, a->m_fmt, a->m_tr, a->m_log2nr, a->ms + b, a->mk ? a->mk + b : NULL);
        encode_block(v, a->vc + e0, B, a->v_fmt, a->v_tr, a->v_log2nr, a->vs + b, a->vk ? a->vk + b : NULL);
        store_weights(a, w, e0, nv);
    }
    return 0;
}

/* which path this build took: 512 for the AVX-512 lanes, 0 for the portable loops */
int fp8_adamw_simd(void) {
#if LANES512
    return 512;
#else
    return 0;
#endif
}

/* ---- for the tests: the kernel's log2 and DRE encode on their own ---------------------------------- */
void fp8_log2(const float *x, float *y, int64_t n) {
    int64_t i = 0;
#if LANES512
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, log2_v(_mm512_loadu_ps(x + i)));
#endif
    for (; i < n; i++) y[i] = log2_(x[i]);
}

void fp8_dre_encode(const float *x, uint8_t *c, int64_t n, int32_t fmt, float k, float l2hi) {
    if (fmt == 0) dre_encode(x, c, n, E4M3_M, E4M3_E, k, l2hi);
    else dre_encode(x, c, n, E5M2_M, E5M2_E, k, l2hi);
}
