// Drift monitoring's counting kernel: how many served rows fall in each bin of a reference
// profile (pynomaly.estimators.drift), per feature. Knows nothing of Python. The counts are
// integers and the tail sums are added in a fixed chunk order, so the result is the same for
// any number of threads.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace pynomaly {

// The reference's bin edges of every feature, one after the other: feature f's edges are
// edges[offsets[f] .. offsets[f + 1]), strictly increasing (at least one per feature).
// Feature f has (its edge count + 1) bins: (-inf, e0], (e0, e1], ..., (e_last, +inf); a value
// goes to the bin whose right edge is the first edge >= it (np.searchsorted(edges, x, "left")).
struct DriftEdges {
    const double* edges = nullptr;
    const int64_t* offsets = nullptr;  // n_features + 1 entries, offsets[0] == 0
    int64_t n_features = 0;
    int64_t n_bins() const { return offsets[n_features] + n_features; }
};

// Throws InvalidInput unless the edges are as DriftEdges says (finite, strictly increasing,
// at least one per feature, offsets ascending from 0).
void check_drift_edges(const DriftEdges& e);

// Adds the bins of X's rows (X.cols == e.n_features) to `counts` (e.n_bins() entries, feature
// f's bins from offsets[f] + f) and to `tails` (2 per feature: the sum of (e_first - x) over
// the values below the first edge, and of (x - e_last) over those above the last edge: what
// makes the Wasserstein distance exact outside the reference's range). Throws InvalidInput
// for a value that is not finite, naming its row and column.
void drift_count(const MatrixView& X, const DriftEdges& e, int64_t* counts, double* tails, int n_threads,
                 const CancelCheck& cancel);

}  // namespace pynomaly
