// Isolation forest: validation of node arrays, compilation into the padded complete layout,
// training (one independent random stream per tree) and the chunked, threaded scoring driver.
#include "iforest.hpp"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>

#include "iforest_kernels.hpp"
#include "parallel.hpp"


namespace pynomaly {

double average_path_length(double n) {
    // Same expression as scikit-learn's _average_path_length so imported models agree.
    if (n <= 1.0) return 0.0;
    if (n <= 2.0) return 1.0;
    return 2.0 * (std::log(n - 1.0) + 0.5772156649015329) - 2.0 * (n - 1.0) / n;
}

namespace {

uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// splitmix64: tiny, fast and good enough for drawing samples and thresholds; one stream per
// tree keeps training independent of threads. Each stream starts at a hashed point of the
// 2^64 cycle: starting points that differ by a multiple of the increment (e.g. seed ^ c*t)
// would make the trees' streams shifted copies of each other, correlating the trees.
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed, uint64_t stream) : state(mix64(seed ^ mix64(stream + 0x632BE59BD9B4E019ULL))) {}
    static Rng resume(uint64_t state) {  // a stream paused by plan_tree, continued by grow_tree
        Rng r(0, 0);
        r.state = state;
        return r;
    }
    uint64_t next() { return mix64(state += 0x9E3779B97F4A7C15ULL); }
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
    uint64_t below(uint64_t n) {                                                // [0, n), unbiased
        uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % n);
        uint64_t v;
        do v = next(); while (v >= limit);
        return v % n;
    }
};

// Largest float32 not above t: for every float32 x, x <= t exactly when x <= round_down(t).
// This lets float64 thresholds (scikit-learn's) be tested in float32 without changing a split.
float round_down_to_float(double t) {
    float f = static_cast<float>(t);
    if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
}

template <class T>
double value_at(const MatrixView& X, int64_t r, int64_t c) {
    return static_cast<double>(X.ptr<T>()[r * X.row_stride + c * X.col_stride]);
}

double value_at(const MatrixView& X, int64_t r, int64_t c) {
    return X.is_float32 ? value_at<float>(X, r, c) : value_at<double>(X, r, c);
}

std::string bad_value_message(const MatrixView& X, int64_t r, int64_t c) {
    return ::pynomaly::bad_value_message(value_at(X, r, c), r, c);
}

}  // namespace

std::string bad_value_message(double v, int64_t r, int64_t c) {
    std::string where = " at row " + std::to_string(r) + ", column " + std::to_string(c);
    if (std::isnan(v)) return "X contains NaN" + where + "; impute or drop missing values first";
    if (std::isinf(v)) return "X contains infinity" + where + "; only finite values are accepted";
    return "X contains " + std::to_string(v) + where +
           ", outside the float32 range (|x| <= 3.4e38) in which features are compared";
}

