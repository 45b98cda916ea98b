/* The crossbar's fused write (targets/crossbar/native.py builds and loads it; docs/crossbar.md, "Speed").
 *
 * One pass per polarity does what PairArray._respond does in 20-30 tensor passes: each device's response to its
 * pulses, cycle-to-cycle noise, bounds, saturation count, write noise, pulse count and write time, reading the
 * per-device constants and conductances in place instead of gathering and scattering them.
 *
 * Two numerics (crossbar.numerics). "torch": the same float32 operations in the same order as the torch path (built
 * with -ffp-contract=off, never -ffast-math), so the numbers are bit for bit the same; the caller draws the random
 * numbers from the target's torch generator in the tensor path's order, and exp, expm1 and log stay with torch,
 * whose vectorised versions may differ from libm's in the last bit (xb_soft_arg and xb_exp_args compute their
 * arguments into buffers that torch transforms in place). "native": the kernel draws the random numbers itself
 * (xb_round's uniforms, xb_finish's normals, the reads' normals through xb_normals) from 16 xoshiro128+ generators
 * side by side (Blackman & Vigna 2018), seeded by SplitMix64 from one 64-bit seed that the caller draws from the
 * torch generator per write or read, so a run stays reproducible from its seed and its checkpoints; normals come
 * from the Box-Muller transform; log, exp, expm1, sine and cosine are this file's own series (within 2 float32
 * ulps), so that every loop vectorises and the transcendentals are computed in the write's one pass.
 *
 * Every loop is written to vectorise: each case (model, layout, pair, which noises, drift) is its own loop,
 * selections are computed rather than branched on, and every value is an array (native.py expands shared ones).
 *
 * Layouts: DENSE writes every device; SPARSE the devices idx[j] of entries j, whose counts, requests, noises and
 * transcendentals are per entry; MASKED the same devices (those with a count), but counts and requests are per
 * device, the arguments are computed for every device (as DENSE) and xb_compact gathers the entries' for torch,
 * and xb_finish runs over every device once xb_expand has put the per-entry values at their devices: contiguous
 * loads and stores cost less than gathers and scatters (slow on this CPU) when many devices get pulses.
 */
#include <math.h>
#include <stdint.h>

/* XB_SOFT_NATIVE and XB_EXP_NATIVE: the same models with the kernel's own expm1, exp and log (numerics = "native"),
 * computed in xb_finish's pass instead of by torch between passes. */
enum { XB_CONSTANT = 0, XB_SOFT_BOUNDS = 1, XB_EXPONENTIAL = 2, XB_SOFT_NATIVE = 3, XB_EXP_NATIVE = 4 };
enum { XB_DENSE = 0, XB_SPARSE = 1, XB_MASKED = 2 };

typedef struct {
    int64_t k;              /* entries of the write */
    int64_t numel;          /* devices of the array */
    int layout;             /* XB_DENSE, XB_SPARSE or XB_MASKED */
    const int64_t *idx;     /* the device of each entry (NULL: DENSE) */
    float *g;               /* per device: conductance, updated in place */
    const float *n;         /* per entry (per device if MASKED): the weight's pulse count */
    const float *d;         /* likewise: the weight's requested change, whose sign is the direction */
    float polarity;         /* +1: the pair's positive devices, -1: its negative ones */
    int one_sided;          /* 0: a differential pair, whose devices both get the count, up on one, down on the
                               other; 1: a one-sided pair, whose device of the change's sign goes up */
    float dw;               /* the nominal step */
    const float *gain_up, *gain_down; /* per device: step relative to dw_min, per direction */
    const float *clip_lo, *clip_hi;   /* per device: bounds (a stuck device's stuck value) */
    const float *free_;     /* per device: 1, 0 for a stuck device */
    int model;
    const float *a_up, *a_down, *b_up, *b_down; /* soft bounds: target, rate; exponential: mid, half */
    float gamma_up, gamma_down;
    float *work;            /* per entry: the transcendental's argument, then its result (per device for
                               xb_finish if MASKED) */
    float *term;            /* per entry: exponential step, what torch adds to exp(...) before the log */
    const float *c2c_normal;   /* per entry (likewise): standard normal of the cycle-to-cycle noise (NULL: none) */
    float c2c_std;
    const float *write_normal; /* per entry (likewise): standard normal of the write noise (NULL: none) */
    float write_std;
    float *offset;          /* per device: write noise seen by reads */
    float *pulses;          /* per device: pulses received */
    float *written_at;      /* per device: time of the last write (NULL: no drift) */
    float now;
    uint64_t seed;          /* numerics = "native": the seed of this polarity's normals */
    int draw_c2c, draw_write; /* numerics = "native": the kernel draws the cycle-to-cycle / write noise's normals */
} xb_write;

