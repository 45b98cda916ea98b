#include "board.h"

#include <string.h>

#include "cobs.h"
#include "crc32.h"
#include "ep_net.h"
#include "frame.h"
#include "packed.h"
#include "port.h"
#include "protocol.h"
#include "selftest.h"
#include "tensor.h"
#include "wire.h"

typedef struct {
    board_config_t cfg;
    frame_rx_t rx;
    ep_net_t net;
    uint8_t resp[EP_MAX_BODY];          /* the response body being built */
    uint8_t cache[EP_MAX_ENCODED + 1];  /* the last response, encoded, for replays */
    size_t cache_len;
    uint8_t cache_valid;
    uint16_t cache_seq;
    uint32_t cache_crc;
    uint8_t hello_ok, reset_pending, last_error;
    uint32_t boot_id, boot_ms;
    uint32_t rx_frames, rx_dropped, rx_bad_crc, rx_overflow, naks_sent, replays, requests;
#ifndef EP_NO_PACKED
    uint8_t unpacked[EP_MAX_UNPACKED]; /* a packed tensor, decoded */
#endif
} board_t;

static board_t B;

static void send_boot_event(void)
{
    frame_header(B.resp, KIND_EVENT, 0, EVT_BOOT, ST_OK);
    put_u32(B.resp + EP_HEADER, B.boot_id);
    size_t len = frame_encode(B.resp, 4, B.cache);
    port_write(B.cache, len);
}

void board_init(const board_config_t *cfg)
{
    memset(&B, 0, sizeof B);
    B.cfg = *cfg;
    frame_rx_init(&B.rx);
    ep_init(&B.net, cfg->arena, cfg->arena_size, cfg->max_batch);
    B.boot_id = port_boot_id();
    B.boot_ms = port_millis();
    send_boot_event();
}

/* ---- commands; each returns a status and sets *olen (payload bytes written at out) ---- */

static int cmd_hello(const uint8_t *req, size_t n, uint8_t *out, size_t *olen)
{
    if (n != 2)
        return ST_BAD_LENGTH;
    if (req[0] > EP_PROTO_MAJOR || req[1] < EP_PROTO_MAJOR)
        return ST_BAD_VERSION;
    memset(out, 0, HELLO_RECORD_LEN);
    out[0] = EP_PROTO_MAJOR;
#ifdef EP_NO_PACKED
    out[1] = 0; /* protocol 1.0: no packed commands */
#else
    out[1] = EP_PROTO_MINOR;
#endif
    out[2] = EP_FW_MAJOR;
    out[3] = EP_FW_MINOR;
    out[4] = EP_FW_PATCH;
    put_u16(out + 6, EP_MAX_PAYLOAD);
    put_u32(out + 8, B.cfg.device_id);
    put_u32(out + 12, B.boot_id);
    put_u32(out + 16, CAP_MSE_NUDGE | CAP_CE_READOUT | CAP_ALTERNATING | CAP_UNTIED | CAP_EARLY_STOP |
                          CAP_SELF_TEST | CAP_SET_STATES
#ifndef EP_NO_CE_NUDGE
                          | CAP_CE_NUDGE
#endif
#ifndef EP_NO_CONV
                          | CAP_CONV
#endif
#ifndef EP_NO_PACKED
                          | CAP_PACKED
#endif
                          );
    put_u32(out + 20, B.cfg.arena_size);
    put_u16(out + 24, EP_MAX_LAYERS);
    put_u16(out + 26, EP_MAX_UNITS);
    put_u16(out + 28, B.cfg.max_batch);
    put_u16(out + 30, EP_MAX_STEPS);
    out[32] = 16; /* max_weight_bits */
    out[33] = 16; /* max_state_bits */
    out[34] = 16; /* max_input_bits */
    out[35] = 64; /* accumulator_bits */
    put_u32(out + 36, EP_NS_PER_MAC);
    put_u32(out + 40, EP_BASE_LATENCY_US);
    *olen = HELLO_RECORD_LEN;
    B.hello_ok = 1;
    return ST_OK;
}

static int cmd_status(size_t n, uint8_t *out, size_t *olen)
{
    if (n != 0)
        return ST_BAD_LENGTH;
    const uint32_t v[10] = {port_millis() - B.boot_ms, B.boot_id, B.rx_frames, B.rx_dropped, B.rx_bad_crc,
                            B.rx_overflow, B.naks_sent, B.replays, B.requests, B.net.version};
    for (int i = 0; i < 10; i++)
        put_u32(out + 4 * i, v[i]);
    out[40] = B.last_error;
    out[41] = B.net.configured;
    put_u16(out + 42, 0);
    *olen = STATUS_RECORD_LEN;
    return ST_OK;
}

/* A request that ends in a tensor: the fixed fields take head bytes. */
static int parse_tail_tensor(const uint8_t *req, size_t n, size_t head, tensor_view_t *t)
{
    if (n < head)
        return ST_BAD_LENGTH;
    return tensor_parse(req + head, n - head, t);
}

