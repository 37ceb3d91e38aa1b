// Online Isolation Forest (stream_oif.hpp): learning, forgetting, scoring, snapshots.
#include "stream_oif.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PYNOMALY_OIF_X86 1
#endif

namespace pynomaly {

namespace {
constexpr uint32_t kOifVersion = 1;
constexpr int32_t kMaxDepth = 64;  // far above any depth limit a 2**40 window allows (20)
constexpr double kInf = std::numeric_limits<double>::infinity();
// Split buffers up to this many values are kept for the next split (splits of a few hundred
// points are the steady state); a larger one is freed after use.
constexpr size_t kKeptPoints = size_t{1} << 13;

// A leaf's box widened to take x in: lo = min(lo, x), hi = max(hi, x) per feature.
void widen(double* lo, double* hi, const double* x, int64_t d) {
    for (int64_t j = 0; j < d; ++j) {
        lo[j] = std::min(lo[j], x[j]);
        hi[j] = std::max(hi[j], x[j]);
    }
}

// `count` draws of rng.uniform(), in order.
void uniforms(SplitMix& rng, double* out, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = rng.uniform();
}

#ifdef PYNOMALY_OIF_X86
// The same, eight features at a time. min_pd(v, lo) is v where v < lo, else lo: std::min(lo, v).
__attribute__((target("avx512f"))) void widen_avx512(double* lo, double* hi, const double* x, int64_t d) {
    for (int64_t j = 0; j < d; j += 8) {
        const __mmask8 m = d - j >= 8 ? 0xFF : static_cast<__mmask8>((1u << (d - j)) - 1);
        const __m512d v = _mm512_maskz_loadu_pd(m, x + j);
        _mm512_mask_storeu_pd(lo + j, m, _mm512_min_pd(v, _mm512_maskz_loadu_pd(m, lo + j)));
        _mm512_mask_storeu_pd(hi + j, m, _mm512_max_pd(v, _mm512_maskz_loadu_pd(m, hi + j)));
    }
}

// The same draws eight at a time: splitmix's state is a counter (draw k mixes state + k * gamma),
// so eight consecutive draws are eight independent mixes, and the state advances by count * gamma.
__attribute__((target("avx512f,avx512dq"))) void uniforms_avx512(SplitMix& rng, double* out, int64_t count) {
    const uint64_t gamma = 0x9E3779B97F4A7C15ull;
    using ll = long long;
    __m512i s = _mm512_set_epi64(ll(rng.state + 8 * gamma), ll(rng.state + 7 * gamma), ll(rng.state + 6 * gamma),
                                 ll(rng.state + 5 * gamma), ll(rng.state + 4 * gamma), ll(rng.state + 3 * gamma),
                                 ll(rng.state + 2 * gamma), ll(rng.state + gamma));
    const __m512i step = _mm512_set1_epi64(ll(gamma * 8)), c1 = _mm512_set1_epi64(ll(0xBF58476D1CE4E5B9ull)),
                  c2 = _mm512_set1_epi64(ll(0x94D049BB133111EBull));
    const __m512d scale = _mm512_set1_pd(1.0 / 9007199254740992.0);
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m512i z = _mm512_mullo_epi64(_mm512_xor_si512(s, _mm512_srli_epi64(s, 30)), c1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2);
        z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
        _mm512_storeu_pd(out + i, _mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(z, 11)), scale));
        s = _mm512_add_epi64(s, step);
    }
    rng.state += gamma * static_cast<uint64_t>(i);
    for (; i < count; ++i) out[i] = rng.uniform();
}
#endif
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
    split_size_.resize(kMaxDepth + 2);
    for (int32_t depth = 0; depth < kMaxDepth + 2; ++depth) split_size_[depth] = split_size_formula(depth);
    // Leaf counts stay near the window; a count past the table (or below 0) takes the formula.
    path_length_.resize(static_cast<size_t>(std::min<int64_t>(p_.window_size, int64_t{1} << 16) + 1));
    for (size_t n = 0; n < path_length_.size(); ++n) path_length_[n] = path_length(static_cast<double>(n));
}

double OnlineIsolationForest::split_size_formula(int32_t depth) const {
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
    if (t.nodes[node].kid[0] >= 0) {
        release_subtree(t, t.nodes[node].kid[0]);
        release_subtree(t, t.nodes[node].kid[1]);
    }
    t.free.push_back(node);
}