#define INLINE static inline __attribute__((always_inline))

/* yes where up != 0, no elsewhere, by masking bits: scalar code would branch on a ternary, and directions are
 * random, so the branch would be mispredicted half the time. */
INLINE float choose(float up, float yes, float no) {
    union { float f; uint32_t u; } a = {yes}, b = {no};
    uint32_t mask = -(uint32_t)(up != 0.0f);
    a.u = (a.u & mask) | (b.u & ~mask);
    return a.f;
}

/* ---- The kernel's own random numbers (numerics = "native") ---- */

enum { XB_LANES = 16, XB_CHUNK = 2048 }; /* generators side by side; values drawn ahead per block of a loop */

typedef struct {
    uint32_t s0[XB_LANES], s1[XB_LANES], s2[XB_LANES], s3[XB_LANES];
} xb_random;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void seed_random(xb_random *r, uint64_t seed) {
    uint64_t x = seed;
    for (int l = 0; l < XB_LANES; l++) {
        uint64_t a = splitmix64(&x), b = splitmix64(&x);
        r->s0[l] = (uint32_t)a | (a == 0 && b == 0); /* xoshiro's state must not be all zero */
        r->s1[l] = (uint32_t)(a >> 32);
        r->s2[l] = (uint32_t)b;
        r->s3[l] = (uint32_t)(b >> 32);
    }
}

/* [0, 1) and (0, 1] from the top 24 bits (the int32 conversion vectorises where an unsigned one may not). */
INLINE float unit(uint32_t x) { return (float)(int32_t)(x >> 8) * 0x1p-24f; }
INLINE float open_unit(uint32_t x) { return (float)(int32_t)((x >> 8) + 1) * 0x1p-24f; }

/* One step of xoshiro128+ for lane l of the state s0..s3; returns its output (the top bits are used, its best). */
INLINE uint32_t step(uint32_t *restrict s0, uint32_t *restrict s1, uint32_t *restrict s2, uint32_t *restrict s3,
                     int l) {
    uint32_t a = s0[l], b = s1[l], c = s2[l], d = s3[l];
    uint32_t out = a + d, t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    s0[l] = a, s1[l] = b, s2[l] = c, s3[l] = (d << 11) | (d >> 21);
    return out;
}

/* ln u for a normal u > 0: u = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m - 1) / (m + 1), by
 * its series to s^11 (|s| < 0.172: the rest is below 1e-9). */
INLINE float log_positive(float u) {
    union { float f; int32_t i; } v = {u};
    int32_t i = v.i - 0x3f3504f3, e = i >> 23;
    v.i = (i & 0x007fffff) + 0x3f3504f3;
    float s = (v.f - 1.0f) / (v.f + 1.0f), s2 = s * s;
    float p = 1.0f / 9 + s2 * (1.0f / 11);
    p = 1.0f / 7 + s2 * p;
    p = 1.0f / 5 + s2 * p;
    p = 1.0f / 3 + s2 * p;
    p = 1.0f + s2 * p;
    return (float)e * 0.693147181f + 2.0f * s * p;
}

/* (e^x - 1) / x by its Taylor series to x^7: e^x - 1 = x S(x) to x^8. */
INLINE float exp_series(float x) {
    float p = 1.0f / 40320;
    p = 1.0f / 5040 + x * p;
    p = 1.0f / 720 + x * p;
    p = 1.0f / 120 + x * p;
    p = 1.0f / 24 + x * p;
    p = 1.0f / 6 + x * p;
    p = 0.5f + x * p;
    return 1.0f + x * p;
}

