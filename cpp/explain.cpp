// Isolation-forest attributions: recovering node counts from leaf values, the per-leaf form of
// path-dependent TreeSHAP (tables of 2^m values or a per-row product-game formula), and the
// DIFFI-style path attribution.
//
// Why per leaf: a leaf l with value v whose path tests the distinct features U (m of them)
// contributes to E[h] the game v * prod_{j in S} o_j * prod_{j not in S} z_j, where o_j = 1 when
// x passes every test on j along the path and z_j is the product of the count ratios
// (child / parent) of those edges. Its Shapley values, with A = {j : o_j = 1} and
// G(B) = sum_{S subset B} w(|S|, m) prod_{j in U \ S} z_j, are
//     phi_i = v (1 - z_i) / z_i * G(A \ {i})   for i in A,
//     phi_i = -v G(A)                          for i in U \ A,
// sums of positive terms only (no cancellation). A row needs, per leaf, A (one mask, built by
// one pass over the tree's nodes) and m table reads: O(L m) per tree instead of shap's O(L D^2).
#include "explain.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "parallel.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PYNOMALY_EXPLAIN_X86 1
#endif

namespace pynomaly {

namespace {

constexpr int kMaxSlots = 64;  // Forest validation bounds depth by 64
constexpr int64_t kRowsPerChunk = 32;
constexpr int64_t kShapRowsPerChunk = 128;  // TreeSHAP's largest chunk (see tree_shap)

// The count n in [1, psi] with c(n) = r (leaf value minus depth), or -1 when none is close.
int64_t recover_count(double r, int64_t psi) {
    int64_t lo = 1, hi = std::max<int64_t>(psi, 1);
    while (lo < hi) {  // smallest n with c(n) >= r
        const int64_t mid = lo + (hi - lo) / 2;
        if (average_path_length(static_cast<double>(mid)) >= r) hi = mid; else lo = mid + 1;
    }
    int64_t best = lo;
    if (lo > 1 && std::fabs(average_path_length(double(lo - 1)) - r) < std::fabs(average_path_length(double(lo)) - r))
        best = lo - 1;
    const double err = std::fabs(average_path_length(static_cast<double>(best)) - r);
    return err <= 1e-7 * std::max(1.0, std::fabs(r)) ? best : -1;
}

}  // namespace

ForestExplainer::ForestExplainer(const Forest& forest, int max_table_bits, int64_t table_budget) {
    const ForestNodes& N = forest.nodes();
    d_ = N.n_features;
    path_nodes_.assign(N.feature.size(), PathNode{});
    const int T = N.n_trees();
    const double inv_t = 1.0 / T;
    max_table_bits = std::clamp(max_table_bits, 0, 20);

    // w(k, m) = 1 / (m * C(m - 1, k)); w(m, m) = 0 (a set never includes the feature it credits).
    wshap_.assign((kMaxSlots + 1) * (kMaxSlots + 1), 0.0);
    for (int m = 1; m <= kMaxSlots; ++m) {
        double binom = 1.0;  // C(m - 1, k)
        for (int k = 0; k < m; ++k) {
            wshap_[m * (kMaxSlots + 1) + k] = 1.0 / (m * binom);
            binom = binom * (m - 1 - k) / (k + 1);
        }
    }

    std::vector<int32_t> parent, depth, path;
    std::vector<double> count, value;
    for (int t = 0; t < T; ++t) {
        const int32_t begin = N.tree_offset[t], m_nodes = N.tree_offset[t + 1] - begin;
        max_nodes_ = std::max(max_nodes_, m_nodes);
        Tree tree{begin, m_nodes, static_cast<int32_t>(internal_.size()), 0, static_cast<int32_t>(leaves_.size()), 0};
        parent.assign(m_nodes, -1);
        depth.assign(m_nodes, -1);
        depth[0] = 0;
        const std::string where = "forest: tree " + std::to_string(t);
        for (int32_t i = 0; i < m_nodes; ++i) {  // children come after parents (Forest checks it)
            if (depth[i] < 0 || N.feature[begin + i] < 0) continue;
            for (int32_t c : {N.left[begin + i], N.left[begin + i] + 1}) {
                if (parent[c] != -1)
                    throw InvalidModel(where + " node " + std::to_string(c) + " has two parents; explanations need trees");
                parent[c] = i;
                depth[c] = depth[i] + 1;
            }
        }
        count.assign(m_nodes, 0.0);
        value.assign(m_nodes, 0.0);
        for (int32_t i = m_nodes - 1; i >= 0; --i) {
            if (depth[i] < 0) continue;
            const int32_t g = begin + i;
            if (N.feature[g] < 0) {
                const int64_t n = recover_count(N.leaf_value[g] - depth[i], N.psi);
                if (n < 0)
                    throw InvalidModel(where + " leaf " + std::to_string(i) + ": its value " +
                                       std::to_string(N.leaf_value[g]) +
                                       " is not its depth plus c(n) for a sample count n <= psi, so the counts "
                                       "TreeSHAP needs cannot be recovered");
                count[i] = static_cast<double>(n);
                value[i] = N.leaf_value[g];
            } else {
                const int32_t l = N.left[g];
                count[i] = count[l] + count[l + 1];
                value[i] = (count[l] * value[l] + count[l + 1] * value[l + 1]) / count[i];
            }
        }
        expected_ += value[0] * inv_t;

        std::vector<int32_t> slot_of_feature;  // reused per path: distinct features, root first
        const int32_t tree_slots = static_cast<int32_t>(slot_feature_.size());
        std::vector<double> shares;  // path attribution, per slot of this tree's leaves
        int32_t width = 0;           // most slots of a leaf of this tree
        for (int32_t i = 0; i < m_nodes; ++i) {
            if (depth[i] < 0) continue;
            const int32_t g = begin + i;
            path.clear();
            for (int32_t a = i; a >= 0; a = parent[a]) path.push_back(a);
            std::reverse(path.begin(), path.end());  // root .. i
            slot_of_feature.clear();
            std::vector<double> z, imbalance;  // per slot: TreeSHAP's z, DIFFI's summed weights
            double imbalance_sum = 0.0;
            for (size_t p = 0; p + 1 < path.size(); ++p) {
                const int32_t f = N.feature[begin + path[p]];
                auto it = std::find(slot_of_feature.begin(), slot_of_feature.end(), f);
                if (it == slot_of_feature.end()) {
                    slot_of_feature.push_back(f);
                    z.push_back(1.0);
                    imbalance.push_back(0.0);
                    it = slot_of_feature.end() - 1;
                }
                const double ratio = count[path[p + 1]] / count[path[p]];
                z[it - slot_of_feature.begin()] *= ratio;
                imbalance[it - slot_of_feature.begin()] += 1.0 - ratio;
                imbalance_sum += 1.0 - ratio;
            }
            if (N.feature[g] >= 0) {
                auto it = std::find(slot_of_feature.begin(), slot_of_feature.end(), N.feature[g]);
                const int slot = static_cast<int>(it - slot_of_feature.begin());  // == size when new
                internal_.push_back({i, N.feature[g], N.threshold[g], N.left[g], uint64_t(1) << slot});
                continue;
            }
            const int m = static_cast<int>(slot_of_feature.size());
            if (m == 0) continue;  // a one-node tree: only the base
            Leaf leaf{i, m, static_cast<int32_t>(slot_feature_.size()), -1, N.leaf_value[g] * inv_t};
            // Every split separates at least one sample (counts are >= 1), so the sum is > 0.
            const double change = (value[i] - value[0]) * inv_t;
            for (int s = 0; s < m; ++s) {
                slot_feature_.push_back(slot_of_feature[s]);
                slot_z_.push_back(z[s]);
                slot_r_.push_back((1.0 - z[s]) / z[s]);
                shares.push_back(imbalance_sum > 0.0 ? change * (imbalance[s] / imbalance_sum) : 0.0);
            }
            width = std::max(width, m);
            const int64_t size = int64_t(1) << std::min(m, 62);
            if (m <= max_table_bits && static_cast<int64_t>(table_.size()) + size <= table_budget) {
                leaf.table = static_cast<int64_t>(table_.size());
                table_.resize(table_.size() + size);
                double* g_of = table_.data() + leaf.table;
                const double* w = wshap_.data() + m * (kMaxSlots + 1);
                for (int64_t S = 0; S < size; ++S) {  // g(S) = w(|S|, m) prod_{U \ S} z
                    double prod = w[__builtin_popcountll(S)];
                    for (int s = 0; s < m; ++s)
                        if (!((S >> s) & 1)) prod *= z[s];
                    g_of[S] = prod;
                }
                for (int s = 0; s < m; ++s)  // sum over subsets: G(A) = sum_{S subset A} g(S)
                    for (int64_t S = 0; S < size; ++S)
                        if ((S >> s) & 1) g_of[S] += g_of[S ^ (int64_t(1) << s)];
                for (int64_t S = 0; S < size; ++S) g_of[S] *= leaf.value;
            } else {
                ++direct_leaves_;
            }
            leaves_.push_back(leaf);
        }
        for (int32_t i = 0; i < m_nodes; ++i) {
            const int32_t g = begin + i;
            PathNode& pn = path_nodes_[g];
            pn.feature = depth[i] < 0 ? -1 : N.feature[g];  // unreachable nodes are never entered
            if (pn.feature < 0) continue;  // a leaf: its shares are set below
            pn.threshold = N.threshold[g];
            pn.left = N.left[g];
        }
        tree.internal_end = static_cast<int32_t>(internal_.size());
        tree.leaf_end = static_cast<int32_t>(leaves_.size());
        for (int32_t li = tree.leaf_off; li < tree.leaf_end; ++li) {
            const Leaf& l = leaves_[li];
            PathNode& pn = path_nodes_[begin + l.node];
            pn.left = static_cast<int32_t>(path_shares_.size());
            pn.n_shares = width;
            for (int s = 0; s < width; ++s)  // padding adds +0.0 to a sum that is never -0.0: no change
                path_shares_.push_back(s < l.m ? PathShare{shares[l.slot_off - tree_slots + s], slot_feature_[l.slot_off + s]}
                                               : PathShare{0.0, slot_feature_[l.slot_off]});
        }
        trees_.push_back(tree);
    }
}

// One leaf's Shapley values from the z's alone, for leaves without a table: the elementary
// symmetric polynomials e_k of the agreeing z's, then for each agreeing feature those without
// it by deconvolution (e'_k = e_k - z_i e'_{k-1}: stable, as 0 < z_i <= 1 shrinks errors).
// O(m + |A|^2) per leaf.
void ForestExplainer::direct_leaf(const Leaf& l, uint64_t agree, double* phi, int64_t stride) const {
    const int m = l.m;
    const int32_t* feat = slot_feature_.data() + l.slot_off;
    const double* z = slot_z_.data() + l.slot_off;
    const double* w = wshap_.data() + m * (kMaxSlots + 1);
    double e[kMaxSlots + 1], ex[kMaxSlots + 1], zout = 1.0;
    int a = 0;
    e[0] = 1.0;
    for (int s = 0; s < m; ++s) {
        if (!((agree >> s) & 1)) {
            zout *= z[s];
            continue;
        }
        e[a + 1] = 0.0;
        for (int k = a + 1; k >= 1; --k) e[k] += z[s] * e[k - 1];
        ++a;
    }
    double g_agree = 0.0;  // G(A) / zout = sum_k w(k, m) e_{a-k}
    for (int k = 0; k <= a; ++k) g_agree += w[k] * e[a - k];
    const double off = -l.value * zout * g_agree;
    for (int s = 0; s < m; ++s) {
        if (!((agree >> s) & 1)) {
            phi[feat[s] * stride] += off;
            continue;
        }
        ex[0] = 1.0;
        for (int k = 1; k < a; ++k) ex[k] = e[k] - z[s] * ex[k - 1];
        double g = 0.0;  // sum_k w(k, m) e'_{a-1-k}
        for (int k = 0; k < a; ++k) g += w[k] * ex[a - 1 - k];
        phi[feat[s] * stride] += l.value * (1.0 - z[s]) * zout * g;
    }
}

namespace {

// One tabled leaf for the rows of a chunk: acc is feature-major (acc[f * R + r]),
// agree[r] the leaf's agreeing slots for row r. Per row and slot: acc -= T[A], then, where the
// slot is in A, acc += T[A without it] * r_s + T[A]. The scalar and AVX-512 versions do exactly
// these operations in this order, so every SIMD target gives the same bits.
inline void table_leaf_scalar(const double* tab, const int32_t* feat, const double* rr, int m,
                              const uint64_t* agree, int64_t n, double* acc, int64_t R) {
    for (int64_t r = 0; r < n; ++r) {
        const uint64_t a = agree[r];
        const double off = tab[a];
        for (int s = 0; s < m; ++s) {
            double& cell = acc[feat[s] * R + r];
            cell -= off;
            if ((a >> s) & 1) cell += tab[a ^ (uint64_t(1) << s)] * rr[s] + off;
        }
    }
}

#ifdef PYNOMALY_EXPLAIN_X86
// Eight rows per vector: one gather of T[A], then per slot a masked gather of T[A without the
// slot]; the per-slot branch of the scalar loop becomes a mask (measured 2.5x over scalar).
__attribute__((target("avx512f,avx512dq"))) void table_leaf_avx512(const double* tab, const int32_t* feat,
                                                                   const double* rr, int m, const uint64_t* agree,
                                                                   int64_t n, double* acc, int64_t R) {
    for (int64_t r = 0; r < n; r += 8) {
        const __m512i a = _mm512_loadu_si512(agree + r);
        const __m512d off = _mm512_i64gather_pd(a, tab, 8);
        for (int s = 0; s < m; ++s) {
            const __m512i bit = _mm512_set1_epi64(int64_t(1) << s);
            const __mmask8 in_a = _mm512_test_epi64_mask(a, bit);
            const __m512d t = _mm512_mask_i64gather_pd(_mm512_setzero_pd(), in_a, _mm512_xor_si512(a, bit), tab, 8);
            const __m512d on = _mm512_add_pd(_mm512_mul_pd(t, _mm512_set1_pd(rr[s])), off);
            double* cell = acc + feat[s] * R + r;
            __m512d cur = _mm512_sub_pd(_mm512_loadu_pd(cell), off);
            cur = _mm512_mask_add_pd(cur, in_a, cur, on);
            _mm512_storeu_pd(cell, cur);
        }
    }
}

// The same in four-row vectors for the avx2 target (the scalar loop's branch per slot
// mispredicts: half the slots of a leaf agree).
__attribute__((target("avx2"))) void table_leaf_avx2(const double* tab, const int32_t* feat, const double* rr, int m,
                                                     const uint64_t* agree, int64_t n, double* acc, int64_t R) {
    for (int64_t r = 0; r < n; r += 4) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(agree + r));
        const __m256d off = _mm256_i64gather_pd(tab, a, 8);
        for (int s = 0; s < m; ++s) {
            const __m256i bit = _mm256_set1_epi64x(int64_t(1) << s);
            const __m256d in_a = _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(a, bit), bit));
            const __m256d t =
                _mm256_mask_i64gather_pd(_mm256_setzero_pd(), tab, _mm256_xor_si256(a, bit), in_a, 8);
            const __m256d on = _mm256_add_pd(_mm256_mul_pd(t, _mm256_set1_pd(rr[s])), off);
            double* cell = acc + feat[s] * R + r;
            const __m256d cur = _mm256_sub_pd(_mm256_loadu_pd(cell), off);
            _mm256_storeu_pd(cell, _mm256_blendv_pd(cur, _mm256_add_pd(cur, on), in_a));
        }
    }
}
#endif