void OnlineIsolationForest::box_from_children(Tree& t, int32_t node) {
    const int64_t a = t.nodes[node].kid[0] * d_, b = t.nodes[node].kid[1] * d_, o = node * d_;
    for (int64_t j = 0; j < d_; ++j) {
        t.lo[o + j] = std::min(t.lo[a + j], t.lo[b + j]);
        t.hi[o + j] = std::max(t.hi[a + j], t.hi[b + j]);
    }
}

// A node that has too few records for its split becomes a leaf whose box covers its subtree's.
void OnlineIsolationForest::collapse(Tree& t, int32_t node) {
    const int32_t l = t.nodes[node].kid[0], r = t.nodes[node].kid[1];
    if (l < 0) return;
    collapse(t, l);
    collapse(t, r);
    box_from_children(t, node);
    t.free.push_back(l);
    t.free.push_back(r);
    t.nodes[node].kid[0] = t.nodes[node].kid[1] = -1;
}

void OnlineIsolationForest::widen_box(double* lo, double* hi, const double* x) const {
#ifdef PYNOMALY_OIF_X86
    if (avx512_) return widen_avx512(lo, hi, x, d_);
#endif
    widen(lo, hi, x, d_);
}

// Grows an isolation subtree at `depth` on the sampled points order_[begin, end) of points_
// (row-major, d per point). Only leaves need their box over every feature; an inner node needs
// the range of its split feature alone (an inner node's box is never read), so most of a
// split's work is one pass over each leaf's points. Partitioning indices, not rows, visits the
// points in the order a partition of the rows would, so every min and max sees the same sequence.
int32_t OnlineIsolationForest::build(Tree& t, int64_t begin, int64_t end, int32_t depth, double depth_limit) {
    const int32_t node = new_node(t);
    const int64_t count = end - begin;
    t.nodes[node].depth = depth;
    t.nodes[node].count = count;
    const int64_t* idx = order_.data();
    if (static_cast<double>(count) < split_size(depth) || depth >= depth_limit) {
        double* lo = &t.lo[node * d_];
        double* hi = &t.hi[node * d_];
        for (int64_t i = begin; i < end; ++i) widen_box(lo, hi, &points_[idx[i] * d_]);
        return node;
    }
    const int32_t f = static_cast<int32_t>(t.rng.below(static_cast<uint64_t>(d_)));
    const double* col = &points_[f];
    double mn = kInf, mx = -kInf;
    for (int64_t i = begin; i < end; ++i) {
        mn = std::min(mn, col[idx[i] * d_]);
        mx = std::max(mx, col[idx[i] * d_]);
    }
    const double split = mn + (mx - mn) * t.rng.uniform();
    int64_t mid = begin;  // those below the split first
    for (int64_t i = begin; i < end; ++i)
        if (col[order_[i] * d_] < split) std::swap(order_[i], order_[mid++]);
    const int32_t l = build(t, begin, mid, depth + 1, depth_limit);
    const int32_t r = build(t, mid, end, depth + 1, depth_limit);
    Node& nd = t.nodes[node];
    nd.kid[0] = l;
    nd.kid[1] = r;
    nd.feature = f;
    nd.split = split;
    return node;
}

// Walks `m` trees side by side down to the leaf x falls in, counting x into every inner node on
// the way. A walk is a chain of dependent loads (node, x[feature], child) that mispredicts
// where its leaf is; in lockstep the trees' chains overlap and only the last step mispredicts.
// A tree at its leaf stays there (its step adds 0 and picks the same node).
void OnlineIsolationForest::descend_learning(Tree* trees, int m, const double* x, int32_t* leaf, int32_t* parent) {
    for (int g = 0; g < m; ++g) {
        if (trees[g].root < 0) trees[g].root = new_node(trees[g]);
        leaf[g] = trees[g].root;
        parent[g] = -1;
    }
    for (bool moving = true; moving;) {
        moving = false;
        for (int g = 0; g < m; ++g) {
            Node& nd = trees[g].nodes[leaf[g]];
            const bool inner = nd.kid[0] >= 0;
            const int32_t next = nd.kid[!(x[nd.feature] < nd.split)];  // an index, not a branch
            nd.count += inner;
            parent[g] = inner ? leaf[g] : parent[g];
            leaf[g] = inner ? next : leaf[g];
            moving |= inner;
        }
    }
}

