/* The board: frames in, commands dispatched, responses out (sections 1 to 5 of docs/board_protocol.md). */
#ifndef EP_BOARD_H
#define EP_BOARD_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *arena;
    uint32_t arena_size;
    uint32_t device_id;
    uint16_t max_batch; /* the board's limit, advertised in HELLO */
} board_config_t;

/* (Re)initialises every state and sends the BOOT event (a new boot_id from port_boot_id). */
void board_init(const board_config_t *cfg);
/* Feeds received bytes. Returns 0 normally, 1 if a RESET was executed (the rest of data is dropped:
   the caller re-runs board_init, unless port_reset did not return). */
int board_feed(const uint8_t *data, size_t len);
#endif
