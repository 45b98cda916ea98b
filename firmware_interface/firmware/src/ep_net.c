#include "ep_net.h"

#include <string.h>

#include "crc32.h"
#include "wire.h"
#ifdef EP_ACCEL
#include "accel.h"
#endif

/* Counts changes of the network and its weights: an accelerator reloads its weight memory when it moves. */
static uint32_t weights_generation;

uint32_t ep_weights_generation(void) { return weights_generation; }

/* ---- wrapping int64 arithmetic (no undefined behaviour on overflow, like torch's int64) ---- */

static inline int64_t shl(int64_t v, unsigned k) { return (int64_t)((uint64_t)v << k); }
static inline int64_t wadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static inline int64_t asr(int64_t a, unsigned k) { return a >= 0 ? a >> k : ~(~a >> k); }

int64_t ep_round_shift(int64_t a, int k)
{
    if (k <= 0)
        return shl(a, (unsigned)-k);
    int64_t q = asr(a, (unsigned)k);
    uint64_t r = (uint64_t)a - ((uint64_t)q << k);
    uint64_t half = 1ull << (k - 1);
    return q + ((r > half) || (r == half && (q & 1)));
}

/* ---- tensors ---- */

static int64_t tget(const ep_tensor_t *t, uint32_t i)
{
    switch (t->dtype) {
    case DT_I8: return ((const int8_t *)t->data)[i];
    case DT_I16: return ((const int16_t *)t->data)[i];
    case DT_I32: return ((const int32_t *)t->data)[i];
    case DT_U16: return ((const uint16_t *)t->data)[i];
    default: return t->data[i];
    }
}

static void tset(ep_tensor_t *t, uint32_t i, int64_t v)
{
    switch (t->dtype) {
    case DT_I8: ((int8_t *)t->data)[i] = (int8_t)v; break;
    case DT_I16: ((int16_t *)t->data)[i] = (int16_t)v; break;
    case DT_I32: ((int32_t *)t->data)[i] = (int32_t)v; break;
    case DT_U16: ((uint16_t *)t->data)[i] = (uint16_t)v; break;
    default: t->data[i] = (uint8_t)v; break;
    }
}

/* CRC-32 of the stored values as the wire bytes (dtype width, little-endian, row-major). */
static uint32_t tensor_crc(const ep_tensor_t *t)
{
    uint8_t chunk[64];
    size_t item = dtype_size(t->dtype), fill = 0;
    uint32_t crc = 0;
    for (uint32_t i = 0; i < t->count; i++) {
        dtype_put(t->dtype, chunk, fill / item, tget(t, i));
        fill += item;
        if (fill == sizeof chunk) {
            crc = crc32_update(crc, chunk, fill);
            fill = 0;
        }
    }
    return crc32_update(crc, chunk, fill);
}

enum { T_W = 0, T_B = 1, T_FB = 2, T_SHIFT = 3 };

static ep_tensor_t *tensor_of(ep_net_t *n, uint8_t id)
{
    if (!n->configured || id >= EP_MAX_TENSORS || !n->tensor[id].exists)
        return NULL;
    return &n->tensor[id];
}

static int64_t weight_max(const ep_net_t *n) { return ((int64_t)1 << (n->weight_bits - 1)) - 1; }

/* The valid range of a tensor's values. */
static void value_range(const ep_net_t *n, uint8_t id, uint32_t i, int64_t *lo, int64_t *hi)
{
    switch (id % 4) {
    case T_B: *lo = INT32_MIN; *hi = INT32_MAX; break;
    case T_SHIFT: {
        uint32_t rows = n->tensor[id].count / (id / 4 < n->layers ? 3u : 1u);
        *lo = 0;
        *hi = (i >= 2 * rows && id / 4 < n->layers) ? 0 : EP_MAX_SHIFT; /* row 2 is reserved (0) */
        if (i < rows && id / 4 < n->layers) /* an average pool's bias goes pool_shift bits further */
            *hi -= n->layer[id / 4].conv.pool_shift;
        break;
    }
    default: *lo = -weight_max(n); *hi = weight_max(n); break;
    }
}

static void invalidate_drive(ep_net_t *n, uint8_t id)
{
    if (id == 0 || id == 1 || id == 3)
        memset(n->drive_ok, 0, n->max_batch);
}

/* ---- CONFIGURE ---- */

void ep_init(ep_net_t *n, uint8_t *arena, uint32_t arena_size, uint16_t board_max_batch)
{
    memset(n, 0, sizeof *n);
    n->arena = arena;
    n->arena_size = arena_size;
    n->board_max_batch = board_max_batch;
}

static uint64_t align8(uint64_t v) { return (v + 7) & ~(uint64_t)7; }

/* Field indices of the network record, in the order of the spec's table (per-layer and per-conv fields shared). */
enum { F_LAYERS, F_FLAGS, F_WBITS, F_SBITS, F_IBITS, F_RES0, F_MAXBATCH, F_INSIZE, F_UNITS, F_SSHIFT, F_KIND,
       F_CLASSES, F_NUDGE, F_SOFTMAX, F_IN_C, F_IN_H, F_IN_W, F_CHANNELS, F_KERNEL, F_STRIDE, F_PADDING, F_POOL,
       F_POOL_SIZE, F_CRES };

#define BAD(f) do { *field = (f); return ST_BAD_ARGUMENT; } while (0)

#define CONV_BLOCK 14 /* bytes of a conv layer's geometry after the record's tail */
#ifdef EP_NO_CONV
#define MAX_KIND 0 /* a board before protocol 1.2: every layer dense */
#else
#define MAX_KIND 1
#endif