// x reached `node`, a leaf of t (under `parent`, -1 for the root): counts it, widens the leaf's
// box, splits the leaf when it has counted enough. Returns what scoring x before learning it
// adds for this tree (the leaf's depth + c(its count)): the path learned is the path scored,
// so score-then-learn walks each tree once.
double OnlineIsolationForest::learn_at_leaf(Tree& t, const double* x, int32_t node, int32_t parent, double depth_limit) {
    Node* nd = &t.nodes[node];
    const double scored = nd->depth + count_path_length(nd->count);
    ++nd->count;
    double* lo = &t.lo[node * d_];
    double* hi = &t.hi[node * d_];
    widen_box(lo, hi, x);
    if (static_cast<double>(nd->count) >= split_size(nd->depth) && nd->depth < depth_limit) {
        // As many points as the leaf counted, uniform in its box, grown into a subtree.
        const int64_t n = nd->count;
        const int32_t depth = nd->depth;
        // Buffers kept between splits: no allocation per split.
        points_.resize(static_cast<size_t>(n * d_));
        order_.resize(static_cast<size_t>(n));
#ifdef PYNOMALY_OIF_X86
        if (avx512_)
            uniforms_avx512(t.rng, points_.data(), n * d_);
        else
#endif
            uniforms(t.rng, points_.data(), n * d_);
        for (int64_t i = 0; i < n; ++i) {  // the draws in place become points: lo + (hi - lo) * u
            order_[i] = i;
            double* p = &points_[i * d_];
            for (int64_t j = 0; j < d_; ++j) p[j] = lo[j] + (hi[j] - lo[j]) * p[j];
        }
        t.free.push_back(node);
        const int32_t sub = build(t, 0, n, depth, depth_limit);
        if (points_.capacity() > kKeptPoints) {  // a rare large split (the depth limit rising): not held on to
            std::vector<double>().swap(points_);
            std::vector<int64_t>().swap(order_);
        }
        if (parent < 0)
            t.root = sub;
        else
            t.nodes[parent].kid[t.nodes[parent].kid[0] == node ? 0 : 1] = sub;
    }
    return scored;
}

// Forgets x in `m` trees side by side (as descend_learning walks): uncounts it along its path
// down to its leaf, or down to the first node left with too few records for its split, which
// collapses into a leaf.
void OnlineIsolationForest::forget(Tree* trees, int m, const double* x) {
    // Depths stay within the table: learning grows no deeper than the depth limit (<= 21 for
    // any window), a snapshot's trees no deeper than kMaxDepth.
    const double* split_size = split_size_.data();
    int32_t at[kGroup];
    bool walking[kGroup];
    for (int g = 0; g < m; ++g) {  // called with a full window: every tree has a root
        at[g] = trees[g].root;
        walking[g] = true;
    }
    for (bool moving = true; moving;) {
        moving = false;
        for (int g = 0; g < m; ++g) {
            Node& nd = trees[g].nodes[at[g]];
            nd.count -= walking[g];
            // & of bools, not &&: no branch on the coin tosses of the walk
            const bool on = walking[g] & (nd.kid[0] >= 0) & (static_cast<double>(nd.count) >= split_size[nd.depth]);
            const int32_t next = nd.kid[!(x[nd.feature] < nd.split)];
            at[g] = on ? next : at[g];
            walking[g] = on;
            moving |= on;
        }
    }
    for (int g = 0; g < m; ++g)
        if (trees[g].nodes[at[g]].kid[0] >= 0) collapse(trees[g], at[g]);  // stopped above its leaf
}

