/* FP8-state AdamW step on the CPU in one pass per block (``methods/fp8/optim_native.py`` builds and calls it).
 *
 * Per block of B values: the gradient, the weight (or master copy) and the FP8 codes of m and v are read
 * once into four fp32 arrays on the stack (4 x B x 4 bytes, L1-sized), decoded, updated, reduced
 * (per-block amax, and amin for DRE), encoded and written back once. Every loop is a plain loop over the
 * block that the compiler vectorises (-O3 -march=native); there are no library calls in them.
 *
 * The arithmetic is the reference's (``FP8AdamW(impl="torch")``: ``optim_codec.decode``,
 * ``adamw_base.adamw_update_``, ``optim_codec.encode``, ``round_bf16_stochastic``) op for op and in fp32,
 * with the same rounding order (lerp and addcmul as the eager CPU kernels' fused multiply-adds), the same
 * FP8 and bf16 casts (round to nearest even, c10's bit recipes) and the same hash. The one difference,
 * DRE only: log2 and exp2 are the polynomials below (explicit fused multiply-adds, no division; within
 * ~2 fp32 ulps) where eager calls SLEEF or MKL, the decode divides by k as a multiply by 1/k through a
 * per-block table of the 128 magnitudes, and the encode takes log2(a / amax) as log2(a) - log2(amax).
 * Compiled with -ffp-contract=off, so no other multiply-add is fused behind the reference's back.
 */
#include <stdint.h>
#include <string.h>

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
/* log2(x), x >= 0: x = 2^e * m with m in [sqrt(1/2), sqrt(2)); log2(m) = z P(z), z = m - 1, P a degree-8
 * polynomial fitted to log2(1 + z) / z on that interval (max error 5e-8 absolute, 1.1e-7 relative), in
 * fused multiply-adds and with no division. log2(0) = -inf. */
static inline __attribute__((always_inline)) float log2_(float x) {
    uint32_t u = f2u(x);
    int sub = u < 0x00800000u;  /* zero or subnormal: rescale by 2^23 first */
    float xs = sub ? x * 8388608.0f : x;
    uint32_t v = f2u(xs);
    int32_t e = (int32_t)(v >> 23) - 127 - (sub ? 23 : 0);
    float m = u2f((v & 0x007FFFFFu) | 0x3F800000u);
    int hi = m > 1.41421356f;
    m = hi ? m * 0.5f : m;
    e += hi;
    float z = m - 1.0f;
    float s = 1.143633765e-01f;
    s = __builtin_fmaf(s, z, -1.992531805e-01f);
    s = __builtin_fmaf(s, z, 2.160341789e-01f);
    s = __builtin_fmaf(s, z, -2.400252512e-01f);
    s = __builtin_fmaf(s, z, 2.880050734e-01f);
    s = __builtin_fmaf(s, z, -3.606629928e-01f);
    s = __builtin_fmaf(s, z, 4.809069142e-01f);
    s = __builtin_fmaf(s, z, -7.213477183e-01f);
    s = __builtin_fmaf(s, z, 1.442695021e+00f);
    float r = __builtin_fmaf(z, s, (float)e);
    r = x == 0.0f ? -__builtin_inff() : r;
    r = (x != x || x == __builtin_inff()) ? x : r;
    return r;
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

/* ---- one moment: decode a block, encode a block ---------------------------------------------------- */
#define FMT_DISPATCH(fmt, ...) do { \
    if ((fmt) == 0) { const int M = E4M3_M, E = E4M3_E; const float FMAX = E4M3_MAX; __VA_ARGS__ } \
    else { const int M = E5M2_M, E = E5M2_E; const float FMAX = E5M2_MAX; __VA_ARGS__ } } while (0)

/* log2(|c| / fmax) of the 128 magnitudes of a format, the block-independent half of a DRE decode */
static void dre_log2_table(float *restrict lt, int fmt) {
    FMT_DISPATCH(fmt, { for (int j = 0; j < 128; j++) lt[j] = log2_(dec8((uint8_t)j, M, E) / FMAX); });
}

/* lt: dre_log2_table of the format (DRE only) */
static void decode_block(float *restrict x, const uint8_t *restrict c, int64_t B, int fmt, int tr, float s, float k,
                         const float *restrict lt) {
    FMT_DISPATCH(fmt, {
        if (tr == 2) {
            /* (|c| / fmax)^(1/k) * s with the sign of c. A block holds at most 128 magnitudes: evaluate
             * each once into a table (the same arithmetic as per value, so the same bits), then look up */
            float t[128], rk = 1.0f / k;  /* eager divides by k: one rounding more here, within the bound */
            for (int j = 0; j < 128; j++) t[j] = exp2_(lt[j] * rk) * s;
            for (int64_t i = 0; i < B; i++)
                x[i] = u2f(f2u(t[c[i] & 0x7Fu]) | ((uint32_t)(c[i] & 0x80u) << 24));
        } else if (tr == 1) {
            for (int64_t i = 0; i < B; i++) { float y = dec8(c[i], M, E) * s; x[i] = y * y; }
        } else {
            for (int64_t i = 0; i < B; i++) x[i] = dec8(c[i], M, E) * s;
        }
    });
}

/* max of |x| over a block as fp32 bits: non-negative floats order as their bits, and NaN above inf,
 * so NaN propagates as torch's amax does */
