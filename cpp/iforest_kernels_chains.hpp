// What the isolation-forest block kernels share (iforest_kernels.cpp says how they walk the
// trees): the ISA each build has, the rows walked side by side, the order-key descent of the
// scalar chains and the chains that finish a group of rows. Private to iforest_kernels.cpp,
// whose translation unit the kernels form with iforest_kernels_x86.hpp (hence the unnamed
// namespace; the tests build the core from its .cpp files by name).
#pragma once

#include <cstdint>
#include <vector>

#include "iforest.hpp"
#include "iforest_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define PYNOMALY_NEON 1
#endif

namespace pynomaly {
namespace {

using Compiled = Forest::Compiled;

// Rows walked side by side by the scalar part of every non-gather kernel. A walk is a chain of
// dependent loads (node, then x at the node's feature, ~12 cycles a level), so throughput
// comes from independent chains: 8 rows keep 8 chains in flight in 8 registers, with the
// block, tree and loop pointers that still leaves no spills on x86-64 (12 measured the same,
// 16 spilled and was slower, 4 was 2x slower on Zen 3).
constexpr int kRows = 8;

// slot = 2 * slot + (t < x). GCC writes cmp, setb, movzx and lea for this; cmp + adc is half
// the micro-ops on the critical path of every visit (1.15x on the whole kernel on Zen 3).
inline uint64_t descend(uint64_t slot, uint32_t t, const uint32_t* x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
    asm("cmpl %2, %1\n\tadcq %0, %0" : "+r"(slot) : "r"(t), "m"(*x) : "cc");
    return slot;
#else
    return slot + slot + (t < *x);
#endif
}

// The keys of a block's first n_rows rows (rounded up to 16, the zero padding included), in a
// per-thread buffer laid out like the block.
const uint32_t* block_keys(const Compiled& c, const float* xt, int64_t n_rows) {
    thread_local std::vector<uint32_t> keys;
    const int64_t B = c.block_rows, padded = (n_rows + 15) / 16 * 16;
    keys.resize(static_cast<size_t>(c.n_features * B));
    for (int64_t j = 0; j < c.n_features; ++j)
        for (int64_t i = 0; i < padded; ++i) keys[j * B + i] = order_key(xt[j * B + i]);
    return keys.data();
}

// Levels L..D-1 of kRows rows at block row xr (keys) from slots s, then adds their leaves.
// kn is the tree's key layout: S feature offsets then S threshold keys.
template <int D, int L>
inline void finish_rows(const uint32_t* kn, const double* lv, const uint32_t* xr, uint64_t* s, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
#pragma GCC unroll 16
    for (int l = L; l < D; ++l) {
#pragma GCC unroll 8
        for (int k = 0; k < kRows; ++k) s[k] = descend(s[k], kn[S + s[k]], xr + kn[s[k]] + k);
    }
#pragma GCC unroll 8
    for (int k = 0; k < kRows; ++k) acc[k] += lv[s[k]];
}

// Levels done as vectors by the hybrid kernels (see the AVX2 hybrid below for why 4).
constexpr int kHybridTop = 4;

}  // namespace
}  // namespace pynomaly
