/* What a port (a board, the host process, QEMU) provides to the board core. */
#ifndef EP_PORT_H
#define EP_PORT_H
#include <stddef.h>
#include <stdint.h>

/* Sends bytes to the host; may block until they are queued. */
void port_write(const uint8_t *data, size_t len);
/* Milliseconds since some fixed point (wraps at 2^32). */
uint32_t port_millis(void);
/* An id that differs from the previous boot's (a counter kept over resets, a TRNG, ...). */
uint32_t port_boot_id(void);
/* Resets the board after RESET's response went out. A port may return (the host build, the fuzzer): the
   core then stops reading and the caller re-runs board_init, which sends the BOOT event. */
void port_reset(void);
/* Receives one byte: 0..255, or -1 if none is waiting (used by the main loop of a bare-metal port). */
int port_read_byte(void);
#endif
