// Half-Space Trees (stream_hst.hpp). Every arithmetic step follows River 0.26's anomaly/hst.py
// and tree/padded.py in the same order, so scores agree with River's bit for bit.
#include "stream_hst.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace pynomaly {

namespace {
constexpr double kPadding = 0.15;  // River's make_padded_tree(padding=0.15)
constexpr uint32_t kHstVersion = 1;

// River's make_padded_tree, pre-order: draw the feature (random.choices weighted by the
// current ranges) and the split (random.uniform in the padded range), then the left subtree
// over (lo, at), then the right over (at, hi).
void grow(int64_t node, int height, std::vector<double>& lo, std::vector<double>& hi, PyRandom& rng,
          int32_t* feature, double* threshold) {
    if (height == 0) return;
    const int64_t d = static_cast<int64_t>(lo.size());
    std::vector<double> cum(d);
    double acc = 0;
    for (int64_t j = 0; j < d; ++j) cum[j] = acc = (j == 0 ? (hi[j] - lo[j]) : acc + (hi[j] - lo[j]));
    const double pick = rng.random() * acc;
    // bisect_right(cum, pick, 0, d - 1)
    const int64_t on = std::upper_bound(cum.begin(), cum.begin() + (d - 1), pick) - cum.begin();
    const double a = lo[on], b = hi[on];
    const double ua = a + kPadding * (b - a), ub = b - kPadding * (b - a);
    const double at = ua + (ub - ua) * rng.random();
    feature[node] = static_cast<int32_t>(on);
    threshold[node] = at;
    hi[on] = at;
    grow(2 * node + 1, height - 1, lo, hi, rng, feature, threshold);
    hi[on] = b;
    lo[on] = at;
    grow(2 * node + 2, height - 1, lo, hi, rng, feature, threshold);
    lo[on] = a;
}
}  // namespace

void HalfSpaceTrees::check_params(const HstParams& p, int64_t n_features) {
    if (p.n_trees < 1 || p.n_trees > 100000) throw InvalidInput("n_trees must be in [1, 100000], got " + std::to_string(p.n_trees));
    if (p.height < 1 || p.height > 24) throw InvalidInput("height must be in [1, 24], got " + std::to_string(p.height));
    if (p.window_size < 1 || p.window_size > INT32_MAX)
        throw InvalidInput("window_size must be in [1, 2**31), got " + std::to_string(p.window_size));
    if (n_features < 1 || n_features > (int64_t{1} << 24))
        throw InvalidInput("a record must have at least 1 feature, got " + std::to_string(n_features));
    const int64_t nodes = (int64_t{1} << (p.height + 1)) - 1;
    if (static_cast<double>(p.n_trees) * nodes > double(int64_t{1} << 28))
        throw InvalidInput("n_trees * 2**(height+1) is too large (more than 2**28 nodes)");
}

HalfSpaceTrees::HalfSpaceTrees(const HstParams& p, int64_t n_features, const std::vector<double>& lo,
                               const std::vector<double>& hi, PyRandom& rng)
    : p_(p), d_(n_features) {
    check_params(p, n_features);
    if (static_cast<int64_t>(lo.size()) != d_ || static_cast<int64_t>(hi.size()) != d_)
        throw InvalidInput("limits must give (lo, hi) for every feature");
    for (int64_t j = 0; j < d_; ++j)
        if (!(hi[j] > lo[j]) || !std::isfinite(lo[j]) || !std::isfinite(hi[j]))
            throw InvalidInput("limits of feature " + std::to_string(j) + " must be finite with lo < hi");
    internal_ = (int64_t{1} << p_.height) - 1;
    nodes_ = 2 * internal_ + 1;
    feature_.assign(p_.n_trees * internal_, 0);
    threshold_.assign(p_.n_trees * internal_, 0.0);
    l_mass_.assign(p_.n_trees * nodes_, 0);
    r_mass_.assign(p_.n_trees * nodes_, 0);
    for (int32_t t = 0; t < p_.n_trees; ++t) {
        std::vector<double> l = lo, h = hi;
        grow(0, p_.height, l, h, rng, feature_.data() + t * internal_, threshold_.data() + t * internal_);
    }
    compile();
}