// Every internal node of a tree (parents first), the chunk's rows side by side: the children's
// masks are the node's plus its slot bit on the side the row does not take. xt is the chunk
// feature-major (xt[f * R + r]), so a node reads its feature's values contiguously. The node's
// fields are copied to locals (the uint64 mask stores may alias them) and the side is selected
// without a branch: a data-dependent branch per row and node, reloading the node each time,
// took 40% of TreeSHAP's time (perf). Integer masks: every version gives the same bits.
template <class Node>
void node_masks_scalar(const Node* nodes, int64_t count, const float* xt, int64_t n, int64_t R, uint64_t* mk) {
    for (int64_t i = 0; i < count; ++i) {
        const float thr = nodes[i].threshold;
        const uint64_t bit = nodes[i].bit;
        const float* __restrict x = xt + int64_t(nodes[i].feature) * R;
        const uint64_t* __restrict from = mk + int64_t(nodes[i].node) * R;
        uint64_t* __restrict left = mk + int64_t(nodes[i].left) * R;
        uint64_t* __restrict right = left + R;
        for (int64_t r = 0; r < n; ++r) {
            const uint64_t go_right = bit & (uint64_t(0) - uint64_t(!(x[r] <= thr)));
            left[r] = from[r] | go_right;
            right[r] = from[r] | (bit ^ go_right);
        }
    }
}

