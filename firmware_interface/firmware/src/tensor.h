/* Tensors in payloads: dtype u8 | frac_bits i8 | ndim u8 | shape u16 x ndim | data (LE, row-major). */
#ifndef EP_TENSOR_H
#define EP_TENSOR_H
#include <stddef.h>
#include <stdint.h>

#define TENSOR_MAX_NDIM 4

typedef struct {
    uint8_t dtype;
    int8_t frac;
    uint8_t ndim;
    uint16_t shape[TENSOR_MAX_NDIM];
    uint32_t count; /* elements */
    const uint8_t *data;
} tensor_view_t;

/* Parses a tensor that fills exactly len bytes. Returns ST_OK, ST_BAD_LENGTH (header cut short or data
   length != prod(shape) x itemsize) or ST_BAD_ARGUMENT (unknown dtype, ndim > 4). */
int tensor_parse(const uint8_t *p, size_t len, tensor_view_t *t);

size_t dtype_size(uint8_t dtype); /* 0 for an unknown dtype */
int64_t dtype_get(uint8_t dtype, const uint8_t *data, size_t index);
void dtype_put(uint8_t dtype, uint8_t *data, size_t index, int64_t value);

/* Writes a tensor header; returns its length (3 + 2 ndim). */
size_t tensor_header(uint8_t *out, uint8_t dtype, int8_t frac, uint8_t ndim, const uint16_t *shape);
#endif
