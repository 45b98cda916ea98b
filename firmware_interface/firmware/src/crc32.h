/* zlib's CRC-32 (reflected, polynomial 0xEDB88320): crc32_update(0, "123456789", 9) == 0xCBF43926. */
#ifndef EP_CRC32_H
#define EP_CRC32_H
#include <stddef.h>
#include <stdint.h>

/* Continue a CRC like zlib.crc32(data, crc); start with crc = 0. */
uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t len);
#endif
