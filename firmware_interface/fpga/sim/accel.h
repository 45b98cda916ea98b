/* The fpga-sim build's RELAX: the network in the Verilated RTL core (firmware_interface/fpga/rtl). */
#ifndef EP_ACCEL_H
#define EP_ACCEL_H
#include <stdint.h>

#include "ep_net.h"

/* The core's parameters in this build (the Makefile passes the same to Verilator). */
#define EP_CORE_LANES 16
#define EP_CORE_MAX_LAYERS 16
#define EP_CORE_WDEPTH 65536u
#define EP_CORE_UDEPTH 8192u
#define EP_CORE_IDEPTH 4096u
#define EP_CORE_DDEPTH 4096u

/* Whether a network of these layers fits the core's memories (CONFIGURE answers NO_MEMORY if not). */
int ep_accel_check(uint8_t layers, const uint16_t *units, uint16_t input_size);
/* ep_relax's step loop on the core: returns the largest move of the last step; sets steps done, converged. */
uint32_t ep_accel_relax(ep_net_t *n, uint32_t steps, int32_t beta_q, uint32_t tolerance, uint16_t *done,
                        uint8_t *converged);
#endif
