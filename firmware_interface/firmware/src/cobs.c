#include "cobs.h"

size_t cobs_encode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t w = 1, code_at = 0;
    uint8_t code = 1;
    for (size_t r = 0; r < n; r++) {
        if (in[r] == 0) {
            out[code_at] = code;
            code_at = w++;
            code = 1;
        } else {
            out[w++] = in[r];
            if (++code == 0xFF && r + 1 < n) { /* a full block; no trailing empty block at the end */
                out[code_at] = code;
                code_at = w++;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    return w;
}

long cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap)
{
    size_t r = 0, w = 0;
    while (r < n) {
        uint8_t code = in[r++];
        if (code == 0 || (size_t)(code - 1) > n - r || (size_t)(code - 1) > cap - w)
            return -1;
        for (uint8_t i = 1; i < code; i++) {
            if (in[r] == 0)
                return -1;
            out[w++] = in[r++];
        }
        if (code != 0xFF && r < n) {
            if (w >= cap)
                return -1;
            out[w++] = 0;
        }
    }
    return (long)w;
}
