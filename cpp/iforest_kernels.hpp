// Block scoring kernels for the isolation forest, several per SIMD target, one chosen per CPU at run time.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "iforest.hpp"

namespace pynomaly {

// Adds, for each of the n_rows rows of a feature-major float32 block (column stride
// c.block_rows, rows padded with zeros to a multiple of 16), the path length through every
// tree of the compiled forest to acc[row]. Trees are summed in order, in float64, so every
// kernel gives bit-identical sums.
using BlockKernel = void (*)(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc);

// For fewer than kFewRows rows (e.g. a single-row call): one row at a time, trees interleaved.
constexpr int64_t kFewRows = 16;

// The block kernel for SIMD target t and why it was chosen: the only candidate, or the fastest
// of the candidates timed on a small synthetic forest the first time t is used (about a
// millisecond, once per process and target; see calibrate()).
struct IforestKernelChoice {
    BlockKernel kernel = nullptr;
    std::string name;
    std::string reason;
    double calibration_ms = 0.0;
};
const IforestKernelChoice& iforest_kernel_choice(SimdTarget t);

// The kernel names runnable at target t, plus "few-rows" and "reference" (the per-node walk
// of the defining arrays), for tests and tools.
std::vector<std::string> iforest_kernel_names(SimdTarget t);

// Forces one kernel by name for every later call ("" or "auto": automatic again). Throws
// InvalidInput for an unknown name or one the active target cannot run. For tests and
// benchmarks: a forced block kernel also scores calls of fewer than kFewRows rows.
void force_iforest_kernel(const std::string& name);
std::string forced_iforest_kernel();  // "" when automatic

// What Forest::path_length_sum runs at target t: the block kernel, from how many rows it is
// used instead of the few-rows kernel, or the reference walk.
struct IforestDispatch {
    BlockKernel block = nullptr;
    int64_t few_rows_min = kFewRows;  // calls of fewer rows use few_rows_kernel
    bool reference = false;
};
IforestDispatch iforest_dispatch(SimdTarget t);

// Order-preserving key of a float32: its bits with the sign bit flipped for x >= 0 and all bits
// flipped for x < 0, so `x > t` exactly when key(x) > key(t) as unsigned integers, for every
// non-NaN x and t once -0 is turned into +0 (x + 0.0f does that; NaN never reaches a kernel).
// The scalar chains compare keys: an integer compare sets the carry flag in one cycle and
// `adc` folds it into the slot, where a float compare goes through the FP unit and a
// flag-to-register move (1.3x slower per visit on Zen 3).
inline uint32_t order_key(float v) {
    v = v + 0.0f;
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return b ^ (static_cast<uint32_t>(static_cast<int32_t>(b) >> 31) | 0x80000000u);
}

void few_rows_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc);

// Plain per-node traversal of the defining arrays, for forests too deep for the complete layout.
void sparse_block_kernel(const ForestNodes& nodes, int64_t block_rows, const float* xt, int64_t n_rows,
                         double* acc);

}  // namespace pynomaly
