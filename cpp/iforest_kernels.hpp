// Block scoring kernels for the isolation forest, one per SIMD target, chosen at run time.
#pragma once

#include "common.hpp"
#include "iforest.hpp"

namespace pynomaly {

// Adds, for each of the n_rows rows of a feature-major float32 block (column stride
// c.block_rows, rows padded with zeros to a multiple of 16), the path length through every
// tree of the compiled forest to acc[row]. Trees are summed in order, in float64, so every
// kernel gives bit-identical sums.
using BlockKernel = void (*)(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc);

BlockKernel select_block_kernel(SimdTarget target);

// For fewer than kFewRows rows (e.g. a single-row call): one row at a time, trees interleaved.
constexpr int64_t kFewRows = 16;
void few_rows_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc);

// Plain per-node traversal of the defining arrays, for forests too deep for the complete layout.
void sparse_block_kernel(const ForestNodes& nodes, int64_t block_rows, const float* xt, int64_t n_rows,
                         double* acc);

}  // namespace pynomaly