#ifdef PYNOMALY_EXPLAIN_X86
// Four rows per step (n rounded up to 4; rows past the chunk's hold zeros and are dropped).
template <class Node>
__attribute__((target("avx2"))) void node_masks_avx2(const Node* nodes, int64_t count, const float* xt, int64_t n,
                                                     int64_t R, uint64_t* mk) {
    for (int64_t i = 0; i < count; ++i) {
        const __m128 thr = _mm_set1_ps(nodes[i].threshold);
        const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(nodes[i].bit));
        const float* x = xt + int64_t(nodes[i].feature) * R;
        const uint64_t* from = mk + int64_t(nodes[i].node) * R;
        uint64_t* left = mk + int64_t(nodes[i].left) * R;
        uint64_t* right = left + R;
        for (int64_t r = 0; r < n; r += 4) {
            const __m128 gt = _mm_cmp_ps(_mm_loadu_ps(x + r), thr, _CMP_NLE_UQ);  // !(x <= thr)
            const __m256i go_right = _mm256_and_si256(_mm256_cvtepi32_epi64(_mm_castps_si128(gt)), bit);
            const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from + r));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(left + r), _mm256_or_si256(f, go_right));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(right + r),
                                _mm256_or_si256(f, _mm256_xor_si256(bit, go_right)));
        }
    }
}

