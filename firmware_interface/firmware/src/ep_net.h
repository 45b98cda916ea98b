/* The integer EP network in a static arena: CONFIGURE, tensors, inputs, states and the relaxation
   (section 6 of docs/board_protocol.md; bit for bit the golden model quantize/fixed_point.py). */
#ifndef EP_NET_H
#define EP_NET_H
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"
#include "tensor.h"

enum { SNAP_FREE = 0, SNAP_PLUS = 1, SNAP_MINUS = 2, SNAP_CURRENT = 3, SNAP_COUNT = 4 };

#define NET_ALTERNATING 0x01u
#define NET_UNTIED 0x02u
#define NET_CE 0x04u
#define NET_SIGNED_INPUT 0x08u

typedef struct {
    uint8_t *data; /* native byte order; the wire dtype's width */
    uint32_t count;
    uint8_t dtype;
    uint8_t exists;
    uint8_t committed;
    int8_t frac; /* informative, as last written */
} ep_tensor_t;

enum { POOL_NONE = 0, POOL_MAX = 1, POOL_AVG = 2 };

/* A conv layer's geometry (protocol 1.2): input grid, channels, kernel, pooling; conv and pooled grids derived. */
typedef struct {
    uint16_t in_c, in_h, in_w, channels;
    uint8_t kernel, stride, padding, pool, pool_size;
    uint8_t pool_shift; /* average pool: 2 log2(pool_size), the mean's extra fractional bits; else 0 */
    uint16_t conv_h, conv_w, out_h, out_w;
} ep_conv_t;

typedef struct {
    uint16_t units;
    uint16_t fan_in; /* weights per row: units below (dense), in_c * kernel^2 (conv) */
    uint16_t rows;   /* rows of W_l, b_l and the shift table: units (dense), channels (conv) */
    int8_t state_shift;
    uint8_t is_conv;
    ep_conv_t conv;
    uint32_t offset; /* of this layer's units within a sample's state vector */
} ep_layer_t;

typedef struct {
    uint8_t *arena;
    uint32_t arena_size;
    uint32_t arena_used;
    uint16_t board_max_batch;

    uint8_t configured;
    uint8_t layers, flags, weight_bits, state_bits, input_bits, nudge_shift, softmax_shift;
    uint8_t input_dtype, weight_dtype, state_dtype;
    uint16_t max_batch, input_size, classes, widest;
    uint32_t total_units;
    ep_layer_t layer[EP_MAX_LAYERS];
    ep_tensor_t tensor[EP_MAX_TENSORS];

    uint8_t *input;     /* max_batch x input_size, input_dtype */
    int64_t *drive;     /* max_batch x units_1: layer 1's forward term, computed once per input */
    uint8_t *drive_ok;  /* max_batch */
    uint16_t *states[SNAP_COUNT]; /* max_batch x total_units */
    uint16_t *resid[SNAP_COUNT];  /* max_batch: the largest move of the last step */
    uint16_t *target;   /* max_batch */
    int64_t *acc;       /* widest: accumulators of one layer */
    uint16_t *saved;    /* widest: a layer's old states (synchronous schedule) */
    int64_t *scores;    /* classes: class scores (CE) */
    int64_t *probs;     /* classes: the CE nudge's softmax, then onehot - softmax */

    uint16_t batch;     /* active batch, 0 before the first SET_INPUT */
    uint8_t targets_set;
    uint32_t version;
} ep_net_t;

typedef struct {
    uint16_t steps_done;
    uint8_t converged;
    uint32_t max_delta;
} ep_relax_out_t;

/* Every function returns a status code; on ST_BAD_ARGUMENT *field names the request field (its index). */
void ep_init(ep_net_t *n, uint8_t *arena, uint32_t arena_size, uint16_t board_max_batch);
int ep_configure(ep_net_t *n, const uint8_t *p, size_t len, uint8_t *field);
int ep_write(ep_net_t *n, uint8_t id, uint32_t offset, const tensor_view_t *t, uint8_t *field);
int ep_read(ep_net_t *n, uint8_t id, uint32_t offset, uint16_t count, uint8_t *out, size_t cap, size_t *len,
            uint8_t *field);
int ep_commit(ep_net_t *n, uint8_t id, uint32_t crc, uint32_t version, uint32_t *board_crc, uint8_t *field);
int ep_apply_delta(ep_net_t *n, uint8_t id, uint32_t expected, uint32_t offset, const tensor_view_t *t,
                   uint32_t *saturated, uint8_t *field);
int ep_tensor_crc(ep_net_t *n, uint8_t id, uint32_t *crc, uint8_t *field);
int ep_set_input(ep_net_t *n, uint16_t batch, uint16_t offset, const tensor_view_t *t, uint8_t *field);
int ep_set_target(ep_net_t *n, uint16_t offset, const tensor_view_t *t, uint8_t *field);
int ep_relax(ep_net_t *n, uint8_t phase, uint8_t init, uint32_t steps, int32_t beta_q, uint32_t tolerance,
             ep_relax_out_t *out, uint8_t *field);
int ep_read_states(ep_net_t *n, uint8_t snapshot, uint8_t layer, uint16_t offset, uint16_t count, uint8_t *out,
                   size_t cap, size_t *len, uint8_t *field);
int ep_set_states(ep_net_t *n, uint8_t layer, uint16_t offset, const tensor_view_t *t, uint8_t *field);

/* A counter that changes whenever the network is configured or a weight is written (accelerators reload). */
uint32_t ep_weights_generation(void);

/* round_half_even(a / 2^k), a left shift for k <= 0 (|k| <= 62); wraps like int64 in torch. */
int64_t ep_round_shift(int64_t a, int k);
#endif