/* e^x: x = k ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so that k ln 2 is exact), e^r = 1 + r S(r) (the rest
 * is below 7e-10), times 2^k put into the exponent bits; x is held within [-87, 88], where 2^k is a normal float. */
INLINE float exp_native(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* k = x / ln 2 to the nearest whole number, by adding 1.5 x 2^23 (whose last place is 1), which also leaves k in
     * the sum's low bits (no float-to-int conversion: after a select it would not vectorise) */
    union { float f; int32_t i; } sum = {x * 1.44269504f + 12582912.0f};
    float k = sum.f - 12582912.0f;
    float r = x - k * 0.693145752f - k * 1.42860677e-6f;
    union { int32_t i; float f; } scale = {(sum.i - 0x4B400000 + 127) << 23};
    return (1.0f + r * exp_series(r)) * scale.f;
}

/* e^x - 1: x S(x) for |x| < 0.35 (relative error below 1e-9, where e^x - 1 would lose digits), e^x - 1 elsewhere. */
INLINE float expm1_native(float x) {
    float small = x * exp_series(x), large = exp_native(x) - 1.0f;
    return fabsf(x) < 0.35f ? small : large;
}

/* floor(v) for v >= 0 (floats from 2^23 up are whole; below, truncation is the floor): unlike floorf, this
 * vectorises without -fno-trapping-math. */
INLINE float floor_nonnegative(float v) {
    float small = v < 0x1p23f ? v : 0x1p23f; /* converted unconditionally: a branch would not vectorise */
    float whole = (float)(int32_t)small;
    return v < 0x1p23f ? whole : v;
}

/* sin and cos of 2 pi t for t in [0, 1): a quarter turn q plus x in [-pi/4, pi/4], whose Taylor series to x^9 and
 * x^10 leave less than 2e-9. */
typedef struct {
    float sine, cosine;
} xb_turn;

INLINE xb_turn sincos_turn(float t) {
    float q = (float)(int32_t)(4.0f * t + 0.5f); /* the nearest quarter, 0 to 4 */
    float x = 6.28318531f * (t - 0.25f * q), x2 = x * x;
    float sn = x * (1.0f + x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (1.0f / 362880)))));
    float cs = 1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320 + x2 * (-1.0f / 3628800)))));
    int quarter = (int)q & 3; /* sin(x + q pi/2): sn, cs, -sn, -cs; cos: cs, -sn, -cs, sn */
    float odd = (float)(quarter & 1);
    float s = odd * cs + (1.0f - odd) * sn, c = odd * sn + (1.0f - odd) * cs;
    return (xb_turn){s * (float)(1 - 2 * ((quarter >> 1) & 1)), c * (float)(1 - 2 * (((quarter + 1) >> 1) & 1))};
}

/* XB_CHUNK uniforms in [0, 1). */
static void chunk_uniforms(xb_random *r, float *restrict u) {
    uint32_t s0[XB_LANES], s1[XB_LANES], s2[XB_LANES], s3[XB_LANES];
    for (int l = 0; l < XB_LANES; l++)
        s0[l] = r->s0[l], s1[l] = r->s1[l], s2[l] = r->s2[l], s3[l] = r->s3[l];
    for (int j = 0; j < XB_CHUNK; j += XB_LANES)
        for (int l = 0; l < XB_LANES; l++)
            u[j + l] = unit(step(s0, s1, s2, s3, l));
    for (int l = 0; l < XB_LANES; l++)
        r->s0[l] = s0[l], r->s1[l] = s1[l], r->s2[l] = s2[l], r->s3[l] = s3[l];
}

/* XB_CHUNK pairs of independent standard normals (Box-Muller). */
static void chunk_normals(xb_random *r, float *restrict a, float *restrict b) {
    float u1[XB_CHUNK], u2[XB_CHUNK];
    uint32_t s0[XB_LANES], s1[XB_LANES], s2[XB_LANES], s3[XB_LANES];
    for (int l = 0; l < XB_LANES; l++)
        s0[l] = r->s0[l], s1[l] = r->s1[l], s2[l] = r->s2[l], s3[l] = r->s3[l];
    for (int j = 0; j < XB_CHUNK; j += XB_LANES)
        for (int l = 0; l < XB_LANES; l++) {
            u1[j + l] = open_unit(step(s0, s1, s2, s3, l));
            u2[j + l] = unit(step(s0, s1, s2, s3, l));
        }
    for (int l = 0; l < XB_LANES; l++)
        r->s0[l] = s0[l], r->s1[l] = s1[l], r->s2[l] = s2[l], r->s3[l] = s3[l];
    for (int j = 0; j < XB_CHUNK; j++) {
        float radius = sqrtf(-2.0f * log_positive(u1[j]));
        xb_turn turn = sincos_turn(u2[j]);
        a[j] = radius * turn.cosine;
        b[j] = radius * turn.sine;
    }
}

INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* out = f(x) for the kernel's function f: 0 log, 1 exp, 2 expm1 (for tests). */
void xb_math(int64_t n, int function, const float *x, float *out) {
    if (function == 0)
        for (int64_t j = 0; j < n; j++)
            out[j] = log_positive(x[j]);
    else if (function == 1)
        for (int64_t j = 0; j < n; j++)
            out[j] = exp_native(x[j]);
    else
        for (int64_t j = 0; j < n; j++)
            out[j] = expm1_native(x[j]);
}

/* The conductance reads see under drift, as Devices.visible computes it with torch: (g + offset) x ((now - written
 * + t0) / t0)^-nu, the power as e^(-nu ln a); -nu per device (stride 1) or one for all (stride 0). */
INLINE void visible(int64_t n, const float *g, const float *offset, const float *written_at, const float *neg_nu,
                    const int stride, float now, float t0, float *out) {
    for (int64_t j = 0; j < n; j++) {
        float a = (-(written_at[j] - now) + t0) / t0;
        out[j] = (offset ? g[j] + offset[j] : g[j]) * exp_native(neg_nu[j * stride] * log_positive(a));
    }
}

void xb_visible(int64_t n, const float *g, const float *offset, const float *written_at, const float *neg_nu,
                int per_device, float now, float t0, float *out) {
    /* one loop per case, so that each vectorises */
    if (per_device && offset)
        visible(n, g, offset, written_at, neg_nu, 1, now, t0, out);
    else if (per_device)
        visible(n, g, 0, written_at, neg_nu, 1, now, t0, out);
    else if (offset)
        visible(n, g, offset, written_at, neg_nu, 0, now, t0, out);
    else
        visible(n, g, 0, written_at, neg_nu, 0, now, t0, out);
}

/* n uniforms in [0, 1) from seed, as xb_round draws them (for tests). */
void xb_uniforms(int64_t n, uint64_t seed, float *out) {
    xb_random r;
    float u[XB_CHUNK];
    seed_random(&r, seed);
    for (int64_t base = 0; base < n; base += XB_CHUNK) {
        chunk_uniforms(&r, u);
        for (int64_t j = 0; j < min64(XB_CHUNK, n - base); j++)
            out[base + j] = u[j];
    }
}

/* n pairs of standard normals from seed, as xb_finish draws them (for tests). */
void xb_normals(int64_t n, uint64_t seed, float *a, float *b) {
    xb_random r;
    float za[XB_CHUNK], zb[XB_CHUNK];
    seed_random(&r, seed);
    for (int64_t base = 0; base < n; base += XB_CHUNK) {
        chunk_normals(&r, za, zb);
        for (int64_t j = 0; j < min64(XB_CHUNK, n - base); j++)
            a[base + j] = za[j], b[base + j] = zb[j];
    }
}

/* x = floor(min(x + u, cap)) = min(floor(x + u), cap) for a whole cap below 2^23, where truncation is the floor. */
static void round_capped(int64_t m, const float *restrict u, float *restrict x, float cap) {
    for (int64_t j = 0; j < m; j++) {
        float v = x[j] + u[j];
        float capped = v > cap ? cap : v;
        x[j] = (float)(int32_t)capped;
    }
}

/* x = min(floor(x + u), cap), no cap where cap <= 0. */
static void round_any(int64_t m, const float *restrict u, float *restrict x, float cap) {
    for (int64_t j = 0; j < m; j++) {
        float v = floor_nonnegative(x[j] + u[j]);
        x[j] = cap > 0.0f && v > cap ? cap : v;
    }
}