/* Checks the conv block q of a layer of `units` units reading `fan` units; fills *g. */
static int parse_conv(const uint8_t *q, uint64_t fan, uint64_t units, ep_conv_t *g, uint8_t *field)
{
    memset(g, 0, sizeof *g);
    g->in_c = get_u16(q);
    g->in_h = get_u16(q + 2);
    g->in_w = get_u16(q + 4);
    g->channels = get_u16(q + 6);
    g->kernel = q[8];
    g->stride = q[9];
    g->padding = q[10];
    g->pool = q[11];
    g->pool_size = q[12];
    if (g->in_h < 1) BAD(F_IN_H);
    if (g->in_w < 1) BAD(F_IN_W);
    if (g->in_c < 1 || (uint64_t)g->in_c * g->in_h * g->in_w != fan) BAD(F_IN_C);
    uint32_t span_h = (uint32_t)g->in_h + 2u * g->padding, span_w = (uint32_t)g->in_w + 2u * g->padding;
    if (g->kernel < 1 || g->kernel > span_h || g->kernel > span_w ||
        (uint64_t)g->in_c * g->kernel * g->kernel > 0xFFFF) BAD(F_KERNEL);
    if (g->stride < 1) BAD(F_STRIDE);
    if (g->pool > POOL_AVG) BAD(F_POOL);
    uint8_t k = g->pool_size;
    if (k < 1 || (g->pool == POOL_NONE && k != 1) || (g->pool == POOL_AVG && (k & (k - 1)))) BAD(F_POOL_SIZE);
    g->conv_h = (uint16_t)((span_h - g->kernel) / g->stride + 1);
    g->conv_w = (uint16_t)((span_w - g->kernel) / g->stride + 1);
    g->out_h = g->conv_h / k;
    g->out_w = g->conv_w / k;
    if (g->out_h < 1 || g->out_w < 1) BAD(F_POOL_SIZE);
    if (g->channels < 1 || (uint64_t)g->channels * g->out_h * g->out_w != units) BAD(F_CHANNELS);
    uint64_t macs = (uint64_t)g->channels * g->out_h * g->out_w * k * k * g->in_c * g->kernel * g->kernel;
    if (macs > EP_MAX_CONV_MACS) BAD(F_KERNEL); /* bounded like the largest dense layer's work */
    if (q[13] != 0) BAD(F_CRES);
    for (uint8_t b = 1; g->pool == POOL_AVG && b < k; b <<= 1)
        g->pool_shift += 2;
    return ST_OK;
}