namespace {

// Copies rows [r0, r0 + n) of X into a feature-major float32 block with column stride B,
// zero-padding rows n .. round_up(n, 16). Returns the first non-finite (after rounding to
// float32) position as a column-major scan, or -1.
template <class T>
int64_t load_block_t(const MatrixView& X, int64_t r0, int64_t n, int64_t B, float* xt) {
    const T* base = X.ptr<T>();
    const int64_t d = X.cols;
    for (int64_t j = 0; j < d; ++j) {
        float* col = xt + j * B;
        const T* src = base + r0 * X.row_stride + j * X.col_stride;
        for (int64_t i = 0; i < n; ++i) col[i] = static_cast<float>(src[i * X.row_stride]);
    }
    const int64_t padded = (n + 15) / 16 * 16;
    for (int64_t j = 0; j < d; ++j) {
        float* col = xt + j * B;
        for (int64_t i = n; i < padded; ++i) col[i] = 0.0f;
        bool ok = true;
        for (int64_t i = 0; i < n; ++i) ok &= std::fabs(col[i]) <= FLT_MAX;  // false for NaN
        if (!ok)
            for (int64_t i = 0; i < n; ++i)
                if (!(std::fabs(col[i]) <= FLT_MAX)) return i * d + j;
    }
    return -1;
}

int64_t load_block(const MatrixView& X, int64_t r0, int64_t n, int64_t B, float* xt) {
    return X.is_float32 ? load_block_t<float>(X, r0, n, B, xt) : load_block_t<double>(X, r0, n, B, xt);
}

// Copies the sampled rows and features of X into a row-major float32 matrix; returns the
// first position (i * k + j) whose value is not finite in float32, or -1.
template <class T>
int64_t gather_sample(const MatrixView& X, const std::vector<int64_t>& rows, const std::vector<int64_t>& fmap,
                      float* out) {
    const T* base = X.ptr<T>();
    const int64_t k = static_cast<int64_t>(fmap.size());
    bool ok = true;
    for (size_t i = 0; i < rows.size(); ++i) {
        const T* row = base + rows[i] * X.row_stride;
        float* o = out + i * k;
        for (int64_t j = 0; j < k; ++j) {
            o[j] = static_cast<float>(row[fmap[j] * X.col_stride]);
            ok &= std::fabs(o[j]) <= FLT_MAX;
        }
    }
    if (ok) return -1;
    for (int64_t p = 0; p < static_cast<int64_t>(rows.size()) * k; ++p)
        if (!(std::fabs(out[p]) <= FLT_MAX)) return p;
    return -1;
}

int64_t block_rows_for(int64_t n_features) {
    // Keep a block (features x rows, float32) within ~32 KiB so gathers hit L1.
    int64_t b = 32768 / (4 * std::max<int64_t>(n_features, 1));
    b = b / 16 * 16;
    return std::clamp<int64_t>(b, 16, 1024);
}

struct FirstError {
    std::mutex mu;
    int64_t row = std::numeric_limits<int64_t>::max();
    int64_t col = 0;
    void offer(int64_t r, int64_t c) {
        std::lock_guard<std::mutex> lock(mu);
        if (r < row) { row = r; col = c; }
    }
    bool any() const { return row != std::numeric_limits<int64_t>::max(); }
};

}  // namespace