/* Stochastic rounding in place of requests x >= 0: x = min(floor(x + u), cap) with u ~ U[0, 1) (no cap where
 * cap <= 0), what the tensor path computes with torch's uniforms. */
void xb_round(int64_t n, float *x, uint64_t seed, float cap) {
    xb_random r;
    float u[XB_CHUNK];
    seed_random(&r, seed);
    for (int64_t base = 0; base < n; base += XB_CHUNK) {
        chunk_uniforms(&r, u);
        int64_t m = min64(XB_CHUNK, n - base);
        if (cap > 0.0f && cap < 0x1p23f)
            round_capped(m, u, x + base, cap);
        else
            round_any(m, u, x + base, cap);
    }
}

/* What a device gets (PairArray._send) from its weight's count and request at e: its pulses, nominal travel and
 * direction (1 / 0 and +1 / -1). */
typedef struct {
    float n, travel, up, sign;
} xb_entry;

INLINE xb_entry entry(const xb_write *w, int64_t e, const int one_sided) {
    float d = w->d[e];
    float sign = (float)((d > 0.0f) - (d < 0.0f));
    float direction = w->polarity > 0.0f ? sign : -sign;
    float side = direction < 0.0f ? 0.0f : direction;
    float n = w->n[e], travel = n * w->dw;
    if (one_sided)
        return (xb_entry){n * side, travel * side, 1.0f, 1.0f};
    return (xb_entry){n, travel, side, direction};
}

/* The transcendentals' arguments, one per entry j of device i (DENSE or SPARSE). */
#define ENTRIES(layout) \
    const xb_write w = *job; /* a local copy: stores through its pointers cannot change it */ \
    _Pragma("GCC ivdep") \
    for (int64_t j = 0; j < w.k; j++) { \
        int64_t i = layout == XB_DENSE ? j : w.idx[j]; \
        xb_entry en = entry(&w, j, one_sided); \
        float up = en.up;

/* Soft bounds: amount x rate, whose expm1 is the factor of (g - target). */
INLINE void soft_arg(const xb_write *job, const int layout, const int one_sided) {
    ENTRIES(layout)
        float move = en.travel * choose(up, w.gain_up[i], w.gain_down[i]);
        w.work[j] = move * choose(up, w.b_up[i], w.b_down[i]);
    }
}

/* Exponential step: z x sign x gamma, whose exp is the curve's start, and amount x gamma / half, which torch adds
 * to it before the log that gives the curve's end. */
INLINE void exp_args(const xb_write *job, const int layout, const int one_sided) {
    ENTRIES(layout)
        float half = choose(up, w.b_up[i], w.b_down[i]), gamma = choose(up, w.gamma_up, w.gamma_down);
        float z = (w.g[i] - choose(up, w.a_up[i], w.a_down[i])) / half;
        float move = en.travel * choose(up, w.gain_up[i], w.gain_down[i]);
        w.work[j] = z * (en.sign * gamma);
        w.term[j] = move * gamma / half;
    }
}

#define XB_CASES(f) switch ((w->layout == XB_SPARSE) * 2 + (w->one_sided != 0)) { \
    case 0: f(w, XB_DENSE, 0); break; case 1: f(w, XB_DENSE, 1); break; \
    case 2: f(w, XB_SPARSE, 0); break; default: f(w, XB_SPARSE, 1); }
void xb_soft_arg(const xb_write *w) { XB_CASES(soft_arg) }
void xb_exp_args(const xb_write *w) { XB_CASES(exp_args) }

/* The flat indices of the nonzero x[i] into idx (ascending; idx has room for n), in one branch-free pass; returns how
 * many there are. */
int64_t xb_nonzero(int64_t n, const float *x, int64_t *idx) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        idx[k] = i;
        k += x[i] != 0.0f;
    }
    return k;
}

/* out[j] = how many of the m increasing xp are below x[j] (torch.searchsorted's left index; m >= 1): a branch-free
 * binary search, eight values at a time so that their searches overlap. */
