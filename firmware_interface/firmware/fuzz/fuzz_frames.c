/* libFuzzer harness: arbitrary bytes through the stream receiver and the dispatcher.

   The first input byte is a mode: bit 0 clear feeds the rest as raw wire bytes (resync, COBS, overflow,
   CRC). Bit 0 set reads the rest as records [len u8][body bytes]: each body gets a request header
   (bit 2: its length field fixed up), a valid CRC (unless bit 3), and is COBS-framed, so the dispatcher and
   every command's payload validation are fuzzed. Bit 1 sends a HELLO first. Every byte the board sends
   back must be well-formed frames with valid CRCs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "board.h"
#include "cobs.h"
#include "crc32.h"
#include "port.h"
#include "protocol.h"
#include "wire.h"

static uint8_t arena[1u << 16];
static int resets;
static uint8_t out_enc[EP_MAX_ENCODED + 1];
static size_t out_len;

/* Checks each frame the board writes. */
void port_write(const uint8_t *data, size_t len)
{
    uint8_t body[EP_MAX_BODY];
    for (size_t i = 0; i < len; i++) {
        if (data[i] != 0) {
            if (out_len >= sizeof out_enc)
                abort(); /* the board sent an over-long frame */
            out_enc[out_len++] = data[i];
            continue;
        }
        long n = cobs_decode(out_enc, out_len, body, sizeof body);
        out_len = 0;
        if (n < EP_BODY_MIN || (size_t)n != EP_BODY_MIN + get_u16(body + 6) ||
            crc32_update(0, body, (size_t)n - 4) != get_u32(body + n - 4) || body[0] != EP_PROTO_MAJOR)
            abort();
    }
}
uint32_t port_millis(void) { return 0; }
uint32_t port_boot_id(void) { return 0x1234u + (uint32_t)resets; }
void port_reset(void) { resets++; }
int port_read_byte(void) { return -1; }

static const board_config_t cfg = {arena, sizeof arena, 7, 16};

static void feed(const uint8_t *d, size_t n)
{
    if (board_feed(d, n))
        board_init(&cfg);
}

/* Frames body[0..n) (header and payload) as a request with sequence seq. */
static void send_body(uint8_t *body, size_t n, uint16_t len_field, int bad_crc, uint16_t seq)
{
    uint8_t enc[EP_MAX_ENCODED + 2];
    body[0] = EP_PROTO_MAJOR;
    body[1] = KIND_REQUEST;
    put_u16(body + 2, seq);
    body[5] = 0;
    put_u16(body + 6, len_field);
    put_u32(body + n, crc32_update(0, body, n) ^ (bad_crc ? 1u : 0u));
    size_t len = cobs_encode(body, n + 4, enc);
    enc[len++] = 0;
    feed(enc, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    resets = 0;
    out_len = 0;
    board_init(&cfg);
    if (size == 0)
        return 0;
    uint8_t mode = data[0];
    data++, size--;
    uint16_t seq = 1;
    uint8_t body[EP_MAX_BODY];
    if (mode & 2) {
        uint8_t hello[EP_HEADER + 2 + 4] = {0, 0, 0, 0, CMD_HELLO, 0, 0, 0, 1, 1};
        send_body(hello, EP_HEADER + 2, 2, 0, seq++);
    }
    if (!(mode & 1)) {
        feed(data, size);
        return 0;
    }
    while (size > 0) {
        size_t n = data[0];
        data++, size--;
        if (n > size)
            n = size;
        if (n == 0)
            continue;
        body[4] = data[0] % 0x12; /* the command: mostly valid ones */
        /* the payload: the record's other bytes, repeated (mode bits 4-6) to reach long payloads */
        size_t reps = (mode >> 4) & 7, total = 0;
        for (size_t r = 0; r <= reps && total + n - 1 <= EP_MAX_PAYLOAD; r++, total += n - 1)
            memcpy(body + EP_HEADER + total, data + 1, n - 1);
        uint16_t len_field = (uint16_t)total;
        if ((mode & 4) && n >= 2)
            len_field ^= data[1] & 3; /* a wrong length field now and then */
        send_body(body, EP_HEADER + total, len_field, (mode & 8) != 0, (mode & 0x80) ? 0 : seq++);
        data += n, size -= n;
    }
    return 0;
}