/* A request that ends in a packed tensor (section 4.1), decoded into B.unpacked. */
#ifndef EP_NO_PACKED
static int parse_tail_packed(const uint8_t *req, size_t n, size_t head, tensor_view_t *t)
{
    if (n < head)
        return ST_BAD_LENGTH;
    return packed_decode(req + head, n - head, B.unpacked, sizeof B.unpacked, t);
}
#endif

static int apply_delta(const uint8_t *req, const tensor_view_t *t, uint8_t *out, size_t *olen, uint8_t *field)
{
    if (req[1] != 0) {
        *field = 1;
        return ST_BAD_ARGUMENT;
    }
    uint32_t sat = 0;
    int st = ep_apply_delta(&B.net, req[0], get_u32(req + 2), get_u32(req + 6), t, &sat, field);
    if (st == ST_OK || st == ST_SATURATED) {
        put_u32(out, sat);
        put_u32(out + 4, B.net.version);
        *olen = 8;
    } else if (st == ST_STALE_VERSION) {
        put_u32(out, B.net.version);
        *olen = 4;
    }
    return st;
}

static int execute(uint8_t cmd, const uint8_t *req, size_t n, uint8_t *out, size_t *olen, uint8_t *field)
{
    tensor_view_t t;
    int st;
    *olen = 0;
    switch (cmd) {
    case CMD_HELLO:
        return cmd_hello(req, n, out, olen);
    case CMD_PING:
        memcpy(out, req, n);
        *olen = n;
        return ST_OK;
    case CMD_RESET:
        if (n != 0)
            return ST_BAD_LENGTH;
        B.reset_pending = 1;
        return ST_OK;
    case CMD_SELF_TEST: {
        if (n != 4)
            return ST_BAD_LENGTH;
        uint32_t passed, failed;
        size_t used = B.net.configured ? B.net.arena_used : 0;
        selftest_run(get_u32(req), B.cfg.arena + used, B.cfg.arena_size - used, &passed, &failed);
        put_u32(out, passed);
        put_u32(out + 4, failed);
        *olen = 8;
        return failed ? ST_SELF_TEST_FAILED : ST_OK;
    }
    case CMD_CONFIGURE:
        if ((st = ep_configure(&B.net, req, n, field)) == ST_OK) {
            put_u32(out, B.net.arena_used);
            put_u32(out + 4, B.net.arena_size);
            *olen = 8;
        }
        return st;
    case CMD_WRITE_WEIGHTS:
        if ((st = parse_tail_tensor(req, n, 6, &t)) != ST_OK) {
            *field = 3;
            return st;
        }
        if (req[1] != 0) {
            *field = 1;
            return ST_BAD_ARGUMENT;
        }
        return ep_write(&B.net, req[0], get_u32(req + 2), &t, field);
    case CMD_READ_WEIGHTS:
        if (n != 8)
            return ST_BAD_LENGTH;
        if (req[1] != 0) {
            *field = 1;
            return ST_BAD_ARGUMENT;
        }
        return ep_read(&B.net, req[0], get_u32(req + 2), get_u16(req + 6), out, EP_MAX_PAYLOAD, olen, field);
    case CMD_COMMIT_WEIGHTS: {
        if (n != 10)
            return ST_BAD_LENGTH;
        if (req[1] != 0) {
            *field = 1;
            return ST_BAD_ARGUMENT;
        }
        uint32_t crc;
        if ((st = ep_commit(&B.net, req[0], get_u32(req + 2), get_u32(req + 6), &crc, field)) == ST_OK) {
            put_u32(out, crc);
            *olen = 4;
        }
        return st;
    }
    case CMD_APPLY_DELTA:
        if ((st = parse_tail_tensor(req, n, 10, &t)) != ST_OK) {
            *field = 4;
            return st;
        }
        return apply_delta(req, &t, out, olen, field);
#ifndef EP_NO_PACKED
    case CMD_APPLY_DELTA_PACKED:
        /* the packed tensor is decoded whole before anything is applied: same checks, same effect */
        if ((st = parse_tail_packed(req, n, 10, &t)) != ST_OK) {
            *field = 4;
            return st;
        }
        return apply_delta(req, &t, out, olen, field);
    case CMD_SET_INPUT_PACKED:
        if ((st = parse_tail_packed(req, n, 4, &t)) != ST_OK) {
            *field = 2;
            return st;
        }
        return ep_set_input(&B.net, get_u16(req), get_u16(req + 2), &t, field);
#endif
    case CMD_SET_INPUT:
        if ((st = parse_tail_tensor(req, n, 4, &t)) != ST_OK) {
            *field = 2;
            return st;
        }
        return ep_set_input(&B.net, get_u16(req), get_u16(req + 2), &t, field);
    case CMD_SET_TARGET:
        if ((st = parse_tail_tensor(req, n, 2, &t)) != ST_OK) {
            *field = 1;
            return st;
        }
        return ep_set_target(&B.net, get_u16(req), &t, field);
    case CMD_RELAX: {
        if (n != 12)
            return ST_BAD_LENGTH;
        ep_relax_out_t r;
        st = ep_relax(&B.net, req[0], req[1], get_u16(req + 2), get_i32(req + 4), get_u32(req + 8), &r, field);
        if (st == ST_OK || st == ST_NOT_CONVERGED) {
            put_u16(out, r.steps_done);
            out[2] = r.converged;
            out[3] = 0;
            put_u32(out + 4, r.max_delta);
            *olen = 8;
        }
        return st;
    }
    case CMD_READ_STATES:
        if (n != 6)
            return ST_BAD_LENGTH;
        return ep_read_states(&B.net, req[0], req[1], get_u16(req + 2), get_u16(req + 4), out, EP_MAX_PAYLOAD,
                              olen, field);
    case CMD_GET_STATUS:
        return cmd_status(n, out, olen);
    case CMD_TENSOR_CRC: {
        if (n != 1)
            return ST_BAD_LENGTH;
        uint32_t crc;
        if ((st = ep_tensor_crc(&B.net, req[0], &crc, field)) == ST_OK) {
            put_u32(out, crc);
            put_u32(out + 4, B.net.version);
            *olen = 8;
        }
        return st;
    }
    case CMD_SET_STATES:
        if ((st = parse_tail_tensor(req, n, 4, &t)) != ST_OK) {
            *field = 3;
            return st;
        }
        if (req[1] != 0) {
            *field = 1;
            return ST_BAD_ARGUMENT;
        }
        return ep_set_states(&B.net, req[0], get_u16(req + 2), &t, field);
    default:
        return ST_UNKNOWN_COMMAND;
    }
}

