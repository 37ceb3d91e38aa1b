// Attributions for isolation forests: exact path-dependent TreeSHAP (Lundberg et al. 2020,
// what shap.TreeExplainer computes) and the DIFFI-style path attribution, both of the mean path
// length E[h(x)]. Node sample counts, which both need, are recovered from the leaf values
// (leaf value = depth + c(n), c strictly increasing), so any stored forest can be explained.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"
#include "iforest.hpp"

namespace pynomaly {

class ForestExplainer {
public:
    // Leaves whose path tests at most this many distinct features get a table of 2^m values
    // (one per set of agreeing features; the Fast TreeSHAP v2 idea), the rest are computed per
    // row; table_budget caps the table entries of the whole forest (8 bytes each).
    static constexpr int kMaxTableBits = 10;
    static constexpr int64_t kDefaultTableBudget = int64_t(1) << 23;  // 64 MiB

    // Throws InvalidModel when a leaf value is not depth + c(n) for a count n <= psi, or a node
    // has two parents (the arrays describe no tree).
    explicit ForestExplainer(const Forest& forest, int max_table_bits = kMaxTableBits,
                             int64_t table_budget = kDefaultTableBudget);

    // E[h] over the training distribution the counts describe: what values + base start from.
    double expected_value() const { return expected_; }

    // phi (rows x d, row-major, overwritten): per-feature contributions to E[h(x)] (the mean
    // over trees of each tree's path length), so that sum_j phi[r, j] + expected_value() is
    // E[h(x_r)]. X must be float32, C-contiguous, finite. Independent of n_threads.
    void tree_shap(const float* X, int64_t rows, double* phi, int n_threads, const CancelCheck& cancel) const;
    // The DIFFI-style path attribution: each tree's change V(leaf) - V(root) for the leaf x
    // reaches, shared among the splits on x's path in proportion to 1 - n(child) / n(node) (how
    // much of the node's sample the split separates from x), each share credited to the feature
    // tested there. Shares per leaf are precomputed, so a row costs a walk per tree (as scoring)
    // plus one add per distinct feature on the path.
    void path(const float* X, int64_t rows, double* phi, int n_threads, const CancelCheck& cancel) const;

    int64_t n_features() const { return d_; }
    int64_t table_entries() const { return static_cast<int64_t>(table_.size()); }
    int64_t direct_leaves() const { return direct_leaves_; }  // leaves computed per row (no table)

private:
    struct Leaf {
        int32_t node;      // local node index
        int32_t m;         // distinct features on its path
        int32_t slot_off;  // into slot_feature_ / slot_z_ / slot_r_ (m entries)
        int64_t table;     // offset into table_ (2^m entries), or -1: computed per row
        double value;      // leaf value (path length) / n_trees
    };
    struct Tree {
        int32_t node_begin;  // global index of local node 0
        int32_t n_nodes;
        int32_t internal_off, internal_end;  // into internal_ (reachable internal nodes, parents first)
        int32_t leaf_off, leaf_end;          // into leaves_
    };
    struct Internal {
        int32_t node;  // local index
        int32_t feature;
        float threshold;
        int32_t left;  // local index of the left child; right is left + 1
        uint64_t bit;  // 1 << (slot of this feature on the node's path)
    };

    void shap_tree_rows(const Tree& t, const float* xt, int64_t n, int64_t R, double* acc,
                        std::vector<uint64_t>& mask, bool avx512, bool avx2) const;
    void direct_leaf(const Leaf& l, uint64_t agree, double* phi, int64_t stride) const;
    void path_one_row(const float* x, double* phi) const;

    int64_t d_ = 0;
    double expected_ = 0.0;
    int64_t direct_leaves_ = 0;
    int32_t max_nodes_ = 0;
    std::vector<Tree> trees_;
    std::vector<Internal> internal_;
    std::vector<Leaf> leaves_;
    std::vector<int32_t> slot_feature_;
    std::vector<double> slot_z_;  // product of child/parent count ratios over the slot's edges
    std::vector<double> slot_r_;  // (1 - z) / z
    std::vector<double> table_;
    std::vector<double> wshap_;  // Shapley weights w(k, m) = k! (m - k - 1)! / m!, row m of 65
    // For the path attribution: per leaf, each distinct feature on its path with its share of
    // the tree's change (V(leaf) - V(root)) / n_trees, padded with zero shares to the most
    // features of any leaf of the tree (a loop count the same for every row of a tree is one
    // the branch predictor gets right); and each node's test, or at a leaf its shares, in 16 bytes
    // (a walk is a chain of dependent loads of these).
    struct PathShare {
        double share;
        int32_t feature;
    };
    std::vector<PathShare> path_shares_;
    struct PathNode {
        int32_t feature = -1;  // -1: a leaf (or an unreachable node)
        float threshold = 0.0f;
        int32_t left = 0;      // internal: local index of the left child (right is left + 1);
                               // leaf: offset of its shares in path_shares_
        int32_t n_shares = 0;  // leaf: its tree's width (0: a one-node tree)
    };
    std::vector<PathNode> path_nodes_;
};

}  // namespace pynomaly