int ep_configure(ep_net_t *n, const uint8_t *p, size_t len, uint8_t *field)
{
    if (len < 1 || len < 14 + 4 * (size_t)p[0])
        return ST_BAD_LENGTH;
    size_t convs = 0;
    for (uint8_t l = 0; MAX_KIND && l < p[0]; l++)
        convs += p[10 + 4 * l + 3] == 1;
    if (len != 14 + 4 * (size_t)p[0] + CONV_BLOCK * convs)
        return ST_BAD_LENGTH;
    uint8_t L = p[0], flags = p[1], wb = p[2], sb = p[3], ib = p[4];
    uint16_t max_batch = get_u16(p + 6), input_size = get_u16(p + 8);
    const uint8_t *tail = p + 10 + 4 * (size_t)L;
    uint16_t classes = get_u16(tail);
    uint8_t nudge = tail[2], softmax = tail[3];
    int ce = (flags & NET_CE) != 0;
    if (L < 1 || L > EP_MAX_LAYERS) BAD(F_LAYERS);
    if (flags & 0xF0) BAD(F_FLAGS);
    if (wb < 2 || wb > 16) BAD(F_WBITS);
    if (sb < 1 || sb > 16) BAD(F_SBITS);
    if (ib < ((flags & NET_SIGNED_INPUT) ? 2 : 1) || ib > 16) BAD(F_IBITS);
    if (p[5] != 0) BAD(F_RES0);
    if (max_batch < 1 || max_batch > n->board_max_batch) BAD(F_MAXBATCH);
    if (input_size < 1 || input_size > EP_MAX_UNITS) BAD(F_INSIZE);
    ep_conv_t geo[EP_MAX_LAYERS];
    const uint8_t *block = p + 14 + 4 * (size_t)L;
    for (uint8_t l = 0; l < L; l++) {
        const uint8_t *r = p + 10 + 4 * l;
        uint16_t units = get_u16(r);
        int8_t shift = (int8_t)r[2];
        if (units < 1 || units > EP_MAX_UNITS) BAD(F_UNITS);
        if (shift < -EP_MAX_SHIFT || shift > EP_MAX_SHIFT) BAD(F_SSHIFT);
        if (r[3] > MAX_KIND || (r[3] == 1 && l > 0 && (r - 4)[3] == 0)) BAD(F_KIND); /* conv layers come first */
        if (r[3] == 1) {
            int st = parse_conv(block, l ? get_u16(r - 4) : input_size, units, &geo[l], field);
            if (st != ST_OK)
                return st;
            block += CONV_BLOCK;
        }
    }
    if (ce ? (classes < 1 || classes > EP_MAX_UNITS) : classes != 0) BAD(F_CLASSES);
    if (nudge > EP_MAX_SHIFT) BAD(F_NUDGE); /* MSE: the nudge's left shift; CE: the CE nudge's right shift */
    if (ce ? softmax > EP_MAX_SHIFT : softmax != 0) BAD(F_SOFTMAX);

    /* Sizes first (64-bit: no overflow); a refused CONFIGURE leaves the board as it was. */
    size_t wsize = wb <= 8 ? 1 : 2, isize = ib <= 8 ? 1 : 2;
    uint64_t total = 0, units_sum = 0, widest = 0, used = 0;
    uint64_t t_size[EP_MAX_TENSORS] = {0};
    for (uint8_t l = 0; l < L; l++) {
        int conv = p[10 + 4 * l + 3] == 1;
        uint64_t u = get_u16(p + 10 + 4 * l), fan_in = l ? get_u16(p + 10 + 4 * (l - 1)) : input_size;
        uint64_t rows = conv ? geo[l].channels : u;
        if (conv)
            fan_in = (uint64_t)geo[l].in_c * geo[l].kernel * geo[l].kernel;
        t_size[4 * l + T_W] = rows * fan_in;
        t_size[4 * l + T_B] = rows;
        if ((flags & NET_UNTIED) && l >= 1)
            t_size[4 * l + T_FB] = rows * fan_in;
        t_size[4 * l + T_SHIFT] = 3 * rows;
        units_sum += u;
        if (u > widest)
            widest = u;
    }
    if (ce) {
        uint64_t uL = get_u16(p + 10 + 4 * (L - 1));
        t_size[4 * L + T_W] = classes * uL;
        t_size[4 * L + T_B] = classes;
        t_size[4 * L + T_SHIFT] = classes;
    }
    for (int id = 0; id < EP_MAX_TENSORS; id++) {
        size_t item = id % 4 == T_B ? 4 : id % 4 == T_SHIFT ? 1 : wsize;
        total += align8(t_size[id] * item);
    }
    uint64_t units1 = get_u16(p + 10);
    total += align8((uint64_t)max_batch * input_size * isize);
    total += align8((uint64_t)max_batch * units1 * 8) + align8(max_batch);
    total += SNAP_COUNT * (align8((uint64_t)max_batch * units_sum * 2) + align8((uint64_t)max_batch * 2));
    total += align8((uint64_t)max_batch * 2) + align8(widest * 8) + align8(widest * 2);
    total += 2 * align8((uint64_t)classes * 8); /* the CE nudge's scores and probabilities */
    if (total > n->arena_size)
        return ST_NO_MEMORY;
#ifdef EP_ACCEL
    uint16_t units_of[EP_MAX_LAYERS];
    for (uint8_t l = 0; l < L; l++)
        units_of[l] = get_u16(p + 10 + 4 * l);
    if (!ep_accel_check(L, units_of, input_size))
        return ST_NO_MEMORY; /* the accelerator's memories cannot hold this network */
#endif

    uint8_t *arena = n->arena;
    uint32_t arena_size = n->arena_size;
    uint16_t board_max_batch = n->board_max_batch;
    ep_init(n, arena, arena_size, board_max_batch);
    memset(arena, 0, (size_t)total);
    n->layers = L;
    n->flags = flags;
    n->weight_bits = wb;
    n->state_bits = sb;
    n->input_bits = ib;
    n->nudge_shift = nudge;
    n->softmax_shift = softmax;
    n->max_batch = max_batch;
    n->input_size = input_size;
    n->classes = classes;
    n->widest = (uint16_t)widest;
    n->total_units = (uint32_t)units_sum;
    n->weight_dtype = wb <= 8 ? DT_I8 : DT_I16;
    n->state_dtype = sb <= 8 ? DT_U8 : DT_U16;
    n->input_dtype = (flags & NET_SIGNED_INPUT) ? (ib <= 8 ? DT_I8 : DT_I16) : (ib <= 8 ? DT_U8 : DT_U16);
    uint32_t offset = 0;
    for (uint8_t l = 0; l < L; l++) {
        const uint8_t *r = p + 10 + 4 * l;
        n->layer[l].units = get_u16(r);
        n->layer[l].state_shift = (int8_t)r[2];
        n->layer[l].fan_in = l ? n->layer[l - 1].units : input_size;
        n->layer[l].rows = n->layer[l].units;
        if (r[3] == 1) {
            n->layer[l].is_conv = 1;
            n->layer[l].conv = geo[l];
            n->layer[l].fan_in = (uint16_t)(geo[l].in_c * geo[l].kernel * geo[l].kernel);
            n->layer[l].rows = geo[l].channels;
        }
        n->layer[l].offset = offset;
        offset += n->layer[l].units;
    }
#define TAKE(bytes) (p_ = arena + used, used += align8(bytes), p_)
    uint8_t *p_;
    for (int id = 0; id < EP_MAX_TENSORS; id++) {
        ep_tensor_t *t = &n->tensor[id];
        t->exists = t_size[id] > 0;
        t->count = (uint32_t)t_size[id];
        t->dtype = id % 4 == T_B ? DT_I32 : id % 4 == T_SHIFT ? DT_U8 : n->weight_dtype;
        t->committed = 1; /* zeros, version 0: only a WRITE_WEIGHTS makes a tensor uncommitted */
        t->data = TAKE(t_size[id] * dtype_size(t->dtype));
    }
    n->input = TAKE((uint64_t)max_batch * input_size * isize);
    n->drive = (int64_t *)TAKE((uint64_t)max_batch * units1 * 8);
    n->drive_ok = TAKE(max_batch);
    for (int s = 0; s < SNAP_COUNT; s++) {
        n->states[s] = (uint16_t *)TAKE((uint64_t)max_batch * units_sum * 2);
        n->resid[s] = (uint16_t *)TAKE((uint64_t)max_batch * 2);
    }
    n->target = (uint16_t *)TAKE((uint64_t)max_batch * 2);
    n->acc = (int64_t *)TAKE(widest * 8);
    n->saved = (uint16_t *)TAKE(widest * 2);
    n->scores = (int64_t *)TAKE((uint64_t)classes * 8);
    n->probs = (int64_t *)TAKE((uint64_t)classes * 8);
#undef TAKE
    n->arena_used = (uint32_t)used;
    n->configured = 1;
    weights_generation++;
    return ST_OK;
}

/* ---- weights ---- */

/* Checks a tensor chunk [offset, offset + count) of tensor id; sets *tp. */
static int check_chunk(ep_net_t *n, uint8_t id, uint32_t offset, uint32_t count, ep_tensor_t **tp,
                       uint8_t *field)
{
    if (!n->configured)
        return ST_NOT_CONFIGURED;
    ep_tensor_t *t = tensor_of(n, id);
    if (!t)
        BAD(0);
    if (offset > t->count || count > t->count - offset)
        return ST_OUT_OF_RANGE;
    *tp = t;
    return ST_OK;
}

