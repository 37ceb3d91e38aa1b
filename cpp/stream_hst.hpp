// Half-Space Trees (Tan, Ting & Liu 2011) with River 0.26's semantics exactly: trees of fixed
// height grown at random over per-feature limits (River's make_padded_tree: a feature drawn
// with weight = its current range, a split drawn uniformly inside the middle 70% of it), mass
// profiles counted over a reference window (r_mass) and the latest window (l_mass), swapped
// every window_size records, and River's score 1 - sum(r_mass * 2**depth) / max.
// Trees are complete binary trees in heap order (node i has children 2i+1, 2i+2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "stream_common.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYNOMALY_HST_X86 1
#endif

namespace pynomaly {

// A node's count of records in a window: at most window_size (< 2**31). 32 bits halve the
// masses' memory traffic, which bounds the walk's speed.
using Mass = int32_t;

struct HstParams {
    int32_t n_trees = 10;
    int32_t height = 8;
    int64_t window_size = 250;
};

class HalfSpaceTrees {
  public:
    // Trees are grown now from `rng` (River grows them at the first learn_one) over `limits`
    // (lo, hi per feature, hi > lo).
    HalfSpaceTrees(const HstParams& p, int64_t n_features, const std::vector<double>& lo,
                   const std::vector<double>& hi, PyRandom& rng);
    // Trees given node by node (from River, or a snapshot): feature (internal nodes, n_trees x
    // (2**height - 1)), threshold (same), l_mass and r_mass (n_trees x (2**(height+1) - 1)).
    HalfSpaceTrees(const HstParams& p, int64_t n_features, std::vector<int32_t> feature,
                   std::vector<double> threshold, std::vector<Mass> l_mass, std::vector<Mass> r_mass,
                   int64_t counter, bool first_window);

    // Rows of X (rows x n_features, C order, finite: the caller checks). out may be null.
    void score(const double* X, int64_t rows, double* out, int n_jobs) const;
    void learn(const double* X, int64_t rows);
    void score_learn(const double* X, int64_t rows, double* out);  // prequential, row by row

    std::string to_bytes() const;
    static HalfSpaceTrees from_bytes(const char* data, size_t size);

    const HstParams& params() const { return p_; }
    int64_t n_features() const { return d_; }
    int64_t counter() const { return counter_; }
    bool first_window() const { return first_window_; }
    const std::vector<int32_t>& feature() const { return feature_; }
    const std::vector<double>& threshold() const { return threshold_; }
    const std::vector<Mass>& l_mass() const { return l_mass_; }
    const std::vector<Mass>& r_mass() const { return r_mass_; }
    int64_t memory_bytes() const;

    static void check_params(const HstParams& p, int64_t n_features);

  private:
    struct Split {
        double threshold = 0.0;
        int32_t feature = 0;
    };
    template <bool Score, bool Learn, class Acc, int R>
    void walk(const double* x, Mass* l_mass, double* out) const;
    template <int R>
    void walk_score(const double* x, Mass* l_mass, double* out) const;
#ifdef PYNOMALY_HST_X86
    template <bool Score>
    void walk4_avx512(const double* x, double* out);  // score (if Score) and learn four records
#endif
    void compile();
    double score_row(const double* x) const;
    int64_t score_learn_rows(const double* x, int64_t rows, double* out);  // records done
    void learn_row(const double* x);
    void end_of_record();

    HstParams p_;
    int64_t d_;
    int64_t internal_, nodes_;  // per tree
    std::vector<int32_t> feature_;
    std::vector<double> threshold_;
    std::vector<Mass> l_mass_, r_mass_;
    int64_t counter_ = 0;
    bool first_window_ = true;
    std::vector<Split> split_;  // n_trees x nodes, from feature_ and threshold_ (compile())
    double max_score_;
    bool exact_int_;
    bool avx512_ = false;  // the active SIMD target allows AVX-512 (read per score_learn call)
};

}  // namespace pynomaly