HalfSpaceTrees::HalfSpaceTrees(const HstParams& p, int64_t n_features, std::vector<int32_t> feature,
                               std::vector<double> threshold, std::vector<Mass> l_mass,
                               std::vector<Mass> r_mass, int64_t counter, bool first_window)
    : p_(p), d_(n_features), feature_(std::move(feature)), threshold_(std::move(threshold)),
      l_mass_(std::move(l_mass)), r_mass_(std::move(r_mass)), counter_(counter), first_window_(first_window) {
    check_params(p, n_features);
    internal_ = (int64_t{1} << p_.height) - 1;
    nodes_ = 2 * internal_ + 1;
    if (static_cast<int64_t>(feature_.size()) != p_.n_trees * internal_ ||
        static_cast<int64_t>(threshold_.size()) != p_.n_trees * internal_ ||
        static_cast<int64_t>(l_mass_.size()) != p_.n_trees * nodes_ ||
        static_cast<int64_t>(r_mass_.size()) != p_.n_trees * nodes_)
        throw InvalidModel("half-space trees: node arrays do not match n_trees and height");
    for (int32_t f : feature_)
        if (f < 0 || f >= d_) throw InvalidModel("half-space trees: a split feature is out of range");
    for (double v : threshold_)
        if (!std::isfinite(v)) throw InvalidModel("half-space trees: a split value is not finite");
    if (counter_ < 0 || counter_ >= p_.window_size)
        throw InvalidModel("half-space trees: the window counter is outside [0, window_size)");
    // A latest-window mass counts records of the current window, so it is at most the counter;
    // one above it would pass window_size while learning, and the snapshot would not load again.
    for (size_t i = 0; i < l_mass_.size(); ++i)
        if (l_mass_[i] < 0 || r_mass_[i] < 0 || l_mass_[i] > counter_ || r_mass_[i] > p_.window_size)
            throw InvalidModel("half-space trees: a mass is outside [0, window_size] (latest window: [0, counter])");
    compile();
}

// R records (rows of x, d_ apart) through every tree, trees walked in blocks side by side: the
// walks are independent chains of loads, so a block overlaps their latencies; steps are
// branch-free, since random splits make the direction unpredictable. Learning adds 1 to l_mass
// along each path; scoring sums r_mass * 2**depth per tree down to the first node whose r_mass
// is under the size limit (inclusive), as River does, then the trees in order. Several records
// may share a walk only while r_mass stays put (no window swap between them): their scores read
// only r_mass, and their increments of l_mass commute.
template <bool Score, bool Learn, class Acc, int R>
void HalfSpaceTrees::walk(const double* x, Mass* l_mass, double* out) const {
    constexpr int B = 16 / R;
    // r >= 0.1 * window_size, for an integer r, is r >= ceil(0.1 * window_size).
    const int64_t size_limit = static_cast<int64_t>(std::ceil(0.1 * static_cast<double>(p_.window_size)));
    const Split* split = split_.data();
    Acc score[R] = {};
    for (int32_t t0 = 0; t0 < p_.n_trees; t0 += B) {
        const int nb = std::min<int32_t>(B, p_.n_trees - t0);
        int64_t node[R][B] = {};
        Acc acc[R][B] = {};
        int64_t live[R][B];  // all ones while the tree is still summed, else 0: a mask, not a branch
        std::fill_n(&live[0][0], R * B, int64_t{-1});
        int64_t pow = 1;
        for (int32_t k = 0; k <= p_.height; ++k, pow <<= 1)
            for (int b = 0; b < nb; ++b) {
                const int64_t base = (t0 + b) * nodes_;
                for (int q = 0; q < R; ++q) {
                    const int64_t at = base + node[q][b];
                    if (Score) {
                        const int64_t r = r_mass_[at];
                        acc[q][b] += static_cast<Acc>(r * (pow & live[q][b]));  // + 0 once stopped: exact
                        live[q][b] &= -static_cast<int64_t>(r >= size_limit);
                    }
                    if (Learn) ++l_mass[at];
                    node[q][b] = 2 * node[q][b] + 1 + (x[q * d_ + split[at].feature] >= split[at].threshold ? 1 : 0);
                }
            }
        for (int q = 0; q < R; ++q)
            for (int b = 0; b < nb; ++b) score[q] += acc[q][b];
    }
    if (Score)
        for (int q = 0; q < R; ++q) out[q] = 1.0 - static_cast<double>(score[q]) / max_score_;
}