// Learns x in every tree, then forgets the record leaving the window; returns the sum over
// trees, in tree order, of what scoring x before learning it adds (score_of turns it into x's
// score when the window was not empty).
double OnlineIsolationForest::learn_row(const double* x) {
    const double depth_limit = path_length(static_cast<double>(n_window_ + 1));
    const int n_trees = p_.n_trees;
    double depth_sum = 0.0;
    for (int g0 = 0; g0 < n_trees; g0 += kGroup) {
        const int m = std::min(kGroup, n_trees - g0);
        int32_t leaf[kGroup], parent[kGroup];
        descend_learning(&trees_[g0], m, x, leaf, parent);
        for (int g = 0; g < m; ++g) depth_sum += learn_at_leaf(trees_[g0 + g], x, leaf[g], parent[g], depth_limit);
    }
    if (n_window_ < p_.window_size) {
        window_.insert(window_.end(), x, x + d_);  // grows with the stream only until the window is full
        ++n_window_;
        return depth_sum;
    }
    // The oldest record leaves the window: every tree forgets it, then its slot takes the new one.
    double* slot = &window_[head_ * d_];
    for (int g0 = 0; g0 < n_trees; g0 += kGroup) forget(&trees_[g0], std::min(kGroup, n_trees - g0), slot);
    std::copy(x, x + d_, slot);
    head_ = (head_ + 1) % p_.window_size;
    return depth_sum;
}

double OnlineIsolationForest::score_of(double depth_sum, int64_t window_count) const {
    const double mean = depth_sum / static_cast<double>(p_.n_trees);
    return std::exp2(-mean / (count_path_length(window_count) + DBL_EPSILON));
}

double OnlineIsolationForest::score_row(const double* x) const {
    if (n_window_ == 0) return 0.0;  // nothing learned: nothing is anomalous yet (as River's HST)
    double sum = 0.0;
    for (const auto& t : trees_) {
        if (t.root < 0) continue;
        const Node* nd = &t.nodes[t.root];
        while (nd->kid[0] >= 0) nd = &t.nodes[nd->kid[!(x[nd->feature] < nd->split)]];
        sum += nd->depth + count_path_length(nd->count);
    }
    return score_of(sum, n_window_);
}

void OnlineIsolationForest::score(const double* X, int64_t rows, double* out, int n_jobs) const {
    const int threads = rows >= 4096 ? effective_threads(n_jobs, rows) : 1;
    (void)threads;  // unused when built without OpenMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < rows; ++i) out[i] = score_row(X + i * d_);
}

void OnlineIsolationForest::learn(const double* X, int64_t rows) {
    avx512_ = simd_includes(active_simd(), SimdTarget::avx512);
    for (int64_t i = 0; i < rows; ++i) learn_row(X + i * d_);
}

void OnlineIsolationForest::score_learn(const double* X, int64_t rows, double* out) {
    avx512_ = simd_includes(active_simd(), SimdTarget::avx512);
    for (int64_t i = 0; i < rows; ++i) {
        if (n_window_ == 0) {  // the first record ever: scored 0, as score_row does
            out[i] = 0.0;
            learn_row(X + i * d_);
            continue;
        }
        const int64_t scored_against = n_window_;  // learning x adds it to the window
        out[i] = score_of(learn_row(X + i * d_), scored_against);
    }
}

int64_t OnlineIsolationForest::n_nodes() const {
    int64_t n = 0;
    for (const auto& t : trees_) n += static_cast<int64_t>(t.nodes.size() - t.free.size());
    return n;
}

int64_t OnlineIsolationForest::memory_bytes() const {
    int64_t b = static_cast<int64_t>(sizeof(*this) + (window_.capacity() + split_size_.capacity() +
                                                      path_length_.capacity() + points_.capacity() + order_.capacity()) *
                                                         sizeof(double));
    for (const auto& t : trees_)
        b += static_cast<int64_t>(sizeof(Tree) + t.nodes.capacity() * sizeof(Node) +
                                  (t.lo.capacity() + t.hi.capacity()) * sizeof(double) +
                                  t.free.capacity() * sizeof(int32_t));
    return b;
}

// ---- snapshots: params, the window oldest first, then each tree's generator and nodes in pre-order.
void OnlineIsolationForest::write_tree(ByteWriter& w, const Tree& t, int32_t node) const {
    const Node& nd = t.nodes[node];
    w.put<uint8_t>(nd.kid[0] < 0 ? 1 : 0);
    w.put<int64_t>(nd.count);
    if (nd.kid[0] < 0) {
        for (int64_t j = 0; j < d_; ++j) w.put<double>(t.lo[node * d_ + j]);
        for (int64_t j = 0; j < d_; ++j) w.put<double>(t.hi[node * d_ + j]);
    } else {
        w.put<int32_t>(nd.feature);
        w.put<double>(nd.split);
        write_tree(w, t, nd.kid[0]);
        write_tree(w, t, nd.kid[1]);
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
        nd.kid[0] = a;
        nd.kid[1] = b;
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