// Eight rows per step (n rounded up to 8), the comparison straight into a lane mask.
template <class Node>
__attribute__((target("avx512f,avx512dq,avx512vl"))) void node_masks_avx512(const Node* nodes, int64_t count,
                                                                          const float* xt, int64_t n, int64_t R,
                                                                          uint64_t* mk) {
    for (int64_t i = 0; i < count; ++i) {
        const __m256 thr = _mm256_set1_ps(nodes[i].threshold);
        const __m512i bit = _mm512_set1_epi64(static_cast<int64_t>(nodes[i].bit));
        const float* x = xt + int64_t(nodes[i].feature) * R;
        const uint64_t* from = mk + int64_t(nodes[i].node) * R;
        uint64_t* left = mk + int64_t(nodes[i].left) * R;
        uint64_t* right = left + R;
        for (int64_t r = 0; r < n; r += 8) {
            const __mmask8 go_right = _mm256_cmp_ps_mask(_mm256_loadu_ps(x + r), thr, _CMP_NLE_UQ);
            const __m512i f = _mm512_loadu_si512(from + r);
            _mm512_storeu_si512(left + r, _mm512_mask_or_epi64(f, go_right, f, bit));
            _mm512_storeu_si512(right + r, _mm512_mask_or_epi64(f, _knot_mask8(go_right), f, bit));
        }
    }
}
#endif

}  // namespace