#ifdef PYNOMALY_HST_X86
// walk<Score, true, int64_t, 4> in vectors: 16 walks per vector (lane = record * 4 + tree of
// the vector's four), up to four vectors stepping together so that their gathers' latencies
// overlap (one vector alone waits on each level's gathers). The same integer sums
// (r_mass * 2**depth is r_mass << depth, masses being >= 0) and the same comparisons give the
// same scores. Learning's increments stay scalar: four records in one tree share nodes.
template <bool Score>
__attribute__((target("avx512f,avx512dq"))) void HalfSpaceTrees::walk4_avx512(const double* x, double* out) {
    static_assert(sizeof(Split) == 16 && offsetof(Split, feature) == 8, "the gathers read a split as 16 bytes");
    constexpr int V = 4;  // vectors stepping together: 16 trees
    const int32_t size_limit = static_cast<int32_t>(std::ceil(0.1 * static_cast<double>(p_.window_size)));
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i tree = _mm512_and_si512(lane, _mm512_set1_epi32(3)), one = _mm512_set1_epi32(1);
    const __m512i x_at = _mm512_mullo_epi32(_mm512_srli_epi32(lane, 2), _mm512_set1_epi32(static_cast<int32_t>(d_)));
    const char* split = reinterpret_cast<const char*>(split_.data());
    Mass* l_mass = l_mass_.data();
    int64_t score[4] = {};
    alignas(64) int32_t at_lane[V][16];
    alignas(64) int64_t acc_lane[16];
    for (int32_t g0 = 0; g0 < p_.n_trees; g0 += 4 * V) {
        const int nv = std::min<int32_t>(V, (p_.n_trees - g0 + 3) / 4);
        __m512i base[V], node[V], acc_lo[V], acc_hi[V];
        __mmask16 on[V], live[V];
        for (int v = 0; v < nv; ++v) {
            const int32_t t0 = g0 + 4 * v;
            on[v] = _mm512_cmplt_epi32_mask(tree, _mm512_set1_epi32(p_.n_trees - t0));
            base[v] = _mm512_mullo_epi32(_mm512_add_epi32(tree, _mm512_set1_epi32(t0)),
                                         _mm512_set1_epi32(static_cast<int32_t>(nodes_)));
            node[v] = acc_lo[v] = acc_hi[v] = _mm512_setzero_si512();
            live[v] = on[v];
        }
        for (int32_t k = 0; k <= p_.height; ++k) {
            // All vectors' gathers first, the scalar increments after: the gathers of one level
            // are then in flight together.
#pragma GCC unroll 4
            for (int v = 0; v < V; ++v) {
                if (v >= nv) break;
                const __m512i at = _mm512_add_epi32(base[v], node[v]);
                _mm512_store_si512(at_lane[v], at);
                if (Score) {
                    const __m512i r = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), on[v], at, r_mass_.data(), 4);
                    const __m512i r_lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(r));
                    const __m512i r_hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(r, 1));
                    acc_lo[v] = _mm512_mask_add_epi64(acc_lo[v], static_cast<__mmask8>(live[v]), acc_lo[v],
                                                      _mm512_slli_epi64(r_lo, k));
                    acc_hi[v] = _mm512_mask_add_epi64(acc_hi[v], static_cast<__mmask8>(live[v] >> 8), acc_hi[v],
                                                      _mm512_slli_epi64(r_hi, k));
                    live[v] = _mm512_mask_cmpge_epi32_mask(live[v], r, _mm512_set1_epi32(size_limit));
                }
                const __m512i at2 = _mm512_add_epi32(at, at);  // a split is 16 bytes: index 2 * at, scale 8
                const __m512i f = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), on[v], at2, split + 8, 8);
                const __m512i xi = _mm512_add_epi32(x_at, f);
                const __mmask8 on_lo = static_cast<__mmask8>(on[v]), on_hi = static_cast<__mmask8>(on[v] >> 8);
                const __m512d th_lo = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), on_lo, _mm512_castsi512_si256(at2), split, 8);
                const __m512d th_hi = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), on_hi, _mm512_extracti64x4_epi64(at2, 1), split, 8);
                const __m512d v_lo = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), on_lo, _mm512_castsi512_si256(xi), x, 8);
                const __m512d v_hi = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), on_hi, _mm512_extracti64x4_epi64(xi, 1), x, 8);
                const __mmask16 right = static_cast<__mmask16>(_mm512_cmp_pd_mask(v_lo, th_lo, _CMP_GE_OQ) |
                                                              (_mm512_cmp_pd_mask(v_hi, th_hi, _CMP_GE_OQ) << 8));
                node[v] = _mm512_add_epi32(_mm512_add_epi32(node[v], node[v]), one);
                node[v] = _mm512_mask_add_epi32(node[v], right, node[v], one);
            }
            for (int v = 0; v < nv; ++v)
                for (int l = 0; l < 16; ++l)
                    if ((on[v] >> l) & 1) ++l_mass[at_lane[v][l]];
        }
        if (Score)
            for (int v = 0; v < nv; ++v) {
                _mm512_store_si512(acc_lane, acc_lo[v]);
                _mm512_store_si512(acc_lane + 8, acc_hi[v]);
                for (int l = 0; l < 16; ++l) score[l >> 2] += acc_lane[l];  // lanes off summed 0
            }
    }
    if (Score)
        for (int q = 0; q < 4; ++q) out[q] = 1.0 - static_cast<double>(score[q]) / max_score_;
}
#endif

