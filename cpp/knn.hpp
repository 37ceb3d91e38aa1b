// Exact k-nearest-neighbour search: the engine under LOF and KNN. Owns the public entry point
// (knn_search), the metric/algorithm enums and the contract of its results.
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"

namespace pynomaly {

enum class Metric : int { euclidean = 0, sqeuclidean = 1, manhattan = 2, cosine = 3 };
enum class KnnAlgorithm : int { automatic = 0, brute = 1, kd_tree = 2 };

Metric metric_from_name(const std::string& name);              // throws InvalidInput
KnnAlgorithm knn_algorithm_from_name(const std::string& name);  // throws InvalidInput
const char* knn_algorithm_name(KnnAlgorithm a);

// The algorithm "auto" picks for n data rows of d features under a metric (never automatic).
KnnAlgorithm choose_knn_algorithm(int64_t n, int64_t d, Metric metric);

// k nearest rows of `data` for every row of `queries` (or, when `queries` is null, for every row
// of `data` excluding the row itself). Writes rows of k (distance, index) pairs, each sorted by
// distance then index, into dist/idx (q x k, C order). Distances are exact in float64: the
// neighbour set is the true one and ties are broken by the lower index, so results do not depend
// on n_threads, the algorithm or the SIMD target. Memory beyond the outputs is O(n * d) for
// packed copies plus fixed-size per-thread blocks, and for the brute-force self-join O(n * k)
// for per-row candidate heaps (12 bytes per neighbour). Returns the algorithm used.
// Throws InvalidInput for k out of range, non-finite values or mismatched features.
KnnAlgorithm knn_search(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric,
                        KnnAlgorithm algorithm, int n_threads, const CancelCheck& cancel, double* dist,
                        int64_t* idx);

}  // namespace pynomaly