static inline uint32_t amax_bits(const float *restrict x, int64_t B) {
    uint32_t am = 0;
    for (int64_t i = 0; i < B; i++) { uint32_t u = f2u(x[i]) & 0x7FFFFFFFu; am = u > am ? u : am; }
    return am;
}

static void encode_block(float *restrict x, uint8_t *restrict c, int64_t B, int fmt, int tr, float log2nr,
                         float *scale, uint16_t *kout) {
    if (tr == 1)  /* sqrt: store sqrt(max(v, 0)) */
        for (int64_t i = 0; i < B; i++) { float y = x[i] < 0.0f ? 0.0f : x[i]; x[i] = __builtin_sqrtf(y); }
    float amax = u2f(amax_bits(x, B));
    FMT_DISPATCH(fmt, {
        if (tr == 2) {
            /* smallest nonzero |x| (zeros and NaN count as inf, as torch.where(a > 0, a, inf) does) */
            uint32_t mn = 0x7F800000u;
            for (int64_t i = 0; i < B; i++) {
                uint32_t u = f2u(x[i]) & 0x7FFFFFFFu;
                u = (u == 0 || u > 0x7F800000u) ? 0x7F800000u : u;
                mn = u < mn ? u : mn;
            }
            float amin = u2f(mn);
            /* optim_codec.dre_exponent: log2nr / log2(amax / amin), a Python float over a tensor being
             * reciprocal() * log2nr; then where(amax > 0, k, 1), clamp, bf16 */
            float kf = (1.0f / log2_(amax / amin)) * log2nr;
            kf = amax > 0.0f ? kf : 1.0f;
            kf = kf < 0.0625f ? 0.0625f : kf;
            kf = kf > 16.0f ? 16.0f : kf;
            uint16_t kb = f32_to_bf16(kf);
            float k = bf16_to_f32(kb), hi = amax < 1e-30f ? 1e-30f : amax, l2hi = log2_(hi);
            for (int64_t i = 0; i < B; i++) {
                uint32_t u = f2u(x[i]);
                float a = u2f(u & 0x7FFFFFFFu);
                /* log2(a / hi) as log2(a) - log2(hi): no division, a = hi still maps to fmax exactly */
                float y = exp2_((log2_(a) - l2hi) * k) * FMAX;
                y = y > FMAX ? FMAX : y;
                c[i] = enc8(u2f(f2u(y) | (u & 0x80000000u)), M, E);
            }
            *scale = hi;
            *kout = kb;
        } else {
            float s = (amax < 1e-30f ? 1e-30f : amax) / FMAX;
            for (int64_t i = 0; i < B; i++) {
                float q = x[i] / s;
                q = q > FMAX ? FMAX : q;
                q = q < -FMAX ? -FMAX : q;
                c[i] = enc8(q, M, E);
            }
            *scale = s;
        }
    });
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

int fp8_adamw_blocks(const Args *a) {
    const int64_t B = a->block;
    if (B < 1 || B > MAX_BLOCK) return 1;
    float g[MAX_BLOCK], w[MAX_BLOCK], m[MAX_BLOCK], v[MAX_BLOCK];
    const float b1c = a->b1c, b1c_m1 = a->b1c_m1, b2 = a->b2, b2c = a->b2c, decay = a->decay,
                bc2 = a->bc2_sqrt, eps = a->eps, step = a->step_size;
    float mlt[128], vlt[128];
    if (a->m_tr == 2) dre_log2_table(mlt, a->m_fmt);
    if (a->v_tr == 2) dre_log2_table(vlt, a->v_fmt);
    for (int64_t b = a->b0; b < a->b1; b++) {
        const int64_t e0 = b * B, nv = a->n - e0 < B ? a->n - e0 : B;
        load_block(g, a->g, a->g_bf16, e0, nv, B);
        if (a->master) load_block(w, a->master, 0, e0, nv, B);
        else load_block(w, a->p, a->p_bf16, e0, nv, B);
        decode_block(m, a->mc + e0, B, a->m_fmt, a->m_tr, a->ms[b], a->mk ? bf16_to_f32(a->mk[b]) : 1.0f, mlt);
        decode_block(v, a->vc + e0, B, a->v_fmt, a->v_tr, a->vs[b], a->vk ? bf16_to_f32(a->vk[b]) : 1.0f, vlt);
        /* adamw_update_: lerp as fma(w, end - start, start) (or fma(w - 1, end - start, end) for w >= 0.5),
         * addcmul as fma(value * t1, t2, self), addcdiv as self + (value * t1) / t2 */
        if (a->lerp_hi) for (int64_t i = 0; i < B; i++) m[i] = __builtin_fmaf(b1c_m1, g[i] - m[i], g[i]);
        else for (int64_t i = 0; i < B; i++) m[i] = __builtin_fmaf(b1c, g[i] - m[i], m[i]);
        for (int64_t i = 0; i < B; i++) {
            v[i] = __builtin_fmaf(b2c * g[i], g[i], v[i] * b2);
            float den = __builtin_sqrtf(v[i]) / bc2 + eps;
            w[i] = w[i] * decay + (step * m[i]) / den;
        }
        encode_block(m, a->mc + e0, B, a->m_fmt, a->m_tr, a->m_log2nr, a->ms + b, a->mk ? a->mk + b : NULL);
        encode_block(v, a->vc + e0, B, a->v_fmt, a->v_tr, a->v_log2nr, a->vs + b, a->vk ? a->vk + b : NULL);
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
    return 0;
}