// River adds r_mass * 2**depth (integers) to a float per tree, then the trees' floats. While the
// largest possible sum (max_score_) is below 2**53 every partial sum is an exact integer, so
// 64-bit integer sums give the same result with cheaper steps; beyond, the float sums as River's.
template <int R>
void HalfSpaceTrees::walk_score(const double* x, Mass* l_mass, double* out) const {
    if (l_mass != nullptr)
        exact_int_ ? walk<true, true, int64_t, R>(x, l_mass, out) : walk<true, true, double, R>(x, l_mass, out);
    else
        exact_int_ ? walk<true, false, int64_t, R>(x, nullptr, out) : walk<true, false, double, R>(x, nullptr, out);
}

// The walk's layout: every node's split at the same index as its masses (leaves' unused), so
// one index reads all of a node.
void HalfSpaceTrees::compile() {
    const int64_t max_score = int64_t{p_.n_trees} * p_.window_size * nodes_;
    max_score_ = static_cast<double>(max_score);
    exact_int_ = max_score < (int64_t{1} << 53);
    split_.assign(p_.n_trees * nodes_, Split{});
    for (int64_t t = 0; t < p_.n_trees; ++t)
        for (int64_t i = 0; i < internal_; ++i)
            split_[t * nodes_ + i] = Split{threshold_[t * internal_ + i], feature_[t * internal_ + i]};
}

double HalfSpaceTrees::score_row(const double* x) const {
    double s = 0.0;
    if (!first_window_) walk_score<1>(x, nullptr, &s);
    return s;
}

void HalfSpaceTrees::learn_row(const double* x) {
    walk<false, true, int64_t, 1>(x, l_mass_.data(), nullptr);
    end_of_record();
}

