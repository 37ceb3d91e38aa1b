// Float32 screening kernels of the exact nearest-neighbour search, one per SIMD target, chosen at
// run time (see knn_kernels.cpp).
#pragma once

#include <cstdint>

#include "common.hpp"

namespace pynomaly {

// Data rows are packed in panels of kPanel rows, feature-major: panel[j * kPanel + l] is feature
// j of row l. Queries come in groups of kRows rows, each contiguous (xq[r * d + j]).
constexpr int kPanel = 32;
constexpr int kRows = 8;

enum class ScreenKind : int { dot = 0, l1 = 1 };

// For the kRows x kPanel pairs of one panel computes acc = x.y (dot) or sum |x - y| (l1) in
// float32, then s = alpha * acc + off[l], sets bit l of masks[r] where s <= thr[r], and returns
// whether any bit is set; only then is s_out[r * kPanel + l] guaranteed to hold s. No state.
using ScreenKernel = bool (*)(const float* xq, int64_t d, const float* panel, const float* off, float alpha,
                              const float* thr, uint32_t* masks, float* s_out);

ScreenKernel select_screen_kernel(SimdTarget target, ScreenKind kind);

// The same tile screened both ways, for a self-join: the pair (query r, panel row l) is also the
// pair (panel row l as a query, r as a data row), so one accumulation serves both. The queries
// are rows of a panel too: feature j of query r is xq[j * kPanel + r]. Besides the
// above, t = alpha * acc + offq[r] (offq: the kRows rows' own offsets) is compared against the
// panel rows' thresholds, setting bit l of tmasks[r] where t <= thr_panel[l]. Returns whether
// any bit is set in masks or tmasks; s_out (t_out) is guaranteed to hold s (t) only when some
// bit of masks (tmasks) is set.
using SymScreenKernel = bool (*)(const float* xq, int64_t d, const float* panel, const float* off, const float* offq,
                                 float alpha, const float* thr, const float* thr_panel, uint32_t* masks,
                                 uint32_t* tmasks, float* s_out, float* t_out);

SymScreenKernel select_sym_screen_kernel(SimdTarget target, ScreenKind kind);

}  // namespace pynomaly