void ForestExplainer::shap_tree_rows(const Tree& t, const float* xt, int64_t n, int64_t R, double* acc,
                                     std::vector<uint64_t>& mask, bool avx512, bool avx2) const {
    // Rows inner at every step: a node's test and a leaf's metadata are loaded once for the
    // chunk, and the rows' updates are independent. mask[node * R + r]: the path
    // slots whose tests row r fails on the way to node (rows n.. of a short chunk hold stale
    // masks: their results are dropped, and any mask indexes inside a leaf's table).
    uint64_t* mk = mask.data();
    std::fill(mk, mk + R, uint64_t(0));
    const Internal* nodes = internal_.data() + t.internal_off;
    const int64_t count = t.internal_end - t.internal_off;
#ifdef PYNOMALY_EXPLAIN_X86
    if (avx512) node_masks_avx512(nodes, count, xt, (n + 7) / 8 * 8, R, mk);
    else if (avx2) node_masks_avx2(nodes, count, xt, (n + 3) / 4 * 4, R, mk);
    else node_masks_scalar(nodes, count, xt, n, R, mk);
#else
    (void)avx512;
    (void)avx2;
    node_masks_scalar(nodes, count, xt, n, R, mk);
#endif
    uint64_t agree[kShapRowsPerChunk];
    for (int32_t li = t.leaf_off; li < t.leaf_end; ++li) {
        const Leaf& l = leaves_[li];
        const uint64_t full = l.m >= 64 ? ~uint64_t(0) : (uint64_t(1) << l.m) - 1;
        const uint64_t* at = mk + int64_t(l.node) * R;
        for (int64_t r = 0; r < R; ++r) agree[r] = full & ~at[r];
        const int32_t* feat = slot_feature_.data() + l.slot_off;
        if (l.table < 0) {
            for (int64_t r = 0; r < n; ++r) direct_leaf(l, agree[r], acc + r, R);
            continue;
        }
        const double* tab = table_.data() + l.table;
        const double* rr = slot_r_.data() + l.slot_off;
        // Whole groups of eight rows in vectors, the rest one by one (the same bits): a single
        // served row would otherwise pay for eight.
        int64_t wide = 0;
#ifdef PYNOMALY_EXPLAIN_X86
        if (avx512) {
            wide = n - n % 8;
            if (wide > 0) table_leaf_avx512(tab, feat, rr, l.m, agree, wide, acc, R);
        } else if (avx2) {
            wide = n - n % 4;
            if (wide > 0) table_leaf_avx2(tab, feat, rr, l.m, agree, wide, acc, R);
        }
#endif
        if (wide < n) table_leaf_scalar(tab, feat, rr, l.m, agree + wide, n - wide, acc + wide, R);
    }
}