void xb_searchsorted(int64_t n, const float *x, int64_t m, const float *xp, int64_t *out) {
    enum { W = 8 };
    int64_t j = 0;
    for (; j + W <= n; j += W) {
        int64_t base[W] = {0}, left = m;
        while (left > 1) {
            int64_t half = left / 2;
            for (int l = 0; l < W; l++)
                base[l] = xp[base[l] + half] < x[j + l] ? base[l] + half : base[l];
            left -= half;
        }
        for (int l = 0; l < W; l++)
            out[j + l] = base[l] + (xp[base[l]] < x[j + l]);
    }
    for (; j < n; j++) {
        int64_t base = 0, left = m;
        while (left > 1) {
            int64_t half = left / 2;
            base = xp[base + half] < x[j] ? base + half : base;
            left -= half;
        }
        out[j] = base + (xp[base] < x[j]);
    }
}

/* Piecewise-linear interpolation of fp(xp) at x, clamped at the ends, with response.interp's float32 operations in
 * its order: i = the left index within [1, m - 1], t = clamp((x - xp[i-1]) / (xp[i] - xp[i-1]), 0, 1),
 * out = fp[i-1] + t (fp[i] - fp[i-1]). m >= 2. */
void xb_interp(int64_t n, const float *x, int64_t m, const float *xp, const float *fp, float *out) {
    enum { W = 8 };
    for (int64_t j0 = 0; j0 < n; j0 += W) {
        int64_t count = min64(W, n - j0), index[W];
        xb_searchsorted(count, x + j0, m, xp, index);
        for (int64_t l = 0; l < count; l++) {
            int64_t i = index[l] < 1 ? 1 : index[l] > m - 1 ? m - 1 : index[l];
            float t = (x[j0 + l] - xp[i - 1]) / (xp[i] - xp[i - 1]);
            t = t < 0.0f ? 0.0f : t > 1.0f ? 1.0f : t;
            out[j0 + l] = fp[i - 1] + t * (fp[i] - fp[i - 1]);
        }
    }
}

/* dst[idx[j]] = src[j] for the k entries: per-entry values at their devices, for a MASKED xb_finish. */
void xb_expand(int64_t k, const int64_t *idx, const float *src, float *dst) {
    for (int64_t j = 0; j < k; j++)
        dst[idx[j]] = src[j];
}

/* dst[j] = src[idx[j]] for the k entries: the entries' values, in the order the torch path has them. */
void xb_compact(int64_t k, const int64_t *idx, const float *src, float *dst) {
    for (int64_t j = 0; j < k; j++)
        dst[j] = src[idx[j]];
}

/* The write of one polarity's entries (devices if MASKED) j0 <= j < j1, whose normals are c2c_normal[j - j0] and
 * write_normal[j - j0]; returns how many pulsed devices ended clipped at a bound. */
INLINE int64_t finish(const xb_write *job, const int model, const int layout, const int one_sided, const int c2c,
                      const int noise, const int drift, int64_t j0, int64_t j1, const float *c2c_normal,
                      const float *write_normal) {
    const xb_write w = *job;
    int64_t saturated = 0;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; j++) {
        int64_t i = layout == XB_SPARSE ? w.idx[j] : j;
        xb_entry e = entry(&w, j, one_sided);
        float up = e.up, g = w.g[i];
        float move = e.travel * choose(up, w.gain_up[i], w.gain_down[i]);
        float next; /* the conductance after the pulses, before noise and bounds (response.py's advance) */
        if (model == XB_SOFT_BOUNDS || model == XB_SOFT_NATIVE) {
            float factor = model == XB_SOFT_BOUNDS ? w.work[j] : expm1_native(move * choose(up, w.b_up[i], w.b_down[i]));
            next = factor * (g - choose(up, w.a_up[i], w.a_down[i])) + g;
        } else if (model == XB_EXPONENTIAL || model == XB_EXP_NATIVE) {
            float mid = choose(up, w.a_up[i], w.a_down[i]), half = choose(up, w.b_up[i], w.b_down[i]);
            float sign = e.sign, gamma = choose(up, w.gamma_up, w.gamma_down);
            float z = (g - mid) / half;
            float linear = move * sign / half + z;
            float end = model == XB_EXPONENTIAL ? w.work[j]
                                                : log_positive(exp_native(z * (sign * gamma)) + move * gamma / half);
            float curve = end / gamma * sign;
            next = choose((float)((move > 0.0f) & (gamma > 0.0f)), curve, linear) * half + mid;
        } else {
            next = g + e.sign * move;
        }
        if (c2c) {
            float pulses = e.n;
            float per_unit = 1.0f / sqrtf(pulses < 1e-12f ? 1e-12f : pulses);
            next = next + fabsf(next - g) * per_unit * (c2c_normal[j - j0] * w.c2c_std);
        }
        float lo = w.clip_lo[i], hi = w.clip_hi[i];
        float clipped = next < lo ? lo : next;
        clipped = clipped > hi ? hi : clipped;
        float pulsed = (float)(e.travel > 0.0f);
        /* which devices the write touches: a DENSE one every device (an unpulsed one keeps its noise and time), a
         * SPARSE one every entry, a MASKED one the devices with a count */
        float touched = layout == XB_MASKED ? (float)(w.n[j] > 0.0f) : 1.0f;
        float hit = layout == XB_DENSE ? pulsed : touched;
        saturated += (touched != 0.0f) & ((next - clipped) * pulsed * w.free_[i] != 0.0f);
        w.g[i] = choose(touched, clipped, g);
        w.pulses[i] = w.pulses[i] + e.n;
        if (noise)
            w.offset[i] = choose(hit, write_normal[j - j0] * w.write_std, w.offset[i]);
        if (drift)
            w.written_at[i] = choose(hit, w.now, w.written_at[i]);
    }
    return saturated;
}

