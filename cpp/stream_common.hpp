// What the streaming detectors share: Python's random number generator (MT19937 seeded and
// drawn exactly as CPython's `random.Random`, so a HalfSpaceTrees grows River's trees from
// River's seed), a small seeded generator for the online forest, and the bounds-checked byte
// reader/writer of their snapshots. Knows nothing of Python.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

namespace pynomaly {

// CPython's Mersenne Twister (Modules/_randommodule.c): same genrand_uint32, same 53-bit random().
struct PyRandom {
    static constexpr int N = 624;
    uint32_t mt[N];
    int index = N + 1;

    // The state is set from random.Random(seed).getstate() (CPython's own seeding), so any
    // seed Python accepts grows the same trees as River.
    uint32_t next_u32();
    double random() {  // random.random(): 53 random bits in [0, 1)
        const uint32_t a = next_u32() >> 5, b = next_u32() >> 6;
        return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
    }
};

// splitmix64: the online forest's per-tree generator (one 64-bit word of state, so a
// snapshot restores it exactly).
struct SplitMix {
    uint64_t state = 0;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    uint64_t below(uint64_t n) { return next() % n; }  // bias < n / 2**64: irrelevant for n = features
};

// Little-endian snapshot bytes. The reader checks every length against what is left before it
// reads or allocates, so a crafted blob ends in InvalidModel, never a crash or a huge allocation.
struct ByteWriter {
    std::string out;
    template <class T>
    void put(T v) { out.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
    template <class T>
    void put_array(const std::vector<T>& v) {
        if (!v.empty()) out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
    }
};

struct ByteReader {
    const char* p;
    size_t left;
    template <class T>
    T get() {
        if (left < sizeof(T)) throw InvalidModel("stream snapshot is truncated");
        T v;
        std::memcpy(&v, p, sizeof(T));
        p += sizeof(T);
        left -= sizeof(T);
        return v;
    }
    template <class T>
    std::vector<T> get_array(uint64_t n) {
        if (n > left / sizeof(T)) throw InvalidModel("stream snapshot is truncated (an array is longer than the blob)");
        std::vector<T> v(n);
        if (n) std::memcpy(v.data(), p, n * sizeof(T));
        p += n * sizeof(T);
        left -= n * sizeof(T);
        return v;
    }
    void expect_end() const {
        if (left != 0) throw InvalidModel("stream snapshot has " + std::to_string(left) + " trailing bytes");
    }
};

// The first record's (or batch's) first non-finite value, as "row r, column c: value"; -1 if none.
int64_t first_non_finite(const double* X, int64_t rows, int64_t cols);

}  // namespace pynomaly