/* WRITE_WEIGHTS / APPLY_DELTA: the chunk must be ndim 1 of the tensor's dtype. Field 3 / 4 is the tensor. */
static int check_view(const ep_tensor_t *t, const tensor_view_t *v, uint8_t tensor_field, uint8_t *field)
{
    if (v->dtype != t->dtype || v->ndim != 1)
        BAD(tensor_field);
    return ST_OK;
}

int ep_write(ep_net_t *n, uint8_t id, uint32_t offset, const tensor_view_t *v, uint8_t *field)
{
    ep_tensor_t *t;
    int st = check_chunk(n, id, offset, v->count, &t, field);
    if (st == ST_OK)
        st = check_view(t, v, 3, field);
    if (st != ST_OK)
        return st;
    for (uint32_t i = 0; i < v->count; i++) {
        int64_t lo, hi, x = dtype_get(v->dtype, v->data, i);
        value_range(n, id, offset + i, &lo, &hi);
        if (x < lo || x > hi)
            return ST_OUT_OF_RANGE;
    }
    for (uint32_t i = 0; i < v->count; i++)
        tset(t, offset + i, dtype_get(v->dtype, v->data, i));
    t->frac = v->frac;
    t->committed = 0;
    invalidate_drive(n, id);
    weights_generation++;
    return ST_OK;
}

int ep_read(ep_net_t *n, uint8_t id, uint32_t offset, uint16_t count, uint8_t *out, size_t cap, size_t *len,
            uint8_t *field)
{
    ep_tensor_t *t;
    int st = check_chunk(n, id, offset, count, &t, field);
    if (st != ST_OK)
        return st;
    size_t item = dtype_size(t->dtype);
    if (5 + (size_t)count * item > cap)
        return ST_OUT_OF_RANGE;
    size_t h = tensor_header(out, t->dtype, t->frac, 1, &count);
    for (uint16_t i = 0; i < count; i++)
        dtype_put(t->dtype, out + h, i, tget(t, offset + i));
    *len = h + (size_t)count * item;
    return ST_OK;
}

int ep_commit(ep_net_t *n, uint8_t id, uint32_t crc, uint32_t version, uint32_t *board_crc, uint8_t *field)
{
    ep_tensor_t *t;
    int st = check_chunk(n, id, 0, 0, &t, field);
    if (st != ST_OK)
        return st;
    *board_crc = tensor_crc(t);
    if (*board_crc != crc) {
        t->committed = 0;
        return ST_CHECKSUM_MISMATCH;
    }
    t->committed = 1;
    n->version = version;
    return ST_OK;
}

int ep_apply_delta(ep_net_t *n, uint8_t id, uint32_t expected, uint32_t offset, const tensor_view_t *v,
                   uint32_t *saturated, uint8_t *field)
{
    ep_tensor_t *t;
    int st = check_chunk(n, id, offset, v->count, &t, field);
    if (st != ST_OK)
        return st;
    if (id % 4 == T_SHIFT)
        BAD(0);
    if ((st = check_view(t, v, 4, field)) != ST_OK)
        return st;
    if (!t->committed)
        return ST_NOT_CONFIGURED;
    if (expected != n->version)
        return ST_STALE_VERSION;
    uint32_t sat = 0;
    for (uint32_t i = 0; i < v->count; i++) {
        int64_t d = dtype_get(v->dtype, v->data, i);
        if (d == 0)
            continue; /* stored weights are always within range (ep_write checks, this clips): nothing to do */
        int64_t lo, hi, x = tget(t, offset + i) + d;
        value_range(n, id, offset + i, &lo, &hi);
        if (x < lo || x > hi) {
            x = x < lo ? lo : hi;
            sat++;
        }
        tset(t, offset + i, x);
    }
    n->version++;
    invalidate_drive(n, id);
    weights_generation++;
    *saturated = sat;
    return sat ? ST_SATURATED : ST_OK;
}

int ep_tensor_crc(ep_net_t *n, uint8_t id, uint32_t *crc, uint8_t *field)
{
    ep_tensor_t *t;
    int st = check_chunk(n, id, 0, 0, &t, field);
    if (st == ST_OK)
        *crc = tensor_crc(t);
    return st;
}

/* ---- inputs, targets, states ---- */

int ep_set_input(ep_net_t *n, uint16_t batch, uint16_t offset, const tensor_view_t *v, uint8_t *field)
{
    if (!n->configured)
        return ST_NOT_CONFIGURED;
    if (v->dtype != n->input_dtype || v->ndim != 2 || v->shape[1] != n->input_size)
        BAD(2);
    if (batch < 1 || batch > n->max_batch || offset > batch || v->shape[0] > batch - offset)
        return ST_OUT_OF_RANGE;
    int signed_in = (n->flags & NET_SIGNED_INPUT) != 0;
    int64_t hi = ((int64_t)1 << (n->input_bits - signed_in)) - 1, lo = signed_in ? -hi - 1 : 0;
    for (uint32_t i = 0; i < v->count; i++) {
        int64_t x = dtype_get(v->dtype, v->data, i);
        if (x < lo || x > hi)
            return ST_OUT_OF_RANGE;
    }
    size_t item = dtype_size(n->input_dtype);
    memcpy(n->input + (size_t)offset * n->input_size * item, v->data, (size_t)v->count * item);
    /* kept in wire bytes: compute_drive decodes them, so any CPU byte order works */
    memset(n->drive_ok + offset, 0, v->shape[0]);
    n->batch = batch;
    return ST_OK;
}

static uint16_t label_limit(const ep_net_t *n)
{
    return (n->flags & NET_CE) ? n->classes : n->layer[n->layers - 1].units;
}

