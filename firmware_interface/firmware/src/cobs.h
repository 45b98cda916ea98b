/* Consistent overhead byte stuffing: removes every 0x00 so that 0x00 can delimit frames. */
#ifndef EP_COBS_H
#define EP_COBS_H
#include <stddef.h>
#include <stdint.h>

/* Encodes n bytes into out (room for n + n/254 + 1 bytes); returns the length, no delimiter. */
size_t cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* Decodes n bytes (no delimiter) into out (cap bytes); returns the length, or -1 if invalid or too long. */
long cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap);
#endif