void ForestExplainer::tree_shap(const float* X, int64_t rows, double* phi, int n_threads,
                                const CancelCheck& cancel) const {
    // Rows per chunk: up to 128, as many as give every thread a chunk (a multiple of 8), fewer
    // where the trees are so large that the chunk's path masks (8 bytes per node and row)
    // would pass 8 MiB. Why 128: the forest's tables (3.9 MiB at psi 256) do not stay in L2,
    // so each tree's are fetched again per chunk; 32 -> 128 rows measured 17 -> 15 us/row
    // (256: 18). Chunk boundaries do not change any row's result (rows are independent; vector
    // and scalar leaves agree bit for bit). A call with few rows (a served request) gets a
    // chunk of just those, rounded up to 8: its masks are cleared and its leaves' agreements
    // computed for no stale rows.
    const int64_t threads = std::max(effective_threads(n_threads, (rows + 7) / 8), 1);
    int64_t R = std::clamp<int64_t>(((rows + threads - 1) / threads + 7) / 8 * 8, 8, kShapRowsPerChunk);
    while (R > 8 && std::max<int64_t>(max_nodes_, 1) * R * 8 > (int64_t(8) << 20)) R -= 8;
    const int64_t chunks = (rows + R - 1) / R;
#ifdef PYNOMALY_EXPLAIN_X86
    const bool avx512 = simd_includes(active_simd(), SimdTarget::avx512);
    const bool avx2 = simd_includes(active_simd(), SimdTarget::avx2);
#else
    const bool avx512 = false, avx2 = false;
#endif
    parallel_chunks(chunks, n_threads, cancel, [&](int64_t c) {
        const int64_t r0 = c * R, n = std::min(R, rows - r0);
        std::vector<uint64_t> mask(std::max<int64_t>(max_nodes_, 1) * R);
        std::vector<double> acc(d_ * R, 0.0);  // feature-major: rows side by side
        std::vector<float> xt(d_ * R, 0.0f);   // the chunk's rows feature-major, zeros past n
        for (int64_t r = 0; r < n; ++r)
            for (int64_t f = 0; f < d_; ++f) xt[f * R + r] = X[(r0 + r) * d_ + f];
        // Tree outer: a tree's tables stay in cache across the chunk's rows; each row still
        // sums its trees in tree order, so threads do not change any result.
        for (const Tree& t : trees_) shap_tree_rows(t, xt.data(), n, R, acc.data(), mask, avx512, avx2);
        for (int64_t r = 0; r < n; ++r)
            for (int64_t f = 0; f < d_; ++f) phi[(r0 + r) * d_ + f] = acc[f * R + r];
    });
}

