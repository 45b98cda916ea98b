/* SELF_TEST: bit 0 CRC-32 check value, bit 1 COBS round trip, bit 2 integer arithmetic (round half to even,
   wrapping shifts), bit 3 memory (the unused arena, at most 64 KiB). Unknown mask bits are ignored. */
#ifndef EP_SELFTEST_H
#define EP_SELFTEST_H
#include <stddef.h>
#include <stdint.h>

#define SELFTEST_ALL 0x0Fu

void selftest_run(uint32_t mask, uint8_t *scratch, size_t scratch_len, uint32_t *passed, uint32_t *failed);
#endif
