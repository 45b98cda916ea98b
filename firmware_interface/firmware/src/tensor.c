#include "tensor.h"

#include "protocol.h"
#include "wire.h"

size_t dtype_size(uint8_t dtype)
{
    switch (dtype) {
    case DT_I8: case DT_U8: return 1;
    case DT_I16: case DT_U16: return 2;
    case DT_I32: return 4;
    default: return 0;
    }
}

int tensor_parse(const uint8_t *p, size_t len, tensor_view_t *t)
{
    if (len < 3)
        return ST_BAD_LENGTH;
    t->dtype = p[0];
    t->frac = (int8_t)p[1];
    t->ndim = p[2];
    size_t item = dtype_size(t->dtype);
    if (item == 0 || t->ndim > TENSOR_MAX_NDIM)
        return ST_BAD_ARGUMENT;
    size_t head = 3 + 2 * (size_t)t->ndim;
    if (len < head)
        return ST_BAD_LENGTH;
    uint64_t count = 1; /* at most 65535^4 < 2^64 */
    for (uint8_t i = 0; i < t->ndim; i++) {
        t->shape[i] = get_u16(p + 3 + 2 * i);
        count *= t->shape[i];
    }
    if (count > (len - head) || count * item != len - head)
        return ST_BAD_LENGTH;
    t->count = (uint32_t)count;
    t->data = p + head;
    return ST_OK;
}

int64_t dtype_get(uint8_t dtype, const uint8_t *d, size_t i)
{
    switch (dtype) {
    case DT_I8: return (int8_t)d[i];
    case DT_U8: return d[i];
    case DT_I16: return (int16_t)get_u16(d + 2 * i);
    case DT_U16: return get_u16(d + 2 * i);
    case DT_I32: return get_i32(d + 4 * i);
    default: return 0;
    }
}

void dtype_put(uint8_t dtype, uint8_t *d, size_t i, int64_t v)
{
    switch (dtype) {
    case DT_I8: case DT_U8: d[i] = (uint8_t)v; break;
    case DT_I16: case DT_U16: put_u16(d + 2 * i, (uint16_t)v); break;
    case DT_I32: put_u32(d + 4 * i, (uint32_t)v); break;
    default: break;
    }
}

size_t tensor_header(uint8_t *out, uint8_t dtype, int8_t frac, uint8_t ndim, const uint16_t *shape)
{
    out[0] = dtype;
    out[1] = (uint8_t)frac;
    out[2] = ndim;
    for (uint8_t i = 0; i < ndim; i++)
        put_u16(out + 3 + 2 * i, shape[i]);
    return 3 + 2 * (size_t)ndim;
}
