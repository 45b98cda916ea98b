/* The crossbar's fused write (targets/crossbar/native.py builds and loads it; docs/crossbar.md, "Speed").
 *
 * One pass per polarity does what PairArray._respond does in 20-30 tensor passes: each device's response to its
 * pulses, cycle-to-cycle noise, bounds, saturation count, write noise, pulse count and write time, reading the
 * per-device constants and conductances in place instead of gathering and scattering them. It computes the same
 * float32 operations in the same order as the torch path (built with -ffp-contract=off, never -ffast-math), so
 * the numbers are bit for bit the same. Random numbers and the transcendental functions (exp, expm1, log) stay
 * with torch, whose vectorised versions may differ from libm's in the last bit: xb_soft_arg and xb_exp_args
 * compute their arguments into buffers that torch transforms in place.
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

enum { XB_CONSTANT = 0, XB_SOFT_BOUNDS = 1, XB_EXPONENTIAL = 2 };
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

/* The whole write of one polarity; returns how many pulsed devices ended clipped at a bound. */
INLINE int64_t finish(const xb_write *job, const int model, const int layout, const int one_sided, const int c2c,
                      const int noise, const int drift) {
    const xb_write w = *job;
    int64_t saturated = 0;
    int64_t count = layout == XB_MASKED ? w.numel : w.k;
#pragma GCC ivdep
    for (int64_t j = 0; j < count; j++) {
        int64_t i = layout == XB_SPARSE ? w.idx[j] : j;
        xb_entry e = entry(&w, j, one_sided);
        float up = e.up, g = w.g[i];
        float move = e.travel * choose(up, w.gain_up[i], w.gain_down[i]);
        float next; /* the conductance after the pulses, before noise and bounds (response.py's advance) */
        if (model == XB_SOFT_BOUNDS) {
            next = w.work[j] * (g - choose(up, w.a_up[i], w.a_down[i])) + g;
        } else if (model == XB_EXPONENTIAL) {
            float mid = choose(up, w.a_up[i], w.a_down[i]), half = choose(up, w.b_up[i], w.b_down[i]);
            float sign = e.sign, gamma = choose(up, w.gamma_up, w.gamma_down);
            float z = (g - mid) / half;
            float linear = move * sign / half + z;
            float curve = w.work[j] / gamma * sign;
            next = choose((float)((move > 0.0f) & (gamma > 0.0f)), curve, linear) * half + mid;
        } else {
            next = g + e.sign * move;
        }
        if (c2c) {
            float pulses = e.n;
            float per_unit = 1.0f / sqrtf(pulses < 1e-12f ? 1e-12f : pulses);
            next = next + fabsf(next - g) * per_unit * (w.c2c_normal[j] * w.c2c_std);
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
            w.offset[i] = choose(hit, w.write_normal[j] * w.write_std, w.offset[i]);
        if (drift)
            w.written_at[i] = choose(hit, w.now, w.written_at[i]);
    }
    return saturated;
}

/* One loop per case: the case's number has a digit per flag (see xb_finish). */
#define XB_DRIFT(m, l, o, c, n) \
    case (((m) * 3 + (l)) * 2 + (o)) * 8 + (c) * 4 + (n) * 2: return finish(w, m, l, o, c, n, 0); \
    case (((m) * 3 + (l)) * 2 + (o)) * 8 + (c) * 4 + (n) * 2 + 1: return finish(w, m, l, o, c, n, 1);
#define XB_NOISE(m, l, o, c) XB_DRIFT(m, l, o, c, 0) XB_DRIFT(m, l, o, c, 1)
#define XB_C2C(m, l, o) XB_NOISE(m, l, o, 0) XB_NOISE(m, l, o, 1)
#define XB_PAIR(m, l) XB_C2C(m, l, 0) XB_C2C(m, l, 1)
#define XB_MODEL(m) XB_PAIR(m, XB_DENSE) XB_PAIR(m, XB_SPARSE) XB_PAIR(m, XB_MASKED)

int64_t xb_finish(const xb_write *w) {
    switch (((w->model * 3 + w->layout) * 2 + (w->one_sided != 0)) * 8 + (w->c2c_normal != 0) * 4 +
            (w->write_normal != 0) * 2 + (w->written_at != 0)) {
        XB_MODEL(XB_CONSTANT)
        XB_MODEL(XB_SOFT_BOUNDS)
        XB_MODEL(XB_EXPONENTIAL)
    }
    return -1;
}