Forest::Forest(ForestNodes nodes) : nodes_(std::move(nodes)) {
    const ForestNodes& n = nodes_;
    if (n.n_features < 1 || n.n_features > kMaxForestFeatures)
        throw InvalidModel("forest: n_features must be between 1 and " + std::to_string(kMaxForestFeatures) +
                           ", got " + std::to_string(n.n_features));
    if (n.psi < 1) throw InvalidModel("forest: samples per tree (psi) must be at least 1, got " + std::to_string(n.psi));
    if (n.tree_offset.size() < 2) throw InvalidModel("forest: it has no trees");
    if (n.tree_offset.size() - 1 > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
        throw InvalidModel("forest: too many trees");
    const size_t total = n.feature.size();
    if (n.threshold.size() != total || n.left.size() != total || n.leaf_value.size() != total)
        throw InvalidModel("forest: node arrays have different lengths");
    if (n.tree_offset.front() != 0 || n.tree_offset.back() < 0 || static_cast<size_t>(n.tree_offset.back()) != total)
        throw InvalidModel("forest: tree offsets do not span the node arrays");
    std::vector<int> depth;
    for (int t = 0; t < n.n_trees(); ++t) {
        const int32_t begin = n.tree_offset[t], end = n.tree_offset[t + 1];
        // begin >= 0 by induction from tree_offset[0] == 0, so end - begin cannot overflow; an
        // end past the arrays (found by fuzzing: [0, 3000, 2000]) read out of bounds.
        if (end <= begin) throw InvalidModel("forest: tree " + std::to_string(t) + " has no nodes");
        if (static_cast<size_t>(end) > total)
            throw InvalidModel("forest: tree " + std::to_string(t) + " ends past the node arrays");
        const int32_t m = end - begin;
        depth.assign(m, -1);
        depth[0] = 0;
        for (int32_t i = 0; i < m; ++i) {
            const int32_t g = begin + i;
            if (depth[i] < 0) continue;  // unreachable node: never read
            const std::string where = "forest: tree " + std::to_string(t) + " node " + std::to_string(i);
            if (n.feature[g] >= 0) {
                if (n.feature[g] >= n.n_features) throw InvalidModel(where + " tests a feature out of range");
                if (std::isnan(n.threshold[g])) throw InvalidModel(where + " has a NaN threshold");
                // Children after their parent: guarantees every path ends (no cycles).
                if (n.left[g] <= i || n.left[g] >= m - 1) throw InvalidModel(where + " has child indices out of range");
                const int dc = depth[i] + 1;
                if (dc > 64) throw InvalidModel(where + ": tree deeper than 64 levels");
                depth[n.left[g]] = std::max(depth[n.left[g]], dc);
                depth[n.left[g] + 1] = std::max(depth[n.left[g] + 1], dc);
            } else {
                if (n.feature[g] != -1) throw InvalidModel(where + " has a negative feature index");
                if (!std::isfinite(n.leaf_value[g]) || n.leaf_value[g] < 0)
                    throw InvalidModel(where + " has an invalid leaf value");
            }
            depth_ = std::max(depth_, depth[i]);
        }
    }
    compile();
}

void Forest::compile() {
    const int D = std::max(depth_, 1);  // a forest of single leaves still gets one padded level
    const int64_t T = nodes_.n_trees();
    compiled_ = Compiled{};
    compiled_.block_rows = block_rows_for(nodes_.n_features);
    complete_ = D <= kMaxCompleteDepth;  // checked first: 2^D is only computed where it fits
    if (!complete_) return;
    const int64_t S = int64_t(1) << D;
    const double bytes = double(T) * double(S) * 32.0;  // feature, threshold, leaf, test pair, key pair
    complete_ = bytes <= 512.0 * 1024 * 1024;
    if (!complete_) return;
    Compiled& c = compiled_;
    c.depth = D;
    c.slots = S;
    c.n_trees = T;
    c.n_features = nodes_.n_features;
    c.feature_scaled.assign(T * S, 0);
    c.threshold.assign(T * S, std::numeric_limits<float>::infinity());  // padding: always left
    c.leaf_value.assign(T * S, 0.0);
    c.tests.assign(T * S, Compiled::Test{0, std::numeric_limits<float>::infinity()});
    const int64_t B = c.block_rows;
    for (int64_t t = 0; t < T; ++t) {
        const int32_t base = nodes_.tree_offset[t];
        // Explicit stack: (local node, heap slot, level).
        std::vector<std::array<int64_t, 3>> stack{{0, 1, 0}};
        while (!stack.empty()) {
            auto [node, slot, level] = stack.back();
            stack.pop_back();
            const int32_t g = base + static_cast<int32_t>(node);
            if (nodes_.feature[g] >= 0) {
                c.feature_scaled[t * S + slot] = static_cast<int32_t>(nodes_.feature[g] * B);
                c.threshold[t * S + slot] = nodes_.threshold[g];
                c.tests[t * S + slot] = {c.feature_scaled[t * S + slot], nodes_.threshold[g]};
                stack.push_back({nodes_.left[g], 2 * slot, level + 1});
                stack.push_back({nodes_.left[g] + 1, 2 * slot + 1, level + 1});
            } else {
                const int64_t leaf = (slot << (D - level)) - S;  // always-left descendant at level D
                c.leaf_value[t * S + leaf] = nodes_.leaf_value[g];
            }
        }
    }
    c.key_nodes.resize(static_cast<size_t>(2 * T * S));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t s = 0; s < S; ++s) {
            c.key_nodes[2 * t * S + s] = static_cast<uint32_t>(c.feature_scaled[t * S + s]);
            c.key_nodes[2 * t * S + S + s] = order_key(c.threshold[t * S + s]);
        }
}

