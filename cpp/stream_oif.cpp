// Online Isolation Forest (stream_oif.hpp): learning, forgetting, scoring, snapshots.
#include "stream_oif.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

namespace pynomaly {

namespace {
constexpr uint32_t kOifVersion = 1;
constexpr int32_t kMaxDepth = 64;  // far above any depth limit a 2**40 window allows (20)
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

void OnlineIsolationForest::check_params(const OifParams& p, int64_t n_features) {
    if (p.n_trees < 1 || p.n_trees > 100000) throw InvalidInput("n_trees must be in [1, 100000], got " + std::to_string(p.n_trees));
    if (p.max_leaf_samples < 1 || p.max_leaf_samples > (int64_t{1} << 40))
        throw InvalidInput("max_leaf_samples must be a positive integer, got " + std::to_string(p.max_leaf_samples));
    if (p.window_size < 1 || p.window_size > (int64_t{1} << 40))
        throw InvalidInput("window_size must be a positive integer, got " + std::to_string(p.window_size));
    if (n_features < 1 || n_features > (int64_t{1} << 24))
        throw InvalidInput("a record must have at least 1 feature, got " + std::to_string(n_features));
}

OnlineIsolationForest::OnlineIsolationForest(const OifParams& p, int64_t n_features) : p_(p), d_(n_features) {
    check_params(p, n_features);
    trees_.resize(p_.n_trees);
    SplitMix seeder{p_.seed};
    for (auto& t : trees_) t.rng.state = seeder.next();  // independent streams per tree
}

double OnlineIsolationForest::split_size(int32_t depth) const {
    return p_.adaptive ? std::ldexp(static_cast<double>(p_.max_leaf_samples), depth)
                       : static_cast<double>(p_.max_leaf_samples);
}

double OnlineIsolationForest::path_length(double n) const {
    const double eta = static_cast<double>(p_.max_leaf_samples);
    return n < eta ? 0.0 : std::log(n / eta) / std::log(4.0);  // branching factor 2: log(2 * 2)
}

int32_t OnlineIsolationForest::new_node(Tree& t) {
    int32_t i;
    if (!t.free.empty()) {
        i = t.free.back();
        t.free.pop_back();
        t.nodes[i] = Node{};
    } else {
        i = static_cast<int32_t>(t.nodes.size());
        t.nodes.emplace_back();
        t.lo.resize(t.lo.size() + d_);
        t.hi.resize(t.hi.size() + d_);
    }
    std::fill_n(t.lo.begin() + i * d_, d_, kInf);
    std::fill_n(t.hi.begin() + i * d_, d_, -kInf);
    return i;
}

void OnlineIsolationForest::release_subtree(Tree& t, int32_t node) {
    if (t.nodes[node].left >= 0) {
        release_subtree(t, t.nodes[node].left);
        release_subtree(t, t.nodes[node].right);
    }
    t.free.push_back(node);
}

void OnlineIsolationForest::box_from_children(Tree& t, int32_t node) {
    const int64_t a = t.nodes[node].left * d_, b = t.nodes[node].right * d_, o = node * d_;
    for (int64_t j = 0; j < d_; ++j) {
        t.lo[o + j] = std::min(t.lo[a + j], t.lo[b + j]);
        t.hi[o + j] = std::max(t.hi[a + j], t.hi[b + j]);
    }
}

// A node that has too few records for its split becomes a leaf whose box covers its subtree's.
void OnlineIsolationForest::collapse(Tree& t, int32_t node) {
    const int32_t l = t.nodes[node].left, r = t.nodes[node].right;
    if (l < 0) return;
    collapse(t, l);
    collapse(t, r);
    box_from_children(t, node);
    t.free.push_back(l);
    t.free.push_back(r);
    t.nodes[node].left = t.nodes[node].right = -1;
}

// Grows an isolation subtree on points [begin, end) of pts (row-major, d per point) at `depth`.
int32_t OnlineIsolationForest::build(Tree& t, std::vector<double>& pts, int64_t begin, int64_t end, int32_t depth,
                                     double depth_limit) {
    const int32_t node = new_node(t);
    const int64_t n = end - begin;
    t.nodes[node].depth = depth;
    t.nodes[node].count = n;
    for (int64_t i = begin; i < end; ++i)
        for (int64_t j = 0; j < d_; ++j) {
            const double v = pts[i * d_ + j];
            t.lo[node * d_ + j] = std::min(t.lo[node * d_ + j], v);
            t.hi[node * d_ + j] = std::max(t.hi[node * d_ + j], v);
        }
    if (static_cast<double>(n) < split_size(depth) || depth >= depth_limit) return node;
    const int32_t f = static_cast<int32_t>(t.rng.below(static_cast<uint64_t>(d_)));
    const double mn = t.lo[node * d_ + f], mx = t.hi[node * d_ + f];
    const double split = mn + (mx - mn) * t.rng.uniform();
    // Partition rows in place: those below the split first (a row is d contiguous values).
    int64_t mid = begin;
    for (int64_t i = begin; i < end; ++i)
        if (pts[i * d_ + f] < split) {
            if (i != mid) std::swap_ranges(pts.begin() + i * d_, pts.begin() + (i + 1) * d_, pts.begin() + mid * d_);
            ++mid;
        }
    const int32_t l = build(t, pts, begin, mid, depth + 1, depth_limit);
    const int32_t r = build(t, pts, mid, end, depth + 1, depth_limit);
    Node& nd = t.nodes[node];
    nd.left = l;
    nd.right = r;
    nd.feature = f;
    nd.split = split;
    return node;
}

void OnlineIsolationForest::tree_learn(Tree& t, const double* x, double depth_limit) {
    if (t.root < 0) t.root = new_node(t);
    int32_t node = t.root, parent = -1;
    for (;;) {
        Node& nd = t.nodes[node];
        ++nd.count;
        if (nd.left < 0) {
            for (int64_t j = 0; j < d_; ++j) {
                t.lo[node * d_ + j] = std::min(t.lo[node * d_ + j], x[j]);
                t.hi[node * d_ + j] = std::max(t.hi[node * d_ + j], x[j]);
            }
            if (static_cast<double>(nd.count) >= split_size(nd.depth) && nd.depth < depth_limit) {
                // As many points as the leaf counted, uniform in its box, grown into a subtree.
                const int64_t n = nd.count;
                const int32_t depth = nd.depth;
                std::vector<double> pts(static_cast<size_t>(n * d_));
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t j = 0; j < d_; ++j) {
                        const double a = t.lo[node * d_ + j], b = t.hi[node * d_ + j];
                        pts[i * d_ + j] = a + (b - a) * t.rng.uniform();
                    }
                t.free.push_back(node);
                const int32_t sub = build(t, pts, 0, n, depth, depth_limit);
                if (parent < 0)
                    t.root = sub;
                else if (t.nodes[parent].left == node)
                    t.nodes[parent].left = sub;
                else
                    t.nodes[parent].right = sub;
            }
            return;
        }
        parent = node;
        node = x[nd.feature] < nd.split ? nd.left : nd.right;
    }
}

void OnlineIsolationForest::tree_unlearn(Tree& t, const double* x) {
    if (t.root < 0) return;
    int32_t node = t.root;
    for (;;) {
        Node& nd = t.nodes[node];
        --nd.count;
        if (nd.left < 0) return;
        if (static_cast<double>(nd.count) < split_size(nd.depth)) {
            collapse(t, node);
            return;
        }
        node = x[nd.feature] < nd.split ? nd.left : nd.right;
    }
}

void OnlineIsolationForest::learn_row(const double* x) {
    const double depth_limit = path_length(static_cast<double>(n_window_ + 1));
    for (auto& t : trees_) tree_learn(t, x, depth_limit);
    if (n_window_ < p_.window_size) {
        window_.insert(window_.end(), x, x + d_);  // grows with the stream only until the window is full
        ++n_window_;
        return;
    }
    // The oldest record leaves the window: its slot takes the new one, then every tree forgets it.
    std::vector<double> old(window_.begin() + head_ * d_, window_.begin() + (head_ + 1) * d_);
    std::copy(x, x + d_, window_.begin() + head_ * d_);
    head_ = (head_ + 1) % p_.window_size;
    for (auto& t : trees_) tree_unlearn(t, old.data());
}

double OnlineIsolationForest::score_row(const double* x) const {
    if (n_window_ == 0) return 0.0;  // nothing learned: nothing is anomalous yet (as River's HST)
    double sum = 0.0;
    for (const auto& t : trees_) {
        if (t.root < 0) continue;
        int32_t node = t.root;
        while (t.nodes[node].left >= 0) {
            const Node& nd = t.nodes[node];
            node = x[nd.feature] < nd.split ? nd.left : nd.right;
        }
        sum += t.nodes[node].depth + path_length(static_cast<double>(t.nodes[node].count));
    }
    const double mean = sum / static_cast<double>(p_.n_trees);
    return std::exp2(-mean / (path_length(static_cast<double>(n_window_)) + DBL_EPSILON));
}

void OnlineIsolationForest::score(const double* X, int64_t rows, double* out, int n_jobs) const {
    const int threads = rows >= 4096 ? effective_threads(n_jobs, rows) : 1;
    (void)threads;  // unused when built without OpenMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < rows; ++i) out[i] = score_row(X + i * d_);
}

void OnlineIsolationForest::learn(const double* X, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) learn_row(X + i * d_);
}

