/* RELAX on the RTL core: the firmware's network (ep_net_t) laid out in the core's memories as
   firmware_interface/fpga/layout.py lays it out, and each sample relaxed by the Verilated core. */
#include "accel.h"

#include "core_bus.h"

enum { R_CTRL = 0, R_LAYER = 1, R_WEIGHT = 2, R_BIAS = 3, R_FWDSH = 4, R_FBSH = 5, R_STATE = 6, R_INPUT = 7 };
enum { CFG = 2, INPUT_SIZE = 3, STEPS = 4, BETA_Q = 5, TARGET = 6, NUDGE_SHIFT = 7, MAX_DELTA = 8 };
enum { T_W = 0, T_B = 1, T_FB = 2, T_SHIFT = 3 };

static uint32_t addr(uint32_t region, uint32_t offset) { return region << 20 | offset; }

static uint32_t loaded_generation = 0xFFFFFFFFu;

static uint32_t groups(uint32_t units) { return (units + EP_CORE_LANES - 1) / EP_CORE_LANES; }

int ep_accel_check(uint8_t layers, const uint16_t *units, uint16_t input_size)
{
    uint32_t total = 0, words = 0;
    if (layers > EP_CORE_MAX_LAYERS || input_size > EP_CORE_IDEPTH || units[0] > EP_CORE_DDEPTH)
        return 0;
    for (uint8_t l = 0; l < layers; l++) {
        uint32_t fan_in = l ? units[l - 1] : input_size;
        total += units[l];
        words += groups(units[l]) * fan_in + (l + 1 < layers ? groups(units[l]) * units[l + 1] : 0);
    }
    return total <= EP_CORE_UDEPTH && words <= EP_CORE_WDEPTH;
}

static int64_t get(const ep_tensor_t *t, uint32_t i) { return dtype_get(t->dtype, t->data, i); }

/* Row c of a (count x width) matrix into bank c % LANES, group c / LANES after base. */
static void tiles(const ep_tensor_t *t, uint32_t count, uint32_t width, int transpose, uint32_t base)
{
    for (uint32_t c = 0; c < count; c++)
        for (uint32_t j = 0; j < width; j++) {
            int64_t v = transpose ? get(t, j * count + c) : get(t, c * width + j);
            core_bus_write(addr(R_WEIGHT, (c % EP_CORE_LANES) << 16 | (base + c / EP_CORE_LANES * width + j)),
                           (uint32_t)v & 0xFFFFu);
        }
}

static void load(const ep_net_t *n)
{
    uint32_t base = 0;
    core_bus_write(addr(R_CTRL, CFG), n->layers | (n->flags & NET_ALTERNATING) << 8 |
                                          ((n->flags & NET_SIGNED_INPUT) ? 1u : 0u) << 9 | (uint32_t)n->state_bits << 16);
    core_bus_write(addr(R_CTRL, INPUT_SIZE), n->input_size);
    core_bus_write(addr(R_CTRL, NUDGE_SHIFT), n->nudge_shift);
    for (uint8_t i = 0; i < n->layers; i++) {
        const ep_layer_t *ly = &n->layer[i];
        uint32_t w_base = base, fb_base;
        base += groups(ly->units) * ly->fan_in;
        fb_base = base;
        tiles(&n->tensor[4 * i + T_W], ly->units, ly->fan_in, 0, w_base);
        if (i + 1 < n->layers) {
            const ep_layer_t *up = &n->layer[i + 1];
            const ep_tensor_t *f = &n->tensor[4 * (i + 1) + ((n->flags & NET_UNTIED) ? T_FB : T_W)];
            tiles(f, ly->units, up->units, 1, fb_base);
            base += groups(ly->units) * up->units;
        }
        uint32_t fields[5] = {ly->units, ly->offset, w_base, fb_base, (uint32_t)(int32_t)ly->state_shift & 0x7Fu};
        for (uint32_t k = 0; k < 5; k++)
            core_bus_write(addr(R_LAYER, 8u * i + k), fields[k]);
        const ep_tensor_t *b = &n->tensor[4 * i + T_B], *sh = &n->tensor[4 * i + T_SHIFT];
        for (uint32_t c = 0; c < ly->units; c++) {
            core_bus_write(addr(R_BIAS, ly->offset + c), (uint32_t)get(b, c));
            core_bus_write(addr(R_FWDSH, ly->offset + c), (uint32_t)get(sh, c));
            core_bus_write(addr(R_FBSH, ly->offset + c), (uint32_t)get(sh, ly->units + c));
        }
    }
}

/* Relaxes sample b for `steps` steps from its current states; returns the largest move of the last step. */
static uint32_t relax_sample(ep_net_t *n, uint16_t b, uint32_t steps, int32_t beta_q)
{
    size_t isize = dtype_size(n->input_dtype);
    const uint8_t *x = n->input + (size_t)b * n->input_size * isize;
    uint16_t *s = n->states[SNAP_CURRENT] + (size_t)b * n->total_units;
    for (uint32_t j = 0; j < n->input_size; j++)
        core_bus_write(addr(R_INPUT, j), (uint32_t)dtype_get(n->input_dtype, x, j) & 0xFFFFu);
    for (uint32_t u = 0; u < n->total_units; u++)
        core_bus_write(addr(R_STATE, u), s[u]);
    core_bus_write(addr(R_CTRL, STEPS), steps);
    core_bus_write(addr(R_CTRL, BETA_Q), (uint32_t)beta_q);
    core_bus_write(addr(R_CTRL, TARGET), beta_q ? n->target[b] : 0);
    core_bus_run();
    for (uint32_t u = 0; u < n->total_units; u++)
        s[u] = (uint16_t)core_bus_read(addr(R_STATE, u));
    return core_bus_read(addr(R_CTRL, MAX_DELTA));
}

uint32_t ep_accel_relax(ep_net_t *n, uint32_t steps, int32_t beta_q, uint32_t tolerance, uint16_t *done,
                        uint8_t *converged)
{
    if (loaded_generation != ep_weights_generation()) {
        load(n);
        loaded_generation = ep_weights_generation();
    }
    int early = tolerance != 0xFFFFFFFFu;
    uint32_t moved = 0, count = 0;
    *converged = 0;
    while (count < steps) {
        uint32_t chunk = early ? 1 : steps; /* with a tolerance, every step ends with a check over the batch */
        moved = 0;
        for (uint16_t b = 0; b < n->batch; b++) {
            uint32_t d = relax_sample(n, b, chunk, beta_q);
            n->resid[SNAP_CURRENT][b] = (uint16_t)d;
            moved = d > moved ? d : moved;
        }
        count += chunk;
        if (early && moved <= tolerance) {
            *converged = 1;
            break;
        }
    }
    *done = (uint16_t)count;
    return moved;
}
