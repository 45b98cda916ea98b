/* Frames on the byte stream: a receiver that resynchronises on 0x00, and the frame encoder. */
#ifndef EP_FRAME_H
#define EP_FRAME_H
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

typedef enum { RX_NONE, RX_FRAME, RX_BAD_COBS, RX_OVERFLOW } rx_event_t;

typedef struct {
    uint8_t enc[EP_MAX_ENCODED]; /* the encoded bytes since the last 0x00 */
    size_t enc_len;
    int discarding; /* overflowed: drop everything up to the next 0x00 */
    uint8_t body[EP_MAX_BODY];
    size_t body_len;
} frame_rx_t;

void frame_rx_init(frame_rx_t *rx);
/* Feeds one byte; RX_FRAME means rx->body holds body_len decoded bytes. */
rx_event_t frame_rx_push(frame_rx_t *rx, uint8_t byte);

/* Completes body (header bytes 0..5 and the payload filled in): writes the length and CRC, COBS-encodes
   it with the delimiter into out (room for EP_MAX_ENCODED + 1). Returns the encoded length. */
size_t frame_encode(uint8_t *body, uint16_t payload_len, uint8_t *out);
void frame_header(uint8_t *body, uint8_t kind, uint16_t seq, uint8_t cmd, uint8_t status);
#endif