void OnlineIsolationForest::score_learn(const double* X, int64_t rows, double* out) {
    for (int64_t i = 0; i < rows; ++i) {
        out[i] = score_row(X + i * d_);
        learn_row(X + i * d_);
    }
}

int64_t OnlineIsolationForest::n_nodes() const {
    int64_t n = 0;
    for (const auto& t : trees_) n += static_cast<int64_t>(t.nodes.size() - t.free.size());
    return n;
}

int64_t OnlineIsolationForest::memory_bytes() const {
    int64_t b = static_cast<int64_t>(sizeof(*this) + window_.capacity() * sizeof(double));
    for (const auto& t : trees_)
        b += static_cast<int64_t>(sizeof(Tree) + t.nodes.capacity() * sizeof(Node) +
                                  (t.lo.capacity() + t.hi.capacity()) * sizeof(double) +
                                  t.free.capacity() * sizeof(int32_t));
    return b;
}

// ---- snapshots: params, the window oldest first, then each tree's generator and nodes in pre-order.
void OnlineIsolationForest::write_tree(ByteWriter& w, const Tree& t, int32_t node) const {
    const Node& nd = t.nodes[node];
    w.put<uint8_t>(nd.left < 0 ? 1 : 0);
    w.put<int64_t>(nd.count);
    if (nd.left < 0) {
        for (int64_t j = 0; j < d_; ++j) w.put<double>(t.lo[node * d_ + j]);
        for (int64_t j = 0; j < d_; ++j) w.put<double>(t.hi[node * d_ + j]);
    } else {
        w.put<int32_t>(nd.feature);
        w.put<double>(nd.split);
        write_tree(w, t, nd.left);
        write_tree(w, t, nd.right);
    }
}

