/* The Verilated ep_relax_core behind three calls: a bus write, a bus read, and a phase run to done. */
#ifndef EP_CORE_BUS_H
#define EP_CORE_BUS_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
void core_bus_write(uint32_t addr, uint32_t value);
uint32_t core_bus_read(uint32_t addr);
void core_bus_run(void); /* starts a phase and clocks the core until done */
#ifdef __cplusplus
}
#endif
#endif
