// Python-compatible Mersenne Twister and the streaming detectors' input check (stream_common.hpp).
#include "stream_common.hpp"

#include <algorithm>
#include <cmath>

namespace pynomaly {

uint32_t PyRandom::next_u32() {
    static const uint32_t mag01[2] = {0x0u, 0x9908b0dfu};
    constexpr uint32_t upper = 0x80000000u, lower = 0x7fffffffu;
    if (index >= N) {
        int kk = 0;
        for (; kk < N - 397; ++kk) {
            const uint32_t y = (mt[kk] & upper) | (mt[kk + 1] & lower);
            mt[kk] = mt[kk + 397] ^ (y >> 1) ^ mag01[y & 1u];
        }
        for (; kk < N - 1; ++kk) {
            const uint32_t y = (mt[kk] & upper) | (mt[kk + 1] & lower);
            mt[kk] = mt[kk + (397 - N)] ^ (y >> 1) ^ mag01[y & 1u];
        }
        const uint32_t y = (mt[N - 1] & upper) | (mt[0] & lower);
        mt[N - 1] = mt[396] ^ (y >> 1) ^ mag01[y & 1u];
        index = 0;
    }
    uint32_t y = mt[index++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

// Chunks are first screened with integer operations the compiler vectorises (a value is not
// finite when its exponent bits are all ones); only a chunk that fails is searched.
int64_t first_non_finite(const double* X, int64_t rows, int64_t cols) {
    constexpr uint64_t kExp = 0x7ff0000000000000ull;
    constexpr int64_t kChunk = 4096;
    const int64_t n = rows * cols;
    for (int64_t c = 0; c < n; c += kChunk) {
        const int64_t end = std::min(n, c + kChunk);
        // A value is inf or NaN when its exponent bits are all ones: adding one exponent step
        // carries into the sign bit only then. And, add and or on 64-bit lanes vectorise even with
        // SSE2 (a 64-bit compare does not), which makes this check ~4x cheaper than compare-and-or.
        uint64_t bad = 0;
        for (int64_t i = c; i < end; ++i) {
            uint64_t bits;
            std::memcpy(&bits, X + i, sizeof bits);
            bad |= (bits & kExp) + (uint64_t{1} << 52);
        }
        if (bad >> 63)
            for (int64_t i = c; i < end; ++i)
                if (!std::isfinite(X[i])) return i;
    }
    return -1;
}

}  // namespace pynomaly