int ep_set_target(ep_net_t *n, uint16_t offset, const tensor_view_t *v, uint8_t *field)
{
    if (!n->configured)
        return ST_NOT_CONFIGURED;
    if (v->dtype != DT_U8 || v->ndim != 1)
        BAD(1);
    if (offset > n->max_batch || v->count > (uint32_t)(n->max_batch - offset))
        return ST_OUT_OF_RANGE;
    for (uint32_t i = 0; i < v->count; i++)
        if (v->data[i] >= label_limit(n))
            return ST_OUT_OF_RANGE;
    for (uint32_t i = 0; i < v->count; i++)
        n->target[offset + i] = v->data[i];
    n->targets_set = 1;
    return ST_OK;
}

int ep_set_states(ep_net_t *n, uint8_t layer, uint16_t offset, const tensor_view_t *v, uint8_t *field)
{
    if (!n->configured)
        return ST_NOT_CONFIGURED;
    if (layer < 1 || layer > n->layers)
        BAD(0);
    const ep_layer_t *ly = &n->layer[layer - 1];
    if (v->dtype != n->state_dtype || v->ndim != 2 || v->shape[1] != ly->units)
        BAD(3);
    if (offset > n->max_batch || v->shape[0] > n->max_batch - offset)
        return ST_OUT_OF_RANGE;
    int64_t smax = ((int64_t)1 << n->state_bits) - 1;
    for (uint32_t i = 0; i < v->count; i++)
        if (dtype_get(v->dtype, v->data, i) > smax)
            return ST_OUT_OF_RANGE;
    for (uint16_t r = 0; r < v->shape[0]; r++) {
        uint16_t *s = n->states[SNAP_CURRENT] + (size_t)(offset + r) * n->total_units + ly->offset;
        for (uint16_t c = 0; c < ly->units; c++)
            s[c] = (uint16_t)dtype_get(v->dtype, v->data, (size_t)r * ly->units + c);
    }
    return ST_OK;
}

/* ---- the relaxation ---- */

static int64_t dot_w(const ep_tensor_t *w, size_t row, const uint16_t *s, uint16_t n)
{
    int64_t sum = 0;
    if (w->dtype == DT_I8) {
        const int8_t *r = (const int8_t *)w->data + row * n;
        for (uint16_t j = 0; j < n; j++)
            sum += (int32_t)r[j] * (int32_t)s[j];
    } else {
        const int16_t *r = (const int16_t *)w->data + row * n;
        for (uint16_t j = 0; j < n; j++)
            sum += (int64_t)r[j] * s[j];
    }
    return sum;
}

/* What a conv layer reads: the input (layer 1, wire bytes of dtype) or a layer's states. */
typedef struct {
    const uint8_t *x;
    uint8_t dtype;
    const uint16_t *s;
} source_t;

static inline int64_t source_at(const source_t *src, uint32_t j)
{
    return src->s ? src->s[j] : dtype_get(src->dtype, src->x, j);
}

/* z[c, y, x] of conv layer ly (no bias): sum of W[c, c', i, j] src[c', y stride + i - padding, x stride + j -
   padding] over the positions inside the input. */
static int64_t conv_at(const ep_layer_t *ly, const ep_tensor_t *w, const source_t *src, uint16_t c, uint32_t y,
                       uint32_t x)
{
    const ep_conv_t *g = &ly->conv;
    int64_t sum = 0;
    uint32_t wi = (uint32_t)c * ly->fan_in;
    for (uint16_t ci = 0; ci < g->in_c; ci++)
        for (uint8_t i = 0; i < g->kernel; i++) {
            int32_t yy = (int32_t)(y * g->stride + i) - g->padding;
            if (yy < 0 || yy >= g->in_h) {
                wi += g->kernel;
                continue;
            }
            const uint32_t row = ((uint32_t)ci * g->in_h + (uint32_t)yy) * g->in_w;
            for (uint8_t j = 0; j < g->kernel; j++, wi++) {
                int32_t xx = (int32_t)(x * g->stride + j) - g->padding;
                if (xx >= 0 && xx < g->in_w)
                    sum += tget(w, wi) * source_at(src, row + (uint32_t)xx);
            }
        }
    return sum;
}

/* The largest z[c] in pooling window (Y, X) and where it is on the conv grid: the first maximum in row-major
   order takes ties (torch's max_pool2d). */
static int64_t window_max(const ep_layer_t *ly, const ep_tensor_t *w, const source_t *src, uint16_t c, uint32_t Y,
                          uint32_t X, uint32_t *at_y, uint32_t *at_x)
{
    uint8_t k = ly->conv.pool_size;
    int64_t best = 0;
    for (uint8_t i = 0; i < k; i++)
        for (uint8_t j = 0; j < k; j++) {
            int64_t v = conv_at(ly, w, src, c, Y * k + i, X * k + j);
            if ((i == 0 && j == 0) || v > best) {
                best = v;
                *at_y = Y * k + i;
                *at_x = X * k + j;
            }
        }
    return best;
}

/* A conv layer's forward term into acc: P(W_l * src)[c, Y, X] << fwd[c] + b[c] << (fwd[c] + pool_shift), with P
   the window's maximum, its sum (an average pool: the mean at pool_shift more bits) or z itself. */
static void conv_forward(const ep_net_t *n, int l, const source_t *src, int64_t *acc)
{
    const ep_layer_t *ly = &n->layer[l];
    const ep_conv_t *g = &ly->conv;
    const ep_tensor_t *w = &n->tensor[4 * l + T_W];
    const int32_t *bv = (const int32_t *)n->tensor[4 * l + T_B].data;
    const uint8_t *shift = n->tensor[4 * l + T_SHIFT].data;
    uint8_t k = g->pool_size;
    uint32_t u = 0;
    for (uint16_t c = 0; c < g->channels; c++)
        for (uint32_t Y = 0; Y < g->out_h; Y++)
            for (uint32_t X = 0; X < g->out_w; X++, u++) {
                int64_t m = 0;
                uint32_t y, x;
                if (g->pool == POOL_MAX)
                    m = window_max(ly, w, src, c, Y, X, &y, &x);
                else
                    for (uint8_t i = 0; i < k; i++)
                        for (uint8_t j = 0; j < k; j++)
                            m = wadd(m, conv_at(ly, w, src, c, Y * k + i, X * k + j));
                acc[u] = wadd(shl(m, shift[c]), shl(bv[c], shift[c] + g->pool_shift));
            }
}

