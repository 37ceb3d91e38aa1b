// Online Isolation Forest (Leveni, Weigert Cassales, Pfahringer, Bifet & Boracchi, ICML 2024):
// each tree is a multi-resolution histogram over a sliding window of the last window_size
// records. A leaf that has counted max_leaf_samples * 2**depth records (adaptive growth; x1
// with fixed growth) and lies above the depth limit log(n / max_leaf_samples) / log(4) splits:
// as many points as it counted are drawn uniformly in its bounding box and an isolation
// subtree (random feature, random split between the points' min and max) is grown on them.
// A record leaving the window is unlearned along its path; a node whose count falls below
// its split size collapses into a leaf. Score: 2 ** -(mean over trees of leaf depth +
// c(leaf count)) / c(window count), c(n) = log(n / max_leaf_samples) / log(4) (0 below it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "stream_common.hpp"

namespace pynomaly {

struct OifParams {
    int32_t n_trees = 32;
    int64_t max_leaf_samples = 32;
    int64_t window_size = 2048;
    bool adaptive = true;  // split size max_leaf_samples * 2**depth (else max_leaf_samples)
    uint64_t seed = 0;
};

class OnlineIsolationForest {
  public:
    OnlineIsolationForest(const OifParams& p, int64_t n_features);

    void score(const double* X, int64_t rows, double* out, int n_jobs) const;  // X: rows x d, finite
    void learn(const double* X, int64_t rows);
    void score_learn(const double* X, int64_t rows, double* out);

    std::string to_bytes() const;
    static OnlineIsolationForest from_bytes(const char* data, size_t size);

    const OifParams& params() const { return p_; }
    int64_t n_features() const { return d_; }
    int64_t window_count() const { return n_window_; }
    int64_t n_nodes() const;  // live nodes over all trees
    int64_t memory_bytes() const;

    static void check_params(const OifParams& p, int64_t n_features);

  private:
    struct Node {
        int32_t kid[2] = {-1, -1};  // below the split, at or above it; -1: a leaf
        int32_t feature = 0;
        int32_t depth = 0;
        int64_t count = 0;
        double split = 0.0;
    };
    struct Tree {
        std::vector<Node> nodes;
        std::vector<double> lo, hi;  // a leaf's bounding box, d per node (an inner node's is never read)
        std::vector<int32_t> free;   // released node slots, reused first
        int32_t root = -1;
        SplitMix rng;
    };

    double score_row(const double* x) const;
    double learn_row(const double* x);
    static constexpr int kGroup = 8;  // trees walked side by side
    void descend_learning(Tree* trees, int m, const double* x, int32_t* leaf, int32_t* parent);
    double learn_at_leaf(Tree& t, const double* x, int32_t node, int32_t parent, double depth_limit);
    void forget(Tree* trees, int m, const double* x);
    void widen_box(double* lo, double* hi, const double* x) const;  // lo = min(lo, x), hi = max(hi, x)
    int32_t build(Tree& t, int64_t begin, int64_t end, int32_t depth, double depth_limit);
    int32_t new_node(Tree& t);
    void release_subtree(Tree& t, int32_t node);
    void collapse(Tree& t, int32_t node);
    void box_from_children(Tree& t, int32_t node);
    double split_size(int32_t depth) const {
        return depth < static_cast<int32_t>(split_size_.size()) ? split_size_[depth] : split_size_formula(depth);
    }
    double split_size_formula(int32_t depth) const;
    double path_length(double n) const;
    double count_path_length(int64_t n) const {  // path_length of a count, from the table where it has one
        return static_cast<uint64_t>(n) < path_length_.size() ? path_length_[n] : path_length(static_cast<double>(n));
    }
    double score_of(double depth_sum, int64_t window_count) const;

    void write_tree(ByteWriter& w, const Tree& t, int32_t node) const;
    int32_t read_tree(ByteReader& r, Tree& t, int32_t depth);

    OifParams p_;
    int64_t d_;
    std::vector<Tree> trees_;
    std::vector<double> window_;  // ring of window_size records
    int64_t head_ = 0;            // slot of the oldest record
    int64_t n_window_ = 0;
    // split_size and path_length of counts up to the window, tabulated (the same values the
    // formulas give: a log and an ldexp per node visited cost more than the walk itself).
    std::vector<double> split_size_, path_length_;
    std::vector<double> points_;  // the points a splitting leaf samples (row-major), reused
    std::vector<int64_t> order_;  // their order as build partitions them
    bool avx512_ = false;         // the active SIMD target allows AVX-512 (read per learning call)
};

}  // namespace pynomaly