int64_t Forest::memory_bytes() const {
    auto bytes = [](const auto& v) { return static_cast<int64_t>(v.capacity() * sizeof(v[0])); };
    const Compiled& c = compiled_;
    return static_cast<int64_t>(sizeof(Forest)) + bytes(nodes_.tree_offset) + bytes(nodes_.feature) +
           bytes(nodes_.threshold) + bytes(nodes_.left) + bytes(nodes_.leaf_value) + bytes(c.feature_scaled) +
           bytes(c.threshold) + bytes(c.leaf_value) + bytes(c.tests) + bytes(c.key_nodes);
}

void Forest::check_input(const MatrixView& X) const {
    if (X.cols != nodes_.n_features)
        throw InvalidInput("X has " + std::to_string(X.cols) + " features, but the forest was fitted with " +
                           std::to_string(nodes_.n_features));
    if (X.rows < 1) throw InvalidInput("X has 0 rows; at least one row is required");
    if (nodes_.n_features * block_rows_for(nodes_.n_features) > std::numeric_limits<int32_t>::max())
        throw InvalidInput("too many features for the scoring layout");
}

void Forest::path_length_sum(const MatrixView& X, double* out, int n_threads, const CancelCheck& cancel) const {
    check_input(X);
    const int64_t B = compiled_.block_rows;
    const int64_t n_chunks = (X.rows + B - 1) / B;
    const IforestDispatch dispatch = iforest_dispatch(active_simd());
    const BlockKernel kernel = complete_ && !dispatch.reference ? dispatch.block : nullptr;
    FirstError bad;
    parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
        // Per-thread scratch, reused across chunks and calls.
        thread_local std::vector<float> xt;
        thread_local std::vector<double> acc;
        xt.resize(static_cast<size_t>(X.cols * B));
        const int64_t r0 = chunk * B, n = std::min(B, X.rows - r0);
        // The block's rows rounded up to the kernels' 16-row groups, not B: a single-row call
        // zeroes 16 values, not a whole block.
        acc.assign(static_cast<size_t>((n + 15) / 16 * 16), 0.0);
        const int64_t pos = load_block(X, r0, n, B, xt.data());
        if (pos >= 0) {
            bad.offer(r0 + pos / X.cols, pos % X.cols);
            return false;
        }
        if (kernel && n < dispatch.few_rows_min)
            few_rows_kernel(compiled_, xt.data(), n, acc.data());
        else if (kernel)
            kernel(compiled_, xt.data(), n, acc.data());
        else
            sparse_block_kernel(nodes_, B, xt.data(), n, acc.data());
        std::copy(acc.begin(), acc.begin() + n, out + r0);
        return true;
    });
    if (bad.any()) throw InvalidInput(bad_value_message(X, bad.row, bad.col));
}

void Forest::score(const MatrixView& X, double* out, int n_threads, const CancelCheck& cancel) const {
    path_length_sum(X, out, n_threads, cancel);
    const double denom = static_cast<double>(nodes_.n_trees()) * average_path_length(static_cast<double>(nodes_.psi));
    for (int64_t i = 0; i < X.rows; ++i) out[i] = denom != 0.0 ? std::exp2(-(out[i] / denom)) : 1.0;
}

namespace {

// Builds one tree in breadth-first order so that the two children of a node are adjacent.
struct TreeBuilder {
    const float* data;   // psi x k, row-major, the tree's sample restricted to its features
    int64_t k;           // features available to this tree
    const int64_t* fmap; // local feature -> column of X
    int max_depth;
    Rng& rng;

    std::vector<int32_t> feature, left;
    std::vector<float> threshold;
    std::vector<double> leaf_value;