#ifndef EP_ACCEL /* the accelerator runs the steps (dense layers only) */
/* The feedback of conv layer i+1 into layer i: each state above goes back onto its conv grid (max pool: to its
   window's first maximum in W_{i+1} * own, the layer's states before this update; average pool: to every
   position of its window) and through the transposed convolution with F (W tied, B untied), << fb[o]. */
static void conv_feedback(const ep_net_t *n, int i, const uint16_t *own, const uint16_t *above, int64_t *acc)
{
    const ep_layer_t *up = &n->layer[i + 1];
    const ep_conv_t *g = &up->conv;
    const ep_tensor_t *w = &n->tensor[4 * (i + 1) + T_W];
    const ep_tensor_t *f = &n->tensor[4 * (i + 1) + ((n->flags & NET_UNTIED) ? T_FB : T_W)];
    const uint8_t *fb = n->tensor[4 * (i + 1) + T_SHIFT].data + up->rows;
    const source_t src = {NULL, 0, own};
    uint8_t k = g->pool_size;
    uint32_t u = 0;
    for (uint16_t o = 0; o < g->channels; o++)
        for (uint32_t Y = 0; Y < g->out_h; Y++)
            for (uint32_t X = 0; X < g->out_w; X++, u++) {
                int64_t sv = above[u];
                if (sv == 0)
                    continue;
                uint32_t y0 = Y * k, x0 = X * k, span = k;
                if (g->pool == POOL_MAX) {
                    window_max(up, w, &src, o, Y, X, &y0, &x0);
                    span = 1;
                }
                for (uint32_t y = y0; y < y0 + span; y++)
                    for (uint32_t x = x0; x < x0 + span; x++) {
                        uint32_t wi = (uint32_t)o * up->fan_in;
                        for (uint16_t ci = 0; ci < g->in_c; ci++)
                            for (uint8_t a = 0; a < g->kernel; a++) {
                                int32_t yy = (int32_t)(y * g->stride + a) - g->padding;
                                for (uint8_t b = 0; b < g->kernel; b++, wi++) {
                                    int32_t xx = (int32_t)(x * g->stride + b) - g->padding;
                                    if (yy < 0 || yy >= g->in_h || xx < 0 || xx >= g->in_w)
                                        continue;
                                    size_t at = ((size_t)ci * g->in_h + (uint32_t)yy) * g->in_w + (uint32_t)xx;
                                    acc[at] = wadd(acc[at], shl(tget(f, wi) * sv, fb[o]));
                                }
                            }
                    }
            }
}

#endif

/* Layer 1's forward term of sample b: (sum_j W_1[c,j] x[j] + b_1[c]) << fwd_1[c], or a conv layer's. */
static void compute_drive(ep_net_t *n, uint16_t b)
{
    const ep_layer_t *ly = &n->layer[0];
    const ep_tensor_t *w = &n->tensor[T_W], *bias = &n->tensor[T_B], *sh = &n->tensor[T_SHIFT];
    const uint8_t *x = n->input + (size_t)b * n->input_size * dtype_size(n->input_dtype);
    if (ly->is_conv) {
        const source_t src = {x, n->input_dtype, NULL};
        conv_forward(n, 0, &src, n->drive + (size_t)b * ly->units);
        n->drive_ok[b] = 1;
        return;
    }
    for (uint16_t c = 0; c < ly->units; c++) {
        int64_t sum = 0;
        for (uint16_t j = 0; j < ly->fan_in; j++)
            sum += tget(w, (uint32_t)c * ly->fan_in + j) * dtype_get(n->input_dtype, x, j);
        n->drive[(size_t)b * ly->units + c] = shl(sum + tget(bias, c), sh->data[c]);
    }
    n->drive_ok[b] = 1;
}

/* The CE readout's class scores o[c] of last-layer states s_L, in 64 bits (no saturation). */
static void class_scores(const ep_net_t *n, const uint16_t *s_last, int64_t *o)
{
    const ep_tensor_t *w = &n->tensor[4 * n->layers + T_W];
    const uint8_t *out = n->tensor[4 * n->layers + T_SHIFT].data;
    for (uint16_t c = 0; c < n->classes; c++)
        o[c] = shl(dot_w(w, c, s_last, n->layer[n->layers - 1].units) + tget(&n->tensor[4 * n->layers + T_B], c),
                   out[c]);
}

#ifndef EP_NO_CE_NUDGE
/* round(2^15 * 2^(-r/64)), r = 0 ... 63: the integer softmax's table (docs/quantize.md). */
static const uint16_t EXP_TABLE[64] = {
    32768, 32415, 32066, 31720, 31379, 31041, 30706, 30376, 30048, 29725, 29405, 29088, 28774, 28464, 28158, 27855,
    27554, 27258, 26964, 26674, 26386, 26102, 25821, 25543, 25268, 24995, 24726, 24460, 24196, 23936, 23678, 23423,
    23170, 22921, 22674, 22430, 22188, 21949, 21713, 21479, 21247, 21019, 20792, 20568, 20347, 20127, 19911, 19696,
    19484, 19274, 19066, 18861, 18658, 18457, 18258, 18061, 17867, 17674, 17484, 17296, 17109, 16925, 16743, 16562};

