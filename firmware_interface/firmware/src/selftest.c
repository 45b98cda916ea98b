#include "selftest.h"

#include "cobs.h"
#include "crc32.h"
#include "ep_net.h"

static int test_crc(void)
{
    static const uint8_t check[] = "123456789";
    return crc32_update(0, check, 9) == 0xCBF43926u && crc32_update(crc32_update(0, check, 4), check + 4, 5) ==
                                                            0xCBF43926u;
}

static int test_cobs(void)
{
    uint8_t in[300], enc[310], out[300];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i % 7 ? i * 37 + 1 : 0);
    for (size_t i = 10; i < 270; i++)
        in[i] = 0xA5; /* a run longer than 254 */
    size_t len = cobs_encode(in, sizeof in, enc);
    for (size_t i = 0; i < len; i++)
        if (enc[i] == 0)
            return 0;
    if (cobs_decode(enc, len, out, sizeof out) != (long)sizeof in)
        return 0;
    for (size_t i = 0; i < sizeof in; i++)
        if (in[i] != out[i])
            return 0;
    return 1;
}

static int test_arithmetic(void)
{
    static const struct { int64_t a; int8_t k; int64_t r; } v[] = {
        {5, 1, 2}, {7, 1, 4}, {-5, 1, -2}, {-7, 1, -4}, {6, 2, 2}, {-6, 2, -2}, {10, 2, 2}, {-10, 2, -2},
        {3, -2, 12}, {-3, 0, -3}, {INT64_MAX, 62, 2}, {INT64_MIN, 62, -2}, {(int64_t)1 << 61, 62, 0},
        {3 * ((int64_t)1 << 60), 61, 2}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (ep_round_shift(v[i].a, v[i].k) != v[i].r)
            return 0;
    return 1;
}

static int test_memory(uint8_t *mem, size_t len)
{
    volatile uint8_t *m = mem;
    if (len > 65536)
        len = 65536;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < len; i++)
            m[i] = (uint8_t)(pass ? ~(i * 131 + 7) : i * 131 + 7);
        for (size_t i = 0; i < len; i++)
            if (m[i] != (uint8_t)(pass ? ~(i * 131 + 7) : i * 131 + 7))
                return 0;
    }
    for (size_t i = 0; i < len; i++)
        m[i] = 0;
    return 1;
}

void selftest_run(uint32_t mask, uint8_t *scratch, size_t scratch_len, uint32_t *passed, uint32_t *failed)
{
    int ok[4];
    *passed = *failed = 0;
    ok[0] = (mask & 1) ? test_crc() : 0;
    ok[1] = (mask & 2) ? test_cobs() : 0;
    ok[2] = (mask & 4) ? test_arithmetic() : 0;
    ok[3] = (mask & 8) ? test_memory(scratch, scratch_len) : 0;
    for (int i = 0; i < 4; i++)
        if (mask & (1u << i))
            *(ok[i] ? passed : failed) |= 1u << i;
}
