// Per-SIMD-target kernels behind cpp/scores.cpp: streaming transforms and the one-pass pieces of
// moments and selection. Every target performs the same floating-point operations in the same
// order, so all targets give bit-identical results; they differ only in how many lanes run.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace pynomaly {

// Scores per block of score_moments: small enough to stay in L1 for the second look.
constexpr int64_t kMomentBlock = 2048;

// Sums are of (x - shift): with the shift near the data (its first score) the sums carry the
// spread, not the offset, so scores like 1e9 + noise keep their digits.
struct BlockStats {
    double sum = 0.0;  // sum of (x - shift) over the block (8 interleaved accumulators)
    double m2 = 0.0;   // sum of squared deviations from the block's mean
    double min = 0.0;
    double max = 0.0;
};

struct ScoreKernels {
    // n in [1, kMomentBlock]. A non-finite score makes sum non-finite (the caller then searches).
    void (*block_stats)(const double* x, int64_t n, double shift, BlockStats* out);
    // y = clip(x * scale + offset, 0, 1), NaN kept.
    void (*minmax)(const double* x, int64_t n, double scale, double offset, double* out);
    // y = (x - mean) / scale.
    void (*zscore)(const double* x, int64_t n, double mean, double scale, double* out);
    // y = clip(erf((x - mean) * inv_denom), 0, 1), NaN kept.
    void (*unify)(const double* x, int64_t n, double mean, double inv_denom, double* out);
    // Copies every x in [lo, hi] to keep (which needs room for n + 8 values) and returns how many;
    // adds the count of x < lo to *below and of NaN to *nan.
    int64_t (*bracket)(const double* x, int64_t n, double lo, double hi, double* keep, int64_t* below, int64_t* nan);
    // out[i] = number of sorted[0 .. m) <= x[i] (m >= 1), or -1 for NaN.
    void (*ecdf_count)(const double* sorted, int64_t m, const double* x, int64_t n, int64_t* out);
};

const ScoreKernels& score_kernels(SimdTarget target);

}  // namespace pynomaly