    void build(int64_t psi) {
        struct Pending { int64_t start, end; int depth; };
        std::vector<int64_t> idx(psi);
        for (int64_t i = 0; i < psi; ++i) idx[i] = i;
        std::vector<int64_t> cand(k);
        std::vector<Pending> pending{{0, psi, 0}};
        pending.reserve(2 * psi);
        feature.reserve(2 * psi);
        threshold.reserve(2 * psi);
        left.reserve(2 * psi);
        leaf_value.reserve(2 * psi);
        for (size_t node = 0; node < pending.size(); ++node) {
            const Pending p = pending[node];
            const int64_t size = p.end - p.start;
            feature.push_back(-1);
            threshold.push_back(0.0f);
            left.push_back(0);
            leaf_value.push_back(static_cast<double>(p.depth) + average_path_length(static_cast<double>(size)));
            if (size <= 1 || p.depth >= max_depth) continue;
            // Draw features without replacement until one is not constant in this node,
            // as scikit-learn's random splitter does.
            for (int64_t j = 0; j < k; ++j) cand[j] = j;
            int64_t remaining = k;
            while (remaining > 0) {
                const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(remaining)));
                const int64_t f = cand[j];
                float lo = data[idx[p.start] * k + f], hi = lo;
                for (int64_t i = p.start + 1; i < p.end; ++i) {
                    const float v = data[idx[i] * k + f];
                    lo = std::min(lo, v);
                    hi = std::max(hi, v);
                }
                if (hi > lo) {
                    double t = lo + rng.uniform() * (static_cast<double>(hi) - lo);
                    if (t >= hi) t = lo;
                    const float thr = round_down_to_float(t);  // lo <= thr < hi: both sides non-empty
                    const auto mid = std::partition(idx.begin() + p.start, idx.begin() + p.end,
                                                    [&](int64_t r) { return data[r * k + f] <= thr; });
                    const int64_t m = mid - idx.begin();
                    feature[node] = static_cast<int32_t>(fmap[f]);
                    threshold[node] = thr;
                    left[node] = static_cast<int32_t>(pending.size());
                    leaf_value[node] = 0.0;
                    pending.push_back({p.start, m, p.depth + 1});
                    pending.push_back({m, p.end, p.depth + 1});
                    break;
                }
                std::swap(cand[j], cand[remaining - 1]);
                --remaining;
            }
        }
    }
};

}  // namespace


int64_t check_train_params(int64_t n, int64_t d, const ForestParams& params) {
    if (n < 2) throw InvalidInput("training needs at least 2 rows, got " + std::to_string(n));
    if (d < 1) throw InvalidInput("X has 0 features; at least one is required");
    if (params.n_estimators < 1) throw InvalidInput("n_estimators must be at least 1");
    if (params.max_samples < 2 || params.max_samples > n)
        throw InvalidInput("max_samples must be between 2 and the number of rows (" + std::to_string(n) + ")");
    const int64_t k = params.max_features == 0 ? d : params.max_features;
    if (k < 1 || k > d) throw InvalidInput("max_features must be between 1 and the number of features");
    if (d > kMaxForestFeatures) throw InvalidInput("too many features");
    return k;
}

