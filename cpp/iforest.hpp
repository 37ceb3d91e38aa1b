// Isolation forest (Liu, Ting and Zhou 2008): training, the node arrays that define a forest,
// and scoring. A forest is stored as flat node arrays (the serialised and imported form) and
// compiled once into a padded complete-tree layout that the SIMD kernels traverse.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"

namespace pynomaly {

// Expected path length of an unsuccessful search in a binary search tree of n points, c(n).
double average_path_length(double n);

struct ForestParams {
    int n_estimators = 100;
    int64_t max_samples = 256;  // psi: rows drawn without replacement per tree
    int64_t max_features = 0;   // features drawn without replacement per tree; 0 = all
    uint64_t seed = 0;
};

// The defining form of a forest. Nodes of tree t are [tree_offset[t], tree_offset[t+1]),
// node 0 of a tree is its root, indices inside a tree are local. Internal node i tests
// `x[feature[i]] <= threshold[i]` (x rounded to float32, as scikit-learn does) and goes to
// local node left[i] if true, left[i] + 1 otherwise. A leaf has feature -1 and carries
// leaf_value = depth + c(samples in leaf), the path length it contributes.
struct ForestNodes {
    int64_t n_features = 0;
    int64_t psi = 0;  // samples per tree; the normaliser is c(psi)
    std::vector<int32_t> tree_offset;
    std::vector<int32_t> feature;
    std::vector<float> threshold;
    std::vector<int32_t> left;
    std::vector<double> leaf_value;

    int n_trees() const { return tree_offset.empty() ? 0 : static_cast<int>(tree_offset.size()) - 1; }
};

// Training in two steps that need different things, so that a fit can run where the data is
// (pynomaly.dask): the plan of a tree needs only n, d and the parameters; growing it needs only
// its psi sampled rows. Forest::train runs both per tree; the result is the same either way.
struct TreePlan {
    std::vector<int64_t> features;  // sorted columns of X the tree sees (k of them)
    std::vector<int64_t> rows;      // the tree's psi rows of X, in draw order (the sample's order)
    uint64_t rng_state = 0;         // the tree's random stream after those draws; growth continues it
};

struct TreeNodes {  // one tree's slice of ForestNodes, with local node indices
    std::vector<int32_t> feature;
    std::vector<float> threshold;
    std::vector<int32_t> left;
    std::vector<double> leaf_value;
};

// Checks training parameters for n x d data; returns k, the features per tree. Throws InvalidInput.
int64_t check_train_params(int64_t n, int64_t d, const ForestParams& params);

// Draws tree `tree`'s features and rows (params checked by check_train_params).
TreePlan plan_tree(const ForestParams& params, int64_t n, int64_t d, int64_t tree);

// Grows the tree of `plan` from its sample: row x_rows[i] of X is the plan's row i (in
// Forest::train, x_rows is plan.rows itself). Returns -1, or the first sample position
// (i * k + j) whose value is not finite in float32, leaving `out` untouched.
int64_t grow_tree(const MatrixView& X, const std::vector<int64_t>& x_rows, const TreePlan& plan, TreeNodes& out);

// Concatenates grown trees into the defining form of a forest.
ForestNodes merge_trees(int64_t n_features, int64_t psi, const std::vector<TreeNodes>& trees);

// The message for a value that cannot be compared in float32, at row r and column c of X.
std::string bad_value_message(double value, int64_t r, int64_t c);

// The most features a forest may test: a scoring block holds up to 1024 rows of each, and
// feature * rows must fit the kernels' int32 offsets.
constexpr int64_t kMaxForestFeatures = std::numeric_limits<int32_t>::max() / 1024;

class Forest {
public:
    // Validates every size and index (so arrays from a file or another library cannot cause
    // an out-of-bounds read, an overflow or a division by zero) and compiles the scoring
    // layout. Throws InvalidModel.
    explicit Forest(ForestNodes nodes);

    static Forest train(const MatrixView& X, const ForestParams& params, int n_threads,
                        const CancelCheck& cancel);

    // Anomaly score 2^(-E[h(x)] / c(psi)) per row of X, in (0, 1]. Rows are scored in chunks
    // on up to n_threads threads; the result does not depend on n_threads or the SIMD target.
    void score(const MatrixView& X, double* out, int n_threads, const CancelCheck& cancel) const;

    // Sum of path lengths over trees per row (the E[h(x)] numerator), for tests and tools.
    void path_length_sum(const MatrixView& X, double* out, int n_threads, const CancelCheck& cancel) const;

    const ForestNodes& nodes() const { return nodes_; }
    int depth() const { return depth_; }
    // Bytes this forest holds: the defining arrays and the compiled scoring layouts (what a
    // server caching it really keeps, about 3x its serialized size).
    int64_t memory_bytes() const;
    bool uses_complete_layout() const { return complete_; }

    // Deepest tree that still uses the padded complete layout; deeper forests (very large
    // max_samples) are scored by a plain per-node traversal to keep memory bounded.
    static constexpr int kMaxCompleteDepth = 12;

    // The padded complete layout, a 1-based heap per tree: slot 1 is the root, the children
    // of slot s are 2s and 2s + 1, so level l occupies slots [2^l, 2^(l+1)) and slot 0 is
    // unused. That alignment lets SIMD kernels hold levels 0-3, 4 and 5 in registers and index
    // them by permutes with no arithmetic. Each tree has 2^D internal slots then 2^D leaf slots.
    // A leaf shallower than D is padded with always-left slots (threshold +inf) and its value
    // is stored at its always-left descendant. feature_scaled holds feature * block_rows, the
    // offset of that feature's column in a scoring block.
    struct Compiled {
        int depth = 0;
        int64_t slots = 0;       // 2^depth: internal slots per tree (and leaf slots per tree)
        int64_t block_rows = 0;  // rows per scoring block (multiple of 16) = column stride
        int64_t n_trees = 0;
        int64_t n_features = 0;
        std::vector<int32_t> feature_scaled;
        std::vector<float> threshold;
        std::vector<double> leaf_value;
        // The same tests side by side, for the few-rows kernel: a single-row call usually finds
        // the forest out of cache, and one line per visited node instead of two is what its
        // latency is made of.
        struct Test {
            int32_t feature_scaled;
            float threshold;
        };
        std::vector<Test> tests;
        // For the scalar-chain kernels: per tree, the S feature offsets then the S thresholds as
        // order-preserving integer keys (see order_key in iforest_kernels.cpp), so a tree's
        // nodes are one array addressed from one register.
        std::vector<uint32_t> key_nodes;
    };
    const Compiled& compiled() const { return compiled_; }  // for kernel tests and calibration

private:
    void compile();
    void check_input(const MatrixView& X) const;

    ForestNodes nodes_;
    int depth_ = 0;
    bool complete_ = false;
    Compiled compiled_;
};

}  // namespace pynomaly