std::string OnlineIsolationForest::to_bytes() const {
    ByteWriter w;
    w.put<uint32_t>(kOifVersion);
    w.put<int32_t>(p_.n_trees);
    w.put<int64_t>(p_.max_leaf_samples);
    w.put<int64_t>(p_.window_size);
    w.put<uint8_t>(p_.adaptive ? 1 : 0);
    w.put<uint64_t>(p_.seed);
    w.put<int64_t>(d_);
    w.put<int64_t>(n_window_);
    for (int64_t i = 0; i < n_window_; ++i) {
        const int64_t slot = (head_ + i) % n_window_;  // head_ is 0 until the window is full
        for (int64_t j = 0; j < d_; ++j) w.put<double>(window_[slot * d_ + j]);
    }
    for (const auto& t : trees_) {
        w.put<uint64_t>(t.rng.state);
        w.put<uint8_t>(t.root >= 0 ? 1 : 0);
        if (t.root >= 0) write_tree(w, t, t.root);
    }
    return std::move(w.out);
}

int32_t OnlineIsolationForest::read_tree(ByteReader& r, Tree& t, int32_t depth) {
    if (depth > kMaxDepth) throw InvalidModel("online isolation forest snapshot: a tree is deeper than 64");
    const uint8_t leaf = r.get<uint8_t>();
    if (leaf > 1) throw InvalidModel("online isolation forest snapshot: bad node kind");
    const int64_t count = r.get<int64_t>();
    // Learning splits a leaf into `count` sampled points, so a count is bounded as learning
    // bounds it: while nothing has been forgotten, within [0, records in the window]; after,
    // within (depth + 1) window lengths either way (a node created when its parent counted c
    // counts c, plus those learned through it since, minus the earlier records unlearned
    // through it).
    const int64_t limit = n_window_ < p_.window_size ? n_window_ : (depth + 1) * n_window_;
    if (count > limit || count < (n_window_ < p_.window_size ? 0 : -limit))
        throw InvalidModel("online isolation forest snapshot: a node's count is out of range");
    const int32_t node = new_node(t);
    t.nodes[node].depth = depth;
    t.nodes[node].count = count;
    if (leaf) {
        auto lo = r.get_array<double>(d_), hi = r.get_array<double>(d_);
        for (int64_t j = 0; j < d_; ++j)
            if (std::isnan(lo[j]) || std::isnan(hi[j])) throw InvalidModel("online isolation forest snapshot: NaN in a box");
        std::copy(lo.begin(), lo.end(), t.lo.begin() + node * d_);
        std::copy(hi.begin(), hi.end(), t.hi.begin() + node * d_);
    } else {
        const int32_t f = r.get<int32_t>();
        const double split = r.get<double>();
        if (f < 0 || f >= d_ || !std::isfinite(split))
            throw InvalidModel("online isolation forest snapshot: bad split (feature or value)");
        const int32_t a = read_tree(r, t, depth + 1);
        const int32_t b = read_tree(r, t, depth + 1);
        if (t.nodes[a].count + t.nodes[b].count != count)
            throw InvalidModel("online isolation forest snapshot: a node's count is not its children's sum");
        Node& nd = t.nodes[node];
        nd.feature = f;
        nd.split = split;
        nd.left = a;
        nd.right = b;
    }
    return node;
}