TreePlan plan_tree(const ForestParams& params, int64_t n, int64_t d, int64_t tree) {
    const int64_t k = params.max_features == 0 ? d : params.max_features;
    const int64_t psi = params.max_samples;
    Rng rng(params.seed, static_cast<uint64_t>(tree));
    TreePlan plan;
    // Features for this tree (all of them unless max_features < d), drawn like rows below.
    plan.features.resize(d);
    for (int64_t j = 0; j < d; ++j) plan.features[j] = j;
    for (int64_t j = 0; j < k && k < d; ++j) std::swap(plan.features[j], plan.features[j + rng.below(d - j)]);
    plan.features.resize(k);
    std::sort(plan.features.begin(), plan.features.end());
    // Rows: all of them when psi == n, else Floyd's sampling without replacement, with a
    // per-thread bitmap of n bits (cleared again bit by bit) instead of a hash set.
    std::vector<int64_t>& rows = plan.rows;
    rows.reserve(psi);
    if (psi == n) {
        for (int64_t i = 0; i < n; ++i) rows.push_back(i);
    } else {
        thread_local std::vector<uint64_t> seen;
        if (seen.size() < static_cast<size_t>((n + 63) / 64)) seen.assign((n + 63) / 64, 0);
        auto test_and_set = [&](int64_t r) {
            const uint64_t bit = uint64_t(1) << (r & 63);
            const bool was = seen[r >> 6] & bit;
            seen[r >> 6] |= bit;
            return was;
        };
        for (int64_t j = n - psi; j < n; ++j) {
            int64_t r = static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)));
            if (test_and_set(r)) {
                r = j;
                test_and_set(j);
            }
            rows.push_back(r);
        }
        for (int64_t r : rows) seen[r >> 6] = 0;
    }
    plan.rng_state = rng.state;
    return plan;
}

int64_t grow_tree(const MatrixView& X, const std::vector<int64_t>& x_rows, const TreePlan& plan, TreeNodes& out) {
    const int64_t k = static_cast<int64_t>(plan.features.size());
    const int64_t psi = static_cast<int64_t>(x_rows.size());
    std::vector<float> sample(static_cast<size_t>(psi * k));
    const int64_t bad_at = X.is_float32 ? gather_sample<float>(X, x_rows, plan.features, sample.data())
                                        : gather_sample<double>(X, x_rows, plan.features, sample.data());
    if (bad_at >= 0) return bad_at;
    const int max_depth = static_cast<int>(std::ceil(std::log2(static_cast<double>(std::max<int64_t>(psi, 2)))));
    Rng rng = Rng::resume(plan.rng_state);
    TreeBuilder b{sample.data(), k, plan.features.data(), max_depth, rng, {}, {}, {}, {}};
    b.build(psi);
    out.feature = std::move(b.feature);
    out.threshold = std::move(b.threshold);
    out.left = std::move(b.left);
    out.leaf_value = std::move(b.leaf_value);
    return -1;
}

ForestNodes merge_trees(int64_t n_features, int64_t psi, const std::vector<TreeNodes>& trees) {
    ForestNodes nodes;
    nodes.n_features = n_features;
    nodes.psi = psi;
    nodes.tree_offset.push_back(0);
    for (const TreeNodes& t : trees) {
        nodes.feature.insert(nodes.feature.end(), t.feature.begin(), t.feature.end());
        nodes.threshold.insert(nodes.threshold.end(), t.threshold.begin(), t.threshold.end());
        nodes.left.insert(nodes.left.end(), t.left.begin(), t.left.end());
        nodes.leaf_value.insert(nodes.leaf_value.end(), t.leaf_value.begin(), t.leaf_value.end());
        nodes.tree_offset.push_back(static_cast<int32_t>(nodes.feature.size()));
    }
    return nodes;
}

Forest Forest::train(const MatrixView& X, const ForestParams& params, int n_threads, const CancelCheck& cancel) {
    const int64_t n = X.rows, d = X.cols;
    const int64_t k = check_train_params(n, d, params);
    const int T = params.n_estimators;
    std::vector<TreeNodes> trees(T);
    FirstError bad;
    // Plan and growth are the same two steps the distributed fit (pynomaly.dask) runs apart.
    parallel_chunks(T, n_threads, cancel, [&](int64_t t) {
        const TreePlan plan = plan_tree(params, n, d, t);
        const int64_t bad_at = grow_tree(X, plan.rows, plan, trees[t]);
        if (bad_at >= 0) {
            bad.offer(plan.rows[bad_at / k], plan.features[bad_at % k]);
            return false;
        }
        return true;
    });
    if (bad.any()) throw InvalidInput(bad_value_message(X, bad.row, bad.col));
    return Forest(merge_trees(d, params.max_samples, trees));
}

}  // namespace pynomaly
