#include "frame.h"

#include "cobs.h"
#include "crc32.h"
#include "wire.h"

void frame_rx_init(frame_rx_t *rx)
{
    rx->enc_len = 0;
    rx->discarding = 0;
    rx->body_len = 0;
}

rx_event_t frame_rx_push(frame_rx_t *rx, uint8_t byte)
{
    if (byte == 0) {
        size_t n = rx->enc_len;
        int was_discarding = rx->discarding;
        rx->enc_len = 0;
        rx->discarding = 0;
        if (was_discarding || n == 0)
            return RX_NONE; /* the end of an overflow, or an empty frame (a bare delimiter) */
        long len = cobs_decode(rx->enc, n, rx->body, sizeof rx->body);
        if (len < 0)
            return RX_BAD_COBS;
        rx->body_len = (size_t)len;
        return RX_FRAME;
    }
    if (rx->discarding)
        return RX_NONE;
    if (rx->enc_len >= sizeof rx->enc) {
        rx->discarding = 1;
        rx->enc_len = 0;
        return RX_OVERFLOW;
    }
    rx->enc[rx->enc_len++] = byte;
    return RX_NONE;
}

void frame_header(uint8_t *body, uint8_t kind, uint16_t seq, uint8_t cmd, uint8_t status)
{
    body[0] = EP_PROTO_MAJOR;
    body[1] = kind;
    put_u16(body + 2, seq);
    body[4] = cmd;
    body[5] = status;
}

size_t frame_encode(uint8_t *body, uint16_t payload_len, uint8_t *out)
{
    put_u16(body + 6, payload_len);
    size_t n = EP_HEADER + (size_t)payload_len;
    put_u32(body + n, crc32_update(0, body, n));
    size_t len = cobs_encode(body, n + 4, out);
    out[len++] = 0;
    return len;
}
