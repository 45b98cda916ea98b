/* Protocol constants of docs/board_protocol.md (version 1.2) and the board's limits. */
#ifndef EP_PROTOCOL_H
#define EP_PROTOCOL_H

#define EP_PROTO_MAJOR 1
#define EP_PROTO_MINOR 2
#define EP_FW_MAJOR 1
#define EP_FW_MINOR 2
#define EP_FW_PATCH 0

#ifndef EP_MAX_PAYLOAD
#define EP_MAX_PAYLOAD 2048
#endif
#define EP_HEADER 8
#define EP_BODY_MIN 12
#define EP_MAX_BODY (EP_MAX_PAYLOAD + EP_BODY_MIN)
/* COBS bound of the spec, without the 0x00 delimiter. */
#define EP_MAX_ENCODED (EP_MAX_BODY + EP_MAX_BODY / 254 + 1)

#ifndef EP_MAX_LAYERS
#define EP_MAX_LAYERS 16
#endif
#ifndef EP_MAX_UNITS
#define EP_MAX_UNITS 4096
#endif
#ifndef EP_MAX_STEPS
#define EP_MAX_STEPS 65535
#endif
#ifndef EP_DEFAULT_MAX_BATCH
#define EP_DEFAULT_MAX_BATCH 256
#endif
#ifndef EP_NS_PER_MAC
#define EP_NS_PER_MAC 2
#endif
#ifndef EP_BASE_LATENCY_US
#define EP_BASE_LATENCY_US 500
#endif
/* A conv layer's multiply-accumulates per sample and step (pooling windows included): at most the largest dense
   layer's, so no CONFIGURE buys unbounded work with a few weights. */
#ifndef EP_MAX_CONV_MACS
#define EP_MAX_CONV_MACS ((unsigned long long)EP_MAX_UNITS * EP_MAX_UNITS)
#endif
#define EP_MAX_TENSORS (4 * (EP_MAX_LAYERS + 1))
#define EP_MAX_SHIFT 62

enum { KIND_REQUEST = 0, KIND_RESPONSE = 1, KIND_EVENT = 2, KIND_NAK = 3 };

enum {
    CMD_HELLO = 0x01, CMD_PING = 0x02, CMD_RESET = 0x03, CMD_SELF_TEST = 0x04, CMD_CONFIGURE = 0x05,
    CMD_WRITE_WEIGHTS = 0x06, CMD_READ_WEIGHTS = 0x07, CMD_COMMIT_WEIGHTS = 0x08, CMD_APPLY_DELTA = 0x09,
    CMD_SET_INPUT = 0x0A, CMD_SET_TARGET = 0x0B, CMD_RELAX = 0x0C, CMD_READ_STATES = 0x0D,
    CMD_GET_STATUS = 0x0E, CMD_TENSOR_CRC = 0x0F, CMD_SET_STATES = 0x10, CMD_APPLY_DELTA_PACKED = 0x11,
    CMD_SET_INPUT_PACKED = 0x12, EVT_BOOT = 0x80
};

enum {
    ST_OK = 0, ST_BAD_CRC = 1, ST_BAD_LENGTH = 2, ST_BAD_VERSION = 3, ST_UNKNOWN_COMMAND = 4,
    ST_BAD_ARGUMENT = 5, ST_OUT_OF_RANGE = 6, ST_BUSY = 7, ST_NOT_CONFIGURED = 8, ST_UNSUPPORTED = 9,
    ST_CHECKSUM_MISMATCH = 10, ST_NOT_CONVERGED = 11, ST_SATURATED = 12, ST_HARDWARE_FAULT = 13,
    ST_SELF_TEST_FAILED = 14, ST_INTERNAL_TIMEOUT = 15, ST_STALE_VERSION = 16, ST_NO_MEMORY = 17
};

enum { DT_I8 = 0, DT_I16 = 1, DT_I32 = 2, DT_U8 = 3, DT_U16 = 4 };

#define CAP_MSE_NUDGE (1u << 0)
#define CAP_CE_READOUT (1u << 1)
#define CAP_ALTERNATING (1u << 2)
#define CAP_UNTIED (1u << 3)
#define CAP_EARLY_STOP (1u << 4)
#define CAP_SELF_TEST (1u << 5)
#define CAP_SET_STATES (1u << 6)
#define CAP_PACKED (1u << 7) /* APPLY_DELTA_PACKED, SET_INPUT_PACKED (protocol 1.1) */
#define CAP_CE_NUDGE (1u << 8) /* nudged phases of a CE network (the integer softmax) */
#define CAP_CONV (1u << 9) /* conv layers with max, average or no pooling (protocol 1.2) */

/* Builds without the CE nudge refuse a nudged CE phase (RELAX field 3) and leave out its capability bit: the
   accelerator (its core has no softmax) and the protocol 1.0 board, which predates it. */
#if defined(EP_ACCEL) || defined(EP_NO_PACKED)
#define EP_NO_CE_NUDGE
#endif

/* Builds without conv layers (-DEP_NO_CONV) refuse a conv layer record (BAD_LENGTH for its conv block, or
   BAD_ARGUMENT field 10) and leave out CAP_CONV: also the accelerator (its core is dense) and the protocol 1.0
   board. */
#if (defined(EP_ACCEL) || defined(EP_NO_PACKED)) && !defined(EP_NO_CONV)
#define EP_NO_CONV
#endif

/* A packed tensor decodes to at most this many bytes (8 x the maximum payload). A board built with
   -DEP_NO_PACKED offers neither packed command nor the capability bit: a protocol 1.0 board. */
#define EP_MAX_UNPACKED (8 * EP_MAX_PAYLOAD)

#define HELLO_RECORD_LEN 44
#define STATUS_RECORD_LEN 44

#endif