/* softmax_fixed of quantize/fixed_point.py: p[c] (16 fractional bits) of scores o[c]; shift = F_out + 15 - 6. */
static void softmax_q16(const int64_t *o, uint16_t classes, int shift, int64_t *p)
{
    int64_t top = o[0], total = 0;
    for (uint16_t c = 1; c < classes; c++)
        top = o[c] > top ? o[c] : top;
    for (uint16_t c = 0; c < classes; c++) {
        int64_t e = -ep_round_shift((o[c] - top) * 47274, shift); /* -exponent in units of 2^-6, >= 0 */
        int64_t whole = e >> 6;
        p[c] = ep_round_shift(EXP_TABLE[e & 63], (int)(whole > 16 ? 16 : whole));
        total += p[c];
    }
    for (uint16_t c = 0; c < classes; c++)
        p[c] = ((p[c] << 17) + total) / (2 * total);
}

/* The CE nudge of the last layer into acc: round_half_even(beta_q (g @ W_out') / 2^nudge_shift). */
static void ce_nudge(ep_net_t *n, uint16_t b, const uint16_t *cur, int32_t beta_q, int64_t *acc)
{
    const ep_layer_t *ly = &n->layer[n->layers - 1];
    const ep_tensor_t *w = &n->tensor[4 * n->layers + T_W];
    const uint8_t *out = n->tensor[4 * n->layers + T_SHIFT].data;
    class_scores(n, cur, n->scores);
    softmax_q16(n->scores, n->classes, n->softmax_shift, n->probs);
    for (uint16_t i = 0; i < n->classes; i++) /* g = onehot << 16 - p */
        n->probs[i] = (i == n->target[b] ? (int64_t)1 << 16 : 0) - n->probs[i];
    for (uint16_t c = 0; c < ly->units; c++) {
        int64_t g = 0;
        for (uint16_t i = 0; i < n->classes; i++)
            g = wadd(g, n->probs[i] * shl(tget(w, (uint32_t)i * ly->units + c), out[i]));
        acc[c] = wadd(acc[c], ep_round_shift((int64_t)beta_q * g, n->nudge_shift));
    }
}

#endif

#ifndef EP_ACCEL /* the accelerator runs the steps */
/* One layer (index i) of sample b; below: the states under it (NULL for layer 1). Returns the largest move. */
static uint32_t settle(ep_net_t *n, int i, uint16_t b, const uint16_t *below, uint16_t *s, int32_t beta_q,
                       int sync)
{
    const ep_layer_t *ly = &n->layer[i];
    const uint8_t *shift = n->tensor[4 * i + T_SHIFT].data;
    uint16_t *cur = s + ly->offset;
    int64_t *acc = n->acc;
    if (i == 0) {
        memcpy(acc, n->drive + (size_t)b * ly->units, (size_t)ly->units * sizeof *acc);
    } else if (ly->is_conv) {
        const source_t src = {NULL, 0, below};
        conv_forward(n, i, &src, acc);
    } else {
        const ep_tensor_t *w = &n->tensor[4 * i + T_W], *bias = &n->tensor[4 * i + T_B];
        const int32_t *bv = (const int32_t *)bias->data;
        for (uint16_t c = 0; c < ly->units; c++)
            acc[c] = shl(dot_w(w, c, below, ly->fan_in) + bv[c], shift[c]);
    }
    if (i + 1 < n->layers && n->layer[i + 1].is_conv) {
        conv_feedback(n, i, cur, s + n->layer[i + 1].offset, acc);
    } else if (i + 1 < n->layers) { /* feedback: sum_k (F_{l+1}[k,c] s_{l+1}[k]) << fb_{l+1}[k] */
        const ep_layer_t *up = &n->layer[i + 1];
        const ep_tensor_t *f = &n->tensor[4 * (i + 1) + ((n->flags & NET_UNTIED) ? T_FB : T_W)];
        const uint8_t *fb = n->tensor[4 * (i + 1) + T_SHIFT].data + up->units;
        const uint16_t *above = s + up->offset;
        for (uint16_t k = 0; k < up->units; k++) {
            int64_t sk = above[k];
            if (sk == 0)
                continue;
            if (f->dtype == DT_I8) {
                const int8_t *r = (const int8_t *)f->data + (size_t)k * ly->units;
                for (uint16_t c = 0; c < ly->units; c++)
                    acc[c] = wadd(acc[c], shl(r[c] * sk, fb[k]));
            } else {
                const int16_t *r = (const int16_t *)f->data + (size_t)k * ly->units;
                for (uint16_t c = 0; c < ly->units; c++)
                    acc[c] = wadd(acc[c], shl(r[c] * sk, fb[k]));
            }
        }
#ifndef EP_NO_CE_NUDGE
    } else if (beta_q != 0 && (n->flags & NET_CE)) {
        ce_nudge(n, b, cur, beta_q, acc);
#endif
    } else if (beta_q != 0) { /* the MSE nudge of the last layer */
        int64_t one = (int64_t)1 << n->state_bits;
        uint16_t t = n->target[b];
        for (uint16_t c = 0; c < ly->units; c++)
            acc[c] = wadd(acc[c], shl((int64_t)beta_q * ((c == t ? one : 0) - cur[c]), n->nudge_shift));
    }
    if (sync)
        memcpy(n->saved, cur, (size_t)ly->units * sizeof *cur);
    int64_t smax = ((int64_t)1 << n->state_bits) - 1;
    uint32_t moved = 0;
    for (uint16_t c = 0; c < ly->units; c++) {
        int64_t v = ep_round_shift(acc[c], ly->state_shift);
        v = v < 0 ? 0 : v > smax ? smax : v;
        uint32_t d = (uint32_t)(v > cur[c] ? v - cur[c] : cur[c] - v);
        if (d > moved)
            moved = d;
        cur[c] = (uint16_t)v;
    }
    return moved;
}