// Score then learn in one walk: learning touches only l_mass and scoring reads only r_mass, and
// both follow the same path, so this equals score_row then learn_row. Four records share a walk
// when no window swap falls between them.
int64_t HalfSpaceTrees::score_learn_rows(const double* x, int64_t rows, double* out) {
    constexpr int R = 4;
    if (rows >= R && counter_ + R < p_.window_size) {  // the swap, if any, comes after the last
#ifdef PYNOMALY_HST_X86
        if (avx512_ && exact_int_) {
            if (first_window_) {
                walk4_avx512<false>(x, nullptr);
                std::fill_n(out, R, 0.0);
            } else {
                walk4_avx512<true>(x, out);
            }
            counter_ += R;
            return R;
        }
#endif
        if (first_window_) {
            walk<false, true, int64_t, R>(x, l_mass_.data(), nullptr);
            std::fill_n(out, R, 0.0);
        } else {
            walk_score<R>(x, l_mass_.data(), out);
        }
        counter_ += R;
        return R;
    }
    out[0] = 0.0;
    if (first_window_)
        walk<false, true, int64_t, 1>(x, l_mass_.data(), nullptr);
    else
        walk_score<1>(x, l_mass_.data(), out);
    end_of_record();
    return 1;
}

// River's window pivot: after window_size records the latest masses become the reference.
void HalfSpaceTrees::end_of_record() {
    if (++counter_ == p_.window_size) {
        r_mass_.swap(l_mass_);
        std::fill(l_mass_.begin(), l_mass_.end(), 0);
        first_window_ = false;
        counter_ = 0;
    }
}

void HalfSpaceTrees::score(const double* X, int64_t rows, double* out, int n_jobs) const {
    const int threads = rows >= 4096 ? effective_threads(n_jobs, rows) : 1;
    (void)threads;  // unused when built without OpenMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < rows; ++i) out[i] = score_row(X + i * d_);
}

void HalfSpaceTrees::learn(const double* X, int64_t rows) {
    for (int64_t i = 0; i < rows; ++i) learn_row(X + i * d_);
}

void HalfSpaceTrees::score_learn(const double* X, int64_t rows, double* out) {
    avx512_ = simd_includes(active_simd(), SimdTarget::avx512);
    for (int64_t i = 0; i < rows;) i += score_learn_rows(X + i * d_, rows - i, out + i);
}

int64_t HalfSpaceTrees::memory_bytes() const {
    return static_cast<int64_t>(feature_.capacity() * sizeof(int32_t) + threshold_.capacity() * sizeof(double) + split_.capacity() * sizeof(Split) +
                                (l_mass_.capacity() + r_mass_.capacity()) * sizeof(Mass) + sizeof(*this));
}

std::string HalfSpaceTrees::to_bytes() const {
    ByteWriter w;
    w.put<uint32_t>(kHstVersion);
    w.put<int32_t>(p_.n_trees);
    w.put<int32_t>(p_.height);
    w.put<int64_t>(p_.window_size);
    w.put<int64_t>(d_);
    w.put<int64_t>(counter_);
    w.put<uint8_t>(first_window_ ? 1 : 0);
    w.put_array(feature_);
    w.put_array(threshold_);
    w.put_array(l_mass_);
    w.put_array(r_mass_);
    return std::move(w.out);
}

HalfSpaceTrees HalfSpaceTrees::from_bytes(const char* data, size_t size) {
    ByteReader r{data, size};
    if (r.get<uint32_t>() != kHstVersion) throw InvalidModel("half-space trees snapshot: unknown state version");
    HstParams p;
    p.n_trees = r.get<int32_t>();
    p.height = r.get<int32_t>();
    p.window_size = r.get<int64_t>();
    const int64_t d = r.get<int64_t>();
    const int64_t counter = r.get<int64_t>();
    const uint8_t first = r.get<uint8_t>();
    try {
        check_params(p, d);
    } catch (const InvalidModel&) {
        throw;
    } catch (const InvalidInput& e) {
        throw InvalidModel(std::string("half-space trees snapshot: ") + e.what());
    }
    if (first > 1) throw InvalidModel("half-space trees snapshot: bad window flag");
    const uint64_t internal = (uint64_t{1} << p.height) - 1, nodes = 2 * internal + 1;
    auto feature = r.get_array<int32_t>(p.n_trees * internal);
    auto threshold = r.get_array<double>(p.n_trees * internal);
    auto l = r.get_array<Mass>(p.n_trees * nodes);
    auto rm = r.get_array<Mass>(p.n_trees * nodes);
    r.expect_end();
    return HalfSpaceTrees(p, d, std::move(feature), std::move(threshold), std::move(l), std::move(rm), counter,
                          first == 1);
}

}  // namespace pynomaly
