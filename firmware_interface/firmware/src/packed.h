/* Packed tensors (docs/board_protocol.md, section 4.1): zero runs, literal runs and values in three Rice-coded
   bit streams, for APPLY_DELTA_PACKED and SET_INPUT_PACKED. */
#ifndef EP_PACKED_H
#define EP_PACKED_H
#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* flags bits 0-1, the predictor a nonzero value is coded against: */
#define PACKED_PRED_NONE 0u  /* the value itself */
#define PACKED_PRED_PREV 1u  /* the previous nonzero value */
#define PACKED_PRED_MED 2u   /* median edge detector over rows of `width` elements (left, above, above-left) */
#define PACKED_PRED_MASK 3u
#define PACKED_ESCAPE 16u    /* 16 ones in a unary prefix: the value follows as 32 raw bits */
#define PACKED_MAX_K 31u

/* Decodes a packed tensor that fills exactly len bytes into buf (cap bytes) and describes it in *t (frac 0,
   data = buf). Returns ST_OK, ST_BAD_LENGTH (header or stream lengths cut short), ST_BAD_ARGUMENT (unknown
   dtype or flags, ndim > 4, k > 31, reserved byte set, width
   0 with the MED predictor or nonzero without it, a malformed stream: overrun, a run past the end,
   unused bytes or nonzero padding), or ST_OUT_OF_RANGE (decodes to more than cap bytes, or a value outside
   the dtype). Nothing is decoded into buf beyond what *t describes; buf is scratch on failure. */
int packed_decode(const uint8_t *p, size_t len, uint8_t *buf, size_t cap, tensor_view_t *t);
#endif