// One row's path attribution (phi zeroed), eight trees walked side by side: eight independent
// chains of node loads where a lone row would have one, which is what a served row's walk waits
// on when the trees are out of cache (measured 110 us for 100 trees). The leaves' shares are
// added in tree order afterwards, then slot order: the additions of the row-lanes walk, in its
// order, so the same bits.
void ForestExplainer::path_one_row(const float* x, double* phi) const {
    constexpr int kTrees = 8;
    const int64_t n_trees = static_cast<int64_t>(trees_.size());
    for (int64_t t0 = 0; t0 < n_trees; t0 += kTrees) {
        const int k = static_cast<int>(std::min<int64_t>(kTrees, n_trees - t0));
        const PathNode* nodes[kTrees];
        int32_t at[kTrees] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int j = 0; j < k; ++j) nodes[j] = path_nodes_.data() + trees_[t0 + j].node_begin;
        for (bool moving = true; moving;) {
            moving = false;
            for (int j = 0; j < k; ++j) {
                const PathNode& nd = nodes[j][at[j]];
                if (nd.feature < 0) continue;
                at[j] = nd.left + (x[nd.feature] <= nd.threshold ? 0 : 1);
                moving = true;
            }
        }
        for (int j = 0; j < k; ++j) {
            const PathNode& leaf = nodes[j][at[j]];
            const PathShare* sh = path_shares_.data() + leaf.left;
            for (int32_t s = 0; s < leaf.n_shares; ++s) phi[sh[s].feature] += sh[s].share;
        }
    }
}

void ForestExplainer::path(const float* X, int64_t rows, double* phi, int n_threads, const CancelCheck& cancel) const {
    const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
    parallel_chunks(chunks, n_threads, cancel, [&](int64_t c) {
        const int64_t r0 = c * kRowsPerChunk, n = std::min(kRowsPerChunk, rows - r0);
        std::fill(phi + r0 * d_, phi + (r0 + n) * d_, 0.0);
        // Eight rows walk each tree together: eight independent chains of node loads instead
        // of one (a walk is a chain of dependent loads; measured 2.5x). Each row adds its
        // leaves' shares in tree order, then slot order: no thread or batch changes a bit.
        constexpr int kLanes = 8;
        for (int64_t g = r0; g < r0 + n; g += kLanes) {
            const int lanes = static_cast<int>(std::min<int64_t>(kLanes, r0 + n - g));
            if (lanes < kLanes) {  // the last few rows (a served request's): trees side by side
                for (int64_t r = g; r < r0 + n; ++r) path_one_row(X + r * d_, phi + r * d_);
                break;
            }
            for (const Tree& t : trees_) {
                const PathNode* nodes = path_nodes_.data() + t.node_begin;
                int32_t at[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (bool moving = true; moving;) {
                    moving = false;
                    for (int k = 0; k < lanes; ++k) {
                        const PathNode& nd = nodes[at[k]];
                        if (nd.feature < 0) continue;
                        const float* x = X + (g + k) * d_;
                        at[k] = nd.left + (x[nd.feature] <= nd.threshold ? 0 : 1);
                        moving = true;
                    }
                }
                for (int k = 0; k < lanes; ++k) {
                    const PathNode& leaf = nodes[at[k]];
                    double* row = phi + (g + k) * d_;
                    const PathShare* sh = path_shares_.data() + leaf.left;
                    for (int32_t s = 0; s < leaf.n_shares; ++s) row[sh[s].feature] += sh[s].share;
                }
            }
        }
    });
}

}  // namespace pynomaly
