#include "packed.h"

#include <string.h>

#include "protocol.h"
#include "wire.h"

typedef struct {
    const uint8_t *p;
    size_t len;  /* bytes */
    size_t bit;  /* next bit, MSB first within a byte */
} bits_t;

/* The next n <= 32 bits, a byte's worth at a time. */
static int get_bits(bits_t *b, unsigned n, uint32_t *v)
{
    if (n > 8 * b->len - b->bit)
        return -1;
    uint32_t x = 0;
    while (n) {
        unsigned avail = 8 - (unsigned)(b->bit & 7), take = n < avail ? n : avail;
        uint32_t byte = b->p[b->bit >> 3];
        x = (x << take) | ((byte >> (avail - take)) & ((1u << take) - 1u));
        b->bit += take;
        n -= take;
    }
    *v = x;
    return 0;
}

/* One Rice code: q ones and a zero, then k bits (value = q * 2^k + bits); 16 ones: 32 raw bits follow.
 * The ones are counted a byte at a time. */
static int rice(bits_t *b, unsigned k, uint32_t *v)
{
    uint32_t q = 0, low;
    for (;;) {
        if (b->bit >= 8 * b->len)
            return -1;
        unsigned avail = 8 - (unsigned)(b->bit & 7);
        uint32_t rest = (uint32_t)(uint8_t)(b->p[b->bit >> 3] << (8 - avail)); /* the unread bits, at the top */
        unsigned ones = 0;
        while (ones < avail && (rest & (0x80u >> ones)))
            ones++;
        if (q + ones >= PACKED_ESCAPE) {
            b->bit += PACKED_ESCAPE - q;
            return get_bits(b, 32, v);
        }
        q += ones;
        if (ones < avail) {
            b->bit += ones + 1; /* the ones and their closing zero */
            break;
        }
        b->bit += avail;
    }
    if (get_bits(b, k, &low))
        return -1;
    uint64_t x = ((uint64_t)q << k) | low;
    if (x > 0xFFFFFFFFu)
        return -1;
    *v = (uint32_t)x;
    return 0;
}

/* Every byte of a stream used, the padding bits of its last byte zero. */
static int consumed(const bits_t *b)
{
    if ((b->bit + 7) / 8 != b->len)
        return 0;
    if (b->bit & 7)
        return (b->p[b->len - 1] & (0xFFu >> (b->bit & 7))) == 0;
    return 1;
}

static void dtype_range(uint8_t dtype, int64_t *lo, int64_t *hi)
{
    switch (dtype) {
    case DT_I8: *lo = -128; *hi = 127; break;
    case DT_U8: *lo = 0; *hi = 255; break;
    case DT_I16: *lo = -32768; *hi = 32767; break;
    case DT_U16: *lo = 0; *hi = 65535; break;
    default: *lo = INT32_MIN; *hi = INT32_MAX; break;
    }
}

/* JPEG-LS's median edge detector: a left, b above, c above-left (0 outside the rows). */
static int64_t predict(unsigned pred, uint8_t dtype, const uint8_t *buf, uint32_t pos, uint32_t width, int64_t prev)
{
    if (pred == PACKED_PRED_NONE)
        return 0;
    if (pred == PACKED_PRED_PREV)
        return prev;
    uint32_t col = pos % width;
    int64_t a = col ? dtype_get(dtype, buf, pos - 1) : 0;
    int64_t b = pos >= width ? dtype_get(dtype, buf, pos - width) : 0;
    int64_t c = col && pos >= width ? dtype_get(dtype, buf, pos - width - 1) : 0;
    int64_t mx = a > b ? a : b, mn = a > b ? b : a;
    return c >= mx ? mn : c <= mn ? mx : a + b - c;
}

int packed_decode(const uint8_t *p, size_t len, uint8_t *buf, size_t cap, tensor_view_t *t)
{
    if (len < 3)
        return ST_BAD_LENGTH;
    uint8_t dtype = p[0], flags = p[1], ndim = p[2];
    size_t item = dtype_size(dtype);
    unsigned pred = flags & PACKED_PRED_MASK;
    if (item == 0 || ndim > TENSOR_MAX_NDIM || (flags & ~PACKED_PRED_MASK) != 0 || pred > PACKED_PRED_MED)
        return ST_BAD_ARGUMENT;
    size_t head = 3 + 2 * (size_t)ndim + 10;
    if (len < head)
        return ST_BAD_LENGTH;
    uint64_t count = 1;
    for (uint8_t i = 0; i < ndim; i++) {
        t->shape[i] = get_u16(p + 3 + 2 * i);
        count *= t->shape[i];
    }
    const uint8_t *q = p + 3 + 2 * (size_t)ndim;
    unsigned kz = q[0], kl = q[1], kv = q[2];
    if (kz > PACKED_MAX_K || kl > PACKED_MAX_K || kv > PACKED_MAX_K || q[3] != 0)
        return ST_BAD_ARGUMENT;
    uint32_t width = get_u16(q + 4);
    if ((pred == PACKED_PRED_MED) != (width != 0))
        return ST_BAD_ARGUMENT;
    size_t zb = get_u16(q + 6), lb = get_u16(q + 8);
    if (zb + lb > len - head)
        return ST_BAD_LENGTH;
    if (count > cap / item)
        return ST_OUT_OF_RANGE;
    bits_t zs = {p + head, zb, 0}, ls = {p + head + zb, lb, 0}, vs = {p + head + zb + lb, len - head - zb - lb, 0};
    int64_t lo, hi, prev = 0;
    dtype_range(dtype, &lo, &hi);
    memset(buf, 0, (size_t)count * item);
    uint32_t pos = 0, n = (uint32_t)count, run, r;
    while (pos < n) {
        if (rice(&zs, kz, &run) || run > n - pos)
            return ST_BAD_ARGUMENT;
        pos += run;
        if (pos == n)
            break;
        if (rice(&ls, kl, &run) || run >= n - pos)
            return ST_BAD_ARGUMENT;
        for (uint32_t i = 0; i <= run; i++, pos++) {
            if (rice(&vs, kv, &r))
                return ST_BAD_ARGUMENT;
            int64_t x = ((int64_t)(r >> 1) ^ -(int64_t)(r & 1u)) + predict(pred, dtype, buf, pos, width, prev);
            if (x < lo || x > hi)
                return ST_OUT_OF_RANGE;
            dtype_put(dtype, buf, pos, x);
            prev = x;
        }
    }
    if (!consumed(&zs) || !consumed(&ls) || !consumed(&vs))
        return ST_BAD_ARGUMENT;
    t->dtype = dtype;
    t->frac = 0;
    t->ndim = ndim;
    t->count = n;
    t->data = buf;
    return ST_OK;
}