static uint32_t step_sample(ep_net_t *n, uint16_t b, int32_t beta_q)
{
    uint16_t *s = n->states[SNAP_CURRENT] + (size_t)b * n->total_units;
    uint32_t moved = 0, d;
    if (n->flags & NET_ALTERNATING) {
        for (int parity = 0; parity < 2; parity++)
            for (int i = parity; i < n->layers; i += 2) {
                d = settle(n, i, b, i ? s + n->layer[i - 1].offset : NULL, s, beta_q, 0);
                moved = d > moved ? d : moved;
            }
    } else { /* synchronous: layer i reads the old states of layer i-1, saved before they were replaced */
        for (int i = 0; i < n->layers; i++) {
            d = settle(n, i, b, i ? n->saved : NULL, s, beta_q, 1);
            moved = d > moved ? d : moved;
        }
    }
    return moved;
}

#endif

static int all_committed(const ep_net_t *n)
{
    for (int id = 0; id < EP_MAX_TENSORS; id++)
        if (n->tensor[id].exists && !n->tensor[id].committed)
            return 0;
    return 1;
}

static void copy_rows(ep_net_t *n, int to, int from)
{
    memcpy(n->states[to], n->states[from], (size_t)n->batch * n->total_units * sizeof(uint16_t));
    memcpy(n->resid[to], n->resid[from], (size_t)n->batch * sizeof(uint16_t));
}

int ep_relax(ep_net_t *n, uint8_t phase, uint8_t init, uint32_t steps, int32_t beta_q, uint32_t tolerance,
             ep_relax_out_t *out, uint8_t *field)
{
    if (phase > 2) BAD(0);
    if (init > 4) BAD(1);
    if (steps < 1 || steps > EP_MAX_STEPS)
        return ST_OUT_OF_RANGE;
    if (!n->configured || !all_committed(n) || n->batch == 0)
        return ST_NOT_CONFIGURED;
#ifdef EP_NO_CE_NUDGE
    if (beta_q != 0 && (n->flags & NET_CE)) BAD(3);
#endif
    if (beta_q != 0 && !n->targets_set)
        return ST_NOT_CONFIGURED;
    for (uint16_t b = 0; b < n->batch; b++)
        if (!n->drive_ok[b])
            compute_drive(n, b);
    if (init == 0) {
        memset(n->states[SNAP_CURRENT], 0, (size_t)n->batch * n->total_units * sizeof(uint16_t));
        memset(n->resid[SNAP_CURRENT], 0, (size_t)n->batch * sizeof(uint16_t));
    } else if (init >= 2) {
        copy_rows(n, SNAP_CURRENT, init - 2);
    }
    uint32_t moved = 0;
    uint16_t done = 0;
    out->converged = 0;
#ifdef EP_ACCEL
    moved = ep_accel_relax(n, steps, beta_q, tolerance, &done, &out->converged);
#else
    while (done < steps) {
        moved = 0;
        for (uint16_t b = 0; b < n->batch; b++) {
            uint32_t d = step_sample(n, b, beta_q);
            n->resid[SNAP_CURRENT][b] = (uint16_t)d;
            moved = d > moved ? d : moved;
        }
        done++;
        if (tolerance != 0xFFFFFFFFu && moved <= tolerance) {
            out->converged = 1;
            break;
        }
    }
#endif
    if (tolerance == 0xFFFFFFFFu)
        out->converged = moved == 0;
    copy_rows(n, phase, SNAP_CURRENT);
    out->steps_done = done;
    out->max_delta = moved;
    return (tolerance != 0xFFFFFFFFu && !out->converged) ? ST_NOT_CONVERGED : ST_OK;
}

int ep_read_states(ep_net_t *n, uint8_t snapshot, uint8_t layer, uint16_t offset, uint16_t count, uint8_t *out,
                   size_t cap, size_t *len, uint8_t *field)
{
    if (!n->configured)
        return ST_NOT_CONFIGURED;
    if (snapshot >= SNAP_COUNT) BAD(0);
    int scores = layer == 0xF0, resid = layer == 0xF1;
    if (!scores && !resid && (layer < 1 || layer > n->layers)) BAD(1);
    int ce = (n->flags & NET_CE) != 0;
    const ep_layer_t *last = &n->layer[n->layers - 1];
    uint16_t cols = scores ? (ce ? n->classes : last->units) : resid ? 1 : n->layer[layer - 1].units;
    uint8_t dtype = scores ? DT_I32 : resid ? DT_U16 : n->state_dtype;
    if (offset > n->max_batch || count > n->max_batch - offset)
        return ST_OUT_OF_RANGE;
    size_t item = dtype_size(dtype);
    if (7 + (uint64_t)count * cols * item > cap)
        return ST_OUT_OF_RANGE;
    if (scores && ce) {
        for (int r = 0; r < 4; r++)
            if (r != T_FB && !n->tensor[4 * n->layers + r].committed)
                return ST_NOT_CONFIGURED;
    }
    uint16_t shape[2] = {count, cols};
    int8_t frac = (int8_t)((!scores && !resid) || (scores && !ce) ? n->state_bits : 0);
    size_t h = tensor_header(out, dtype, frac, 2, shape);
    uint8_t *d = out + h;
    for (uint16_t r = 0; r < count; r++) {
        size_t row = (size_t)offset + r;
        const uint16_t *s = n->states[snapshot] + row * n->total_units;
        for (uint16_t c = 0; c < cols; c++) {
            int64_t v;
            if (resid) {
                v = n->resid[snapshot][row];
            } else if (!scores) {
                v = s[n->layer[layer - 1].offset + c];
            } else if (!ce) {
                v = s[last->offset + c];
            } else { /* o[c] = (sum_k W_out[c,k] s_L[k] + b_out[c]) << out[c], saturated to i32 */
                if (c == 0)
                    class_scores(n, s + last->offset, n->scores);
                v = n->scores[c];
                v = v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v;
            }
            dtype_put(dtype, d, (size_t)r * cols + c, v);
        }
    }
    *len = h + (size_t)count * cols * item;
    return ST_OK;
}