OnlineIsolationForest OnlineIsolationForest::from_bytes(const char* data, size_t size) {
    ByteReader r{data, size};
    if (r.get<uint32_t>() != kOifVersion) throw InvalidModel("online isolation forest snapshot: unknown state version");
    OifParams p;
    p.n_trees = r.get<int32_t>();
    p.max_leaf_samples = r.get<int64_t>();
    p.window_size = r.get<int64_t>();
    const uint8_t adaptive = r.get<uint8_t>();
    p.adaptive = adaptive == 1;
    p.seed = r.get<uint64_t>();
    const int64_t d = r.get<int64_t>();
    const int64_t n_window = r.get<int64_t>();
    try {
        check_params(p, d);
    } catch (const InvalidInput& e) {
        throw InvalidModel(std::string("online isolation forest snapshot: ") + e.what());
    }
    if (adaptive > 1 || n_window < 0 || n_window > p.window_size)
        throw InvalidModel("online isolation forest snapshot: bad growth flag or window count");
    // Every tree takes at least 9 bytes: refuse a tree count the blob cannot hold before allocating.
    if (static_cast<uint64_t>(p.n_trees) > r.left / 9)
        throw InvalidModel("online isolation forest snapshot is truncated");
    if (n_window > 0 && static_cast<uint64_t>(n_window) > r.left / 8 / static_cast<uint64_t>(d))
        throw InvalidModel("online isolation forest snapshot is truncated (the window is longer than the blob)");
    OnlineIsolationForest f(p, d);
    f.window_ = r.get_array<double>(static_cast<uint64_t>(n_window) * static_cast<uint64_t>(d));
    for (double v : f.window_)
        if (!std::isfinite(v)) throw InvalidModel("online isolation forest snapshot: a window value is not finite");
    f.n_window_ = n_window;
    for (auto& t : f.trees_) {
        t.rng.state = r.get<uint64_t>();
        const uint8_t has_root = r.get<uint8_t>();
        if (has_root != (n_window > 0 ? 1 : 0)) throw InvalidModel("online isolation forest snapshot: bad tree flag");
        if (has_root) {
            t.root = f.read_tree(r, t, 0);
            if (t.nodes[t.root].count != n_window)  // every record in the window passed the root
                throw InvalidModel("online isolation forest snapshot: a root does not count the window");
        }
    }
    r.expect_end();
    return f;
}

}  // namespace pynomaly