/* The whole write of one polarity: its normals the caller's, or drawn here block by block (rng = "native"). */
INLINE int64_t finish_all(const xb_write *w, const int model, const int layout, const int one_sided, const int c2c,
                          const int noise, const int drift) {
    int64_t count = layout == XB_MASKED ? w->numel : w->k;
    if (!w->draw_c2c && !w->draw_write)
        return finish(w, model, layout, one_sided, c2c, noise, drift, 0, count, w->c2c_normal, w->write_normal);
    xb_random r;
    float c2c_normal[XB_CHUNK], write_normal[XB_CHUNK];
    int64_t saturated = 0;
    seed_random(&r, w->seed);
    for (int64_t base = 0; base < count; base += XB_CHUNK) {
        chunk_normals(&r, c2c_normal, write_normal);
        saturated += finish(w, model, layout, one_sided, c2c, noise, drift, base, min64(base + XB_CHUNK, count),
                            w->draw_c2c ? c2c_normal : w->c2c_normal ? w->c2c_normal + base : 0,
                            w->draw_write ? write_normal : w->write_normal ? w->write_normal + base : 0);
    }
    return saturated;
}

/* One loop per case: the case's number has a digit per flag (see xb_finish). */
#define XB_DRIFT(m, l, o, c, n) \
    case (((m) * 3 + (l)) * 2 + (o)) * 8 + (c) * 4 + (n) * 2: return finish_all(w, m, l, o, c, n, 0); \
    case (((m) * 3 + (l)) * 2 + (o)) * 8 + (c) * 4 + (n) * 2 + 1: return finish_all(w, m, l, o, c, n, 1);
#define XB_NOISE(m, l, o, c) XB_DRIFT(m, l, o, c, 0) XB_DRIFT(m, l, o, c, 1)
#define XB_C2C(m, l, o) XB_NOISE(m, l, o, 0) XB_NOISE(m, l, o, 1)
#define XB_PAIR(m, l) XB_C2C(m, l, 0) XB_C2C(m, l, 1)
#define XB_MODEL(m) XB_PAIR(m, XB_DENSE) XB_PAIR(m, XB_SPARSE) XB_PAIR(m, XB_MASKED)

int64_t xb_finish(const xb_write *w) {
    int c2c = w->c2c_normal != 0 || w->draw_c2c, noise = w->write_normal != 0 || w->draw_write;
    switch (((w->model * 3 + w->layout) * 2 + (w->one_sided != 0)) * 8 + c2c * 4 + noise * 2 + (w->written_at != 0)) {
        XB_MODEL(XB_CONSTANT)
        XB_MODEL(XB_SOFT_BOUNDS)
        XB_MODEL(XB_EXPONENTIAL)
        XB_MODEL(XB_SOFT_NATIVE)
        XB_MODEL(XB_EXP_NATIVE)
    }
    return -1;
}