static int is_payload_status(int st)
{
    return st == ST_OK || st == ST_NOT_CONVERGED || st == ST_SATURATED || st == ST_SELF_TEST_FAILED ||
           st == ST_STALE_VERSION;
}

/* ---- frames ---- */

static void send_nak(uint16_t seq, uint8_t cmd)
{
    uint8_t body[EP_BODY_MIN], enc[EP_BODY_MIN + 3];
    frame_header(body, KIND_NAK, seq, cmd, ST_BAD_CRC);
    size_t len = frame_encode(body, 0, enc);
    port_write(enc, len);
    B.naks_sent++;
    B.last_error = ST_BAD_CRC;
}

static void handle_frame(const uint8_t *body, size_t len)
{
    B.rx_frames++;
    if (len < EP_BODY_MIN || (size_t)get_u16(body + 6) + EP_BODY_MIN != len) {
        B.rx_dropped++;
        return;
    }
    size_t n = get_u16(body + 6);
    uint32_t crc = get_u32(body + EP_HEADER + n);
    uint16_t seq = get_u16(body + 2);
    uint8_t cmd = body[4];
    if (crc32_update(0, body, EP_HEADER + n) != crc) {
        B.rx_bad_crc++;
        if (body[0] == EP_PROTO_MAJOR && body[1] == KIND_REQUEST)
            send_nak(seq, cmd);
        return;
    }
    if (body[1] != KIND_REQUEST) {
        B.rx_dropped++;
        return;
    }
    if (B.cache_valid && seq == B.cache_seq && crc == B.cache_crc) {
        B.replays++;
        port_write(B.cache, B.cache_len);
        return;
    }
    B.requests++;
    uint8_t field = 0;
    size_t olen = 0;
    int st;
    if (body[0] != EP_PROTO_MAJOR || (!B.hello_ok && cmd != CMD_HELLO)) {
        st = ST_BAD_VERSION;
    } else if (body[5] != 0) {
        st = ST_BAD_ARGUMENT;
        field = 0xFF; /* the header's status byte */
    } else {
        st = execute(cmd, body + EP_HEADER, n, B.resp + EP_HEADER, &olen, &field);
    }
    if (st == ST_BAD_ARGUMENT) {
        B.resp[EP_HEADER] = field;
        olen = 1;
    } else if (!is_payload_status(st)) {
        olen = 0;
    }
    if (st != ST_OK)
        B.last_error = (uint8_t)st;
    frame_header(B.resp, KIND_RESPONSE, seq, cmd, (uint8_t)st);
    B.cache_len = frame_encode(B.resp, (uint16_t)olen, B.cache);
    B.cache_valid = 1;
    B.cache_seq = seq;
    B.cache_crc = crc;
    port_write(B.cache, B.cache_len);
}

int board_feed(const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        switch (frame_rx_push(&B.rx, data[i])) {
        case RX_FRAME:
            handle_frame(B.rx.body, B.rx.body_len);
            break;
        case RX_BAD_COBS:
            B.rx_frames++;
            B.rx_dropped++;
            break;
        case RX_OVERFLOW:
            B.rx_overflow++;
            break;
        default:
            break;
        }
        if (B.reset_pending) {
            port_reset();
            return 1;
        }
    }
    return 0;
}
