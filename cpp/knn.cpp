// Exact k-nearest-neighbour search (knn_search): argument checks, the blocked brute-force driver
// (float32 screening with a proven error bound, exact float64 verification of the candidates),
// the KD-tree for low dimension, per-query top-k heaps and the threaded driver over query blocks.
// The self-join (queries = data, LOF's fit) screens each float32 tile both ways, so it does about
// half the FMAs of the query scan (self_join_scan).
//
// Why screening is exact: for every pair the float32 kernel computes s, and we bound the
// difference between s and the exact float64 key by E = C * (|x|^2 + |y|^2) + A (norms of the
// centred, power-of-two-scaled rows; for l1 the L1 norms). A row can only belong to the k
// nearest if s - E <= tau, the current k-th exact key; the bound is folded into per-row offsets
// and per-query thresholds so the kernel does one compare per pair. Every row that passes is
// then measured exactly in float64 and ranked by (key, index), so neighbour sets and distances
// are those of a direct float64 computation, whatever the SIMD target or the thread count.
//
// Its parts, one translation unit: knn_shared.hpp (rows, metrics, top-k heaps), knn_brute.hpp
// (the screen, packing and the query scan), knn_selfjoin.hpp and knn_kdtree.hpp.
#include "knn.hpp"

#include "knn_brute.hpp"
#include "knn_kdtree.hpp"
#include "knn_selfjoin.hpp"
#include "knn_shared.hpp"

namespace pynomaly {

Metric metric_from_name(const std::string& name) {
    if (name == "euclidean" || name == "l2") return Metric::euclidean;
    if (name == "sqeuclidean") return Metric::sqeuclidean;
    if (name == "manhattan" || name == "l1" || name == "cityblock") return Metric::manhattan;
    if (name == "cosine") return Metric::cosine;
    throw InvalidInput("unknown metric '" + name + "'; accepted: euclidean, sqeuclidean, manhattan, cosine");
}

KnnAlgorithm knn_algorithm_from_name(const std::string& name) {
    if (name == "auto") return KnnAlgorithm::automatic;
    if (name == "brute") return KnnAlgorithm::brute;
    if (name == "kd_tree") return KnnAlgorithm::kd_tree;
    throw InvalidInput("unknown algorithm '" + name + "'; accepted: auto, brute, kd_tree");
}

const char* knn_algorithm_name(KnnAlgorithm a) {
    switch (a) {
        case KnnAlgorithm::brute: return "brute";
        case KnnAlgorithm::kd_tree: return "kd_tree";
        default: return "auto";
    }
}

KnnAlgorithm choose_knn_algorithm(int64_t n, int64_t d, Metric metric) {
    // Crossovers measured at k = 20, one thread, Gaussian data (bench notes in RESULTS.md):
    // the KD-tree wins at d <= 3 from a few thousand rows and at d = 4 from ~20k rows
    // (n = 100k: 1.5 s vs 2.3 s); at d = 6 they tie, and at d = 8 the pruned, spatially
    // ordered brute force is 6x faster (3.6 s vs 22.7 s). Cosine has no tree.
    if (metric == Metric::cosine) return KnnAlgorithm::brute;
    if ((d <= 3 && n >= 2000) || (d == 4 && n >= 20000)) return KnnAlgorithm::kd_tree;
    return KnnAlgorithm::brute;
}

namespace {

void brute_force(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric, int n_threads,
                 const CancelCheck& cancel, double* dist, int64_t* idx) {
    const Screen sc = make_screen(data, queries, metric);
    const ExactMetric em{metric, data.cols};
    // A few queries (scoring a handful of new rows) cannot repay the O(n log n) sort.
    const Packed pk = pack_rows(data, !queries || queries->rows >= 256, sc, metric, n_threads, cancel);
    // The symmetric self-join pays per candidate with a heap operation where the one-way scan
    // appends and selects lazily; candidates grow with k (about k ln(n / k) per row), so past
    // k = 64 the one-way scan is faster (n = 20k, d = 16, 1 thread: 0.21 vs 0.34 s at k = 20,
    // 0.44 vs 0.51 s at k = 50, 0.86 vs 0.79 s at k = 100, 1.73 vs 1.25 s at k = 200).
    constexpr int64_t kSymmetricMaxK = 64;
    if (queries)
        query_scan(data, *queries, false, k, sc, em, pk, n_threads, cancel, dist, idx);
    else if (k > kSymmetricMaxK)
        query_scan(data, data, true, k, sc, em, pk, n_threads, cancel, dist, idx);
    else
        self_join_scan(data, k, sc, em, pk, n_threads, cancel, dist, idx);
}

}  // namespace

KnnAlgorithm knn_search(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric,
                        KnnAlgorithm algorithm, int n_threads, const CancelCheck& cancel, double* dist,
                        int64_t* idx) {
    const int64_t n = data.rows;
    if (n < 1 || data.cols < 1) throw InvalidInput("X must have at least one row and one feature");
    if (queries && queries->cols != data.cols)
        throw InvalidInput("Y has " + std::to_string(queries->cols) + " features but X has " +
                           std::to_string(data.cols) + "; both must have the same number of features");
    const int64_t available = queries ? n : n - 1;
    if (k < 1) throw InvalidInput("k (n_neighbors) must be at least 1, got " + std::to_string(k));
    if (k > available)
        throw InvalidInput("k (n_neighbors) = " + std::to_string(k) + " but only " + std::to_string(available) +
                           (queries ? " rows are" : " other rows are") +
                           " available as neighbours; k must be at most " + std::to_string(available));
    check_finite(data, "X");
    if (queries) check_finite(*queries, "Y");
    if (algorithm == KnnAlgorithm::automatic) algorithm = choose_knn_algorithm(n, data.cols, metric);
    if (algorithm == KnnAlgorithm::kd_tree && metric == Metric::cosine)
        throw InvalidInput("algorithm 'kd_tree' does not support the cosine metric; use 'brute' or 'auto'");
    if (algorithm == KnnAlgorithm::kd_tree)
        kd_tree_search(data, queries, k, metric, n_threads, cancel, dist, idx);
    else
        brute_force(data, queries, k, metric, n_threads, cancel, dist, idx);
    return algorithm;
}

}  // namespace pynomaly
