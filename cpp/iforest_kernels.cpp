// Isolation-forest traversal kernels and the rule that picks one. Every kernel walks the padded
// complete layout (a 1-based heap per tree, see Forest::Compiled) for exactly `depth` levels:
// slot = 2 * slot + (x > threshold), with no data-dependent branches. Two families:
// - gather kernels (avx2-gather, avx512-gather) advance 8 or 16 rows per tree step as vector
//   lanes, read the top levels from registers by permutes (the heap's level alignment makes
//   the slot number the permute index) and gather below. Fast where gathers are (Intel).
// - scalar-chain kernels (portable, avx2-hybrid, neon-hybrid) walk 8 rows as 8 independent
//   chains of dependent loads on integer keys; the hybrids do the top levels of each 8-row
//   group as one vector with contiguous loads and blends, no gathers. Fast where gathers are
//   slow (AMD Zen 2/3) and the only option without SIMD.
// Which is faster depends on the CPU, not just its ISA, so the choice among those the target
// can run is measured once per process (calibrate()). Every kernel adds the trees' path lengths
// to a row in tree order, in float64, so all kernels give bit-identical sums. x86 kernels are
// compiled with target attributes so the rest of the library stays baseline.
#include "iforest_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define PYNOMALY_NEON 1
#endif

namespace pynomaly {

namespace {

using Compiled = Forest::Compiled;

// Rows walked side by side by the scalar part of every non-gather kernel. A walk is a chain of
// dependent loads (node, then x at the node's feature, ~12 cycles a level), so throughput
// comes from independent chains: 8 rows keep 8 chains in flight in 8 registers, with the
// block, tree and loop pointers that still leaves no spills on x86-64 (12 measured the same,
// 16 spilled and was slower, 4 was 2x slower on Zen 3).
constexpr int kRows = 8;

// slot = 2 * slot + (t < x). GCC writes cmp, setb, movzx and lea for this; cmp + adc is half
// the micro-ops on the critical path of every visit (1.15x on the whole kernel on Zen 3).
inline uint64_t descend(uint64_t slot, uint32_t t, const uint32_t* x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
    asm("cmpl %2, %1\n\tadcq %0, %0" : "+r"(slot) : "r"(t), "m"(*x) : "cc");
    return slot;
#else
    return slot + slot + (t < *x);
#endif
}

// The keys of a block's first n_rows rows (rounded up to 16, the zero padding included), in a
// per-thread buffer laid out like the block.
const uint32_t* block_keys(const Compiled& c, const float* xt, int64_t n_rows) {
    thread_local std::vector<uint32_t> keys;
    const int64_t B = c.block_rows, padded = (n_rows + 15) / 16 * 16;
    keys.resize(static_cast<size_t>(c.n_features * B));
    for (int64_t j = 0; j < c.n_features; ++j)
        for (int64_t i = 0; i < padded; ++i) keys[j * B + i] = order_key(xt[j * B + i]);
    return keys.data();
}

// Levels L..D-1 of kRows rows at block row xr (keys) from slots s, then adds their leaves.
// kn is the tree's key layout: S feature offsets then S threshold keys.
template <int D, int L>
inline void finish_rows(const uint32_t* kn, const double* lv, const uint32_t* xr, uint64_t* s, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
#pragma GCC unroll 16
    for (int l = L; l < D; ++l) {
#pragma GCC unroll 8
        for (int k = 0; k < kRows; ++k) s[k] = descend(s[k], kn[S + s[k]], xr + kn[s[k]] + k);
    }
#pragma GCC unroll 8
    for (int k = 0; k < kRows; ++k) acc[k] += lv[s[k]];
}

// Levels done as vectors by the hybrid kernels (see the AVX2 hybrid below for why 4).
constexpr int kHybridTop = 4;

// The portable kernel (every CPU; the baseline target): tree after tree over the block, kRows
// rows at a time, all levels scalar. The root is the same for every row, so level 0 reads its
// feature and key once per tree.
template <int D>
void portable_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    const uint32_t* xk = block_keys(c, xt, n_rows);
    const int64_t padded = (n_rows + 15) / 16 * 16;
    for (int64_t t = 0; t < c.n_trees; ++t) {
        const uint32_t* kn = c.key_nodes.data() + t * 2 * S;
        const double* lv = c.leaf_value.data() + t * S - S;
        const uint32_t f1 = kn[1], t1 = kn[S + 1];
        for (int64_t i = 0; i < padded; i += kRows) {
            uint64_t s[kRows];
#pragma GCC unroll 8
            for (int k = 0; k < kRows; ++k) s[k] = descend(1, t1, xk + i + f1 + k);
            finish_rows<D, 1>(kn, lv, xk + i, s, acc + i);
        }
    }
}

#ifdef PYNOMALY_NEON

// The NEON hybrid kernel: the AVX2 hybrid's plan with two 4-lane vectors per 8-row group.
// NEON compares unsigned integers, so keys need no sign flip; it has no 8-lane variable permute
// either, so thresholds are picked by the same bit-select trees as the keys. A tree's top 15
// thresholds (broadcast) and column offsets are loaded once per tree, not once per group: with
// them reloaded, the top levels cost as many instructions as scalar ones (qemu count).
// 3 vector levels, not 4: without a permute the 15 thresholds of level 3 need as many
// bit-selects as the keys, and 4 levels executed 5% more instructions than 3 under qemu
// (16% fewer than the portable kernel with 3).
constexpr int kNeonTop = 3;

struct NeonTop {
    uint32x4_t thr[16];
    const uint32_t* col[16];  // the feature column of slot i, at row 0 of the block
};

#define PYNOMALY_NEON_INLINE __attribute__((always_inline)) inline

template <int L>
PYNOMALY_NEON_INLINE uint32x4_t neon_top(const NeonTop& tp, int64_t i) {
    auto col = [&](int slot) { return vld1q_u32(tp.col[slot] + i); };
    auto thr = [&](int slot) { return tp.thr[slot]; };
    auto step = [](uint32x4_t s, uint32x4_t m) { return vsubq_u32(vaddq_u32(s, s), m); };  // true is ~0
    // pick(m, a, b): a where the row went right (m set), b where it went left
    auto pick = [](uint32x4_t m, uint32x4_t a, uint32x4_t b) { return vbslq_u32(m, a, b); };
    const uint32x4_t m0 = vcgtq_u32(col(1), thr(1));
    uint32x4_t s = step(vdupq_n_u32(1), m0);
    uint32x4_t m1 = m0, m2 = m0;
    if constexpr (L > 1) {
        m1 = vcgtq_u32(pick(m0, col(3), col(2)), pick(m0, thr(3), thr(2)));
        s = step(s, m1);
    }
    if constexpr (L > 2) {
        const uint32x4_t x = pick(m0, pick(m1, col(7), col(6)), pick(m1, col(5), col(4)));
        const uint32x4_t t = pick(m0, pick(m1, thr(7), thr(6)), pick(m1, thr(5), thr(4)));
        m2 = vcgtq_u32(x, t);
        s = step(s, m2);
    }
    if constexpr (L > 3) {
        auto level3 = [&](auto get) {
            const uint32x4_t y0 = pick(m2, get(9), get(8)), y1 = pick(m2, get(11), get(10));
            const uint32x4_t y2 = pick(m2, get(13), get(12)), y3 = pick(m2, get(15), get(14));
            return pick(m0, pick(m1, y3, y2), pick(m1, y1, y0));
        };
        s = step(s, vcgtq_u32(level3(col), level3(thr)));
    }
    // GCC 12 sees that the lanes only feed scalar code and rewrites all of the above as scalar
    // operations, lane by lane; an empty asm that takes the vector keeps it a vector.
    __asm__("" : "+w"(s));
    return s;
}

template <int D>
void neon_hybrid_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    constexpr int L = D < kNeonTop ? D : kNeonTop;
    const uint32_t* xk = block_keys(c, xt, n_rows);
    const int64_t padded = (n_rows + 15) / 16 * 16;
    for (int64_t t = 0; t < c.n_trees; ++t) {
        const uint32_t* kn = c.key_nodes.data() + t * 2 * S;
        const double* lv = c.leaf_value.data() + t * S - S;
        NeonTop tp;
        for (int j = 1; j < (1 << L); ++j) {
            tp.thr[j] = vdupq_n_u32(kn[S + j]);
            tp.col[j] = xk + kn[j];
        }
        uint32x4_t next_a = neon_top<L>(tp, 0), next_b = neon_top<L>(tp, 4);
        for (int64_t i = 0; i < padded; i += kRows) {
            const uint32x4_t a = next_a, b = next_b;
            // The next group's top levels before this group's chains, as in the AVX2 hybrid.
            if (i + kRows < padded) {
                next_a = neon_top<L>(tp, i + kRows);
                next_b = neon_top<L>(tp, i + kRows + 4);
            }
            uint64_t s64[kRows] = {vgetq_lane_u32(a, 0), vgetq_lane_u32(a, 1), vgetq_lane_u32(a, 2),
                                   vgetq_lane_u32(a, 3), vgetq_lane_u32(b, 0), vgetq_lane_u32(b, 1),
                                   vgetq_lane_u32(b, 2), vgetq_lane_u32(b, 3)};
            finish_rows<D, L>(kn, lv, xk + i, s64, acc + i);
        }
    }
}

#endif  // PYNOMALY_NEON

#ifdef PYNOMALY_X86

template <int D, int G>
__attribute__((target("avx2,fma"))) inline void avx2_groups(const int32_t* f, const float* th, const double* lv,
                                                            const float* xt, int64_t g0, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Slots 0..7 (levels 0..2) in one register each for thresholds and features.
    const __m256i top_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(S)), iota);
    const __m256 rt = _mm256_maskload_ps(th, top_mask);
    const __m256i rf = _mm256_maskload_epi32(f, top_mask);
    __m256i idx[G];  // gathers use base xt + r per group, so no per-group lane register
#pragma GCC unroll 8
    for (int k = 0; k < G; ++k) {
        const int64_t r = (g0 + k) * 8;
        const __m256 xv = _mm256_loadu_ps(xt + f[1] + r);
        const __m256i right = _mm256_castps_si256(_mm256_cmp_ps(xv, _mm256_set1_ps(th[1]), _CMP_GT_OQ));
        idx[k] = _mm256_sub_epi32(_mm256_set1_epi32(2), right);  // right is -1 where true
    }
#pragma GCC unroll 16
    for (int l = 1; l < D; ++l) {
#pragma GCC unroll 8
        for (int k = 0; k < G; ++k) {
            __m256 tv, xv;
            if (l < 3) {
                tv = _mm256_permutevar8x32_ps(rt, idx[k]);
                const __m256i fv = _mm256_permutevar8x32_epi32(rf, idx[k]);
                xv = _mm256_i32gather_ps(xt + (g0 + k) * 8, _mm256_add_epi32(fv, iota), 4);
            } else {
                tv = _mm256_i32gather_ps(th, idx[k], 4);
                const __m256i fv = _mm256_i32gather_epi32(f, idx[k], 4);
                xv = _mm256_i32gather_ps(xt + (g0 + k) * 8, _mm256_add_epi32(fv, iota), 4);
            }
            const __m256i right = _mm256_castps_si256(_mm256_cmp_ps(xv, tv, _CMP_GT_OQ));
            idx[k] = _mm256_sub_epi32(_mm256_add_epi32(idx[k], idx[k]), right);
        }
    }
#pragma GCC unroll 8
    for (int k = 0; k < G; ++k) {
        const __m256d v0 = _mm256_i32gather_pd(lv, _mm256_castsi256_si128(idx[k]), 8);
        const __m256d v1 = _mm256_i32gather_pd(lv, _mm256_extracti128_si256(idx[k], 1), 8);
        double* a = acc + (g0 + k) * 8;
        _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), v0));
        _mm256_storeu_pd(a + 4, _mm256_add_pd(_mm256_loadu_pd(a + 4), v1));
    }
}

template <int D>
__attribute__((target("avx2,fma"))) void avx2_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    constexpr int G = 8;
    const int64_t groups = (n_rows + 7) / 8;
    for (int64_t t = 0; t < c.n_trees; ++t) {
        const int32_t* f = c.feature_scaled.data() + t * S;
        const float* th = c.threshold.data() + t * S;
        const double* lv = c.leaf_value.data() + t * S - S;  // indexed by the final slot
        int64_t g = 0;
        for (; g + G <= groups; g += G) avx2_groups<D, G>(f, th, lv, xt, g, acc);
        for (; g < groups; ++g) avx2_groups<D, 1>(f, th, lv, xt, g, acc);
    }
}

// The AVX2 hybrid kernel, for CPUs whose gathers are slow (AMD Zen 2/3: vpgatherdd is many
// micro-ops, slower than 8 scalar loads; the gather kernel above ran at half the speed of this
// one on Zen 3). Levels 0-3 of a group of 8 rows are one vector: every row of the group is at
// one of at most 8 nodes of a level, so the keys are read with contiguous loads of those nodes'
// feature columns and each row's own value is picked by blends on the earlier levels' compare
// masks (level l costs 2^l loads and 2^l - 1 blends for 8 rows: fewer micro-ops than 8 scalar
// visits up to level 3, not at level 4); thresholds come from registers by permutes. Levels 4
// and deeper are the scalar chains of finish_rows. The top levels of the next group are
// computed before the chains of this one: they need no general registers, and their loads and
// compares run while the chains wait on memory (1.25x against computing them in turn on Zen 3).
// Keys throughout, not floats for the vector part: one 32 KiB block instead of two (1.1x).

// Forced inlining: GCC kept avx2_top out of line, passing its vectors through memory (1.2x
// slower).
#define PYNOMALY_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

// The 8 rows' keys of the feature tested at `slot` (a lambda would not inherit the target).
PYNOMALY_AVX2_INLINE __m256i avx2_col(const uint32_t* xr, const uint32_t* kn, int slot) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + kn[slot]));
}

PYNOMALY_AVX2_INLINE __m256i avx2_blend(__m256i a, __m256i b, __m256i mask) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _mm256_castsi256_ps(mask)));
}

// x > t for keys x and sign-flipped threshold keys t: AVX2 compares signed integers only, and
// unsigned order is the signed order of key ^ 0x80000000.
PYNOMALY_AVX2_INLINE __m256i avx2_gt(__m256i x, __m256i t_flipped) {
    return _mm256_cmpgt_epi32(_mm256_xor_si256(x, _mm256_set1_epi32(INT32_MIN)), t_flipped);
}

// Levels 0..L-1 of the 8 rows at xr, as their slots at level L. tk_lo and tk_hi hold the
// flipped threshold keys of slots 0-7 and 8-15; a permute reads the low 3 bits of the slot.
template <int L>
PYNOMALY_AVX2_INLINE __m256i avx2_top(const uint32_t* xr, const uint32_t* kn, int64_t S,
                                                           __m256i tk_lo, __m256i tk_hi) {
    const __m256i m0 = avx2_gt(avx2_col(xr, kn, 1), _mm256_set1_epi32(static_cast<int32_t>(kn[S + 1] ^ 0x80000000u)));
    __m256i s = _mm256_sub_epi32(_mm256_set1_epi32(2), m0);  // a true compare is -1
    __m256i m1 = m0, m2 = m0;
    if constexpr (L > 1) {
        const __m256i x = avx2_blend(avx2_col(xr, kn, 2), avx2_col(xr, kn, 3), m0);
        m1 = avx2_gt(x, _mm256_permutevar8x32_epi32(tk_lo, s));
        s = _mm256_sub_epi32(_mm256_add_epi32(s, s), m1);
    }
    if constexpr (L > 2) {
        const __m256i x = avx2_blend(avx2_blend(avx2_col(xr, kn, 4), avx2_col(xr, kn, 5), m1),
                                     avx2_blend(avx2_col(xr, kn, 6), avx2_col(xr, kn, 7), m1), m0);
        m2 = avx2_gt(x, _mm256_permutevar8x32_epi32(tk_lo, s));
        s = _mm256_sub_epi32(_mm256_add_epi32(s, s), m2);
    }
    if constexpr (L > 3) {
        const __m256i y0 = avx2_blend(avx2_col(xr, kn, 8), avx2_col(xr, kn, 9), m2);
        const __m256i y1 = avx2_blend(avx2_col(xr, kn, 10), avx2_col(xr, kn, 11), m2);
        const __m256i y2 = avx2_blend(avx2_col(xr, kn, 12), avx2_col(xr, kn, 13), m2);
        const __m256i y3 = avx2_blend(avx2_col(xr, kn, 14), avx2_col(xr, kn, 15), m2);
        const __m256i x = avx2_blend(avx2_blend(y0, y1, m1), avx2_blend(y2, y3, m1), m0);
        const __m256i m3 = avx2_gt(x, _mm256_permutevar8x32_epi32(tk_hi, s));
        s = _mm256_sub_epi32(_mm256_add_epi32(s, s), m3);
    }
    return s;
}

template <int D>
__attribute__((target("avx2,fma"))) void avx2_hybrid_kernel(const Compiled& c, const float* xt, int64_t n_rows,
                                                            double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    constexpr int L = D < kHybridTop ? D : kHybridTop;
    const uint32_t* xk = block_keys(c, xt, n_rows);
    const int64_t padded = (n_rows + 15) / 16 * 16;
    const __m256i sign = _mm256_set1_epi32(INT32_MIN);
    for (int64_t t = 0; t < c.n_trees; ++t) {
        const uint32_t* kn = c.key_nodes.data() + t * 2 * S;
        const double* lv = c.leaf_value.data() + t * S - S;
        // Flipped threshold keys of slots 0-7 and 8-15 (a shallow tree has fewer slots).
        const __m256i* tk = reinterpret_cast<const __m256i*>(kn + S);
        __m256i tk_lo = sign, tk_hi = sign;
        if constexpr (S == 4) tk_lo = _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tk)));
        if constexpr (S >= 8) tk_lo = _mm256_loadu_si256(tk);
        if constexpr (S >= 16) tk_hi = _mm256_loadu_si256(tk + 1);
        tk_lo = _mm256_xor_si256(tk_lo, sign);
        tk_hi = _mm256_xor_si256(tk_hi, sign);
        __m256i next = avx2_top<L>(xk, kn, S, tk_lo, tk_hi);
        for (int64_t i = 0; i < padded; i += kRows) {
            const __m256i s = next;
            // The next group's top levels first: their loads and compares run while the scalar
            // chains below wait on memory (1.25x on Zen 3 against computing them in turn).
            if (i + kRows < padded) next = avx2_top<L>(xk + i + kRows, kn, S, tk_lo, tk_hi);
            // Slots to general registers as 64-bit halves: a vector store and 8 reloads would
            // wait on store-to-load forwarding.
            const __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
            const uint64_t q0 = _mm_cvtsi128_si64(lo), q1 = _mm_extract_epi64(lo, 1);
            const uint64_t q2 = _mm_cvtsi128_si64(hi), q3 = _mm_extract_epi64(hi, 1);
            uint64_t s64[kRows] = {q0 & 0xFFFFFFFFu, q0 >> 32, q1 & 0xFFFFFFFFu, q1 >> 32,
                                   q2 & 0xFFFFFFFFu, q2 >> 32, q3 & 0xFFFFFFFFu, q3 >> 32};
            finish_rows<D, L>(kn, lv, xk + i, s64, acc + i);
        }
    }
}

#define PYNOMALY_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

struct Avx512Tree {
    const int32_t* f;
    const float* th;
    const double* lv;  // indexed by the final slot
    __m512 t0, t1, t2, t3;     // thresholds of slots 0-15 | 16-31 | 32-47, 48-63
    __m512i f0, f1, f2, f3;    // features of the same slots
};

template <int D, int G>
PYNOMALY_AVX512 inline void avx512_groups(const Avx512Tree& tr, const float* xt, int64_t g0, double* acc) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i one = _mm512_set1_epi32(1);
    const float* x1 = xt + tr.f[1];
    // Each group gathers relative to its own rows (base pointer xt + r), so one shared index
    // offset (iota) replaces a per-group lane register: more groups fit in registers.
    __m512i idx[G];
    __mmask16 right[G];
#pragma GCC unroll 16
    for (int k = 0; k < G; ++k) {
        const int64_t r = (g0 + k) * 16;
        // Level 0: every row is at the root, so x is one contiguous load.
        right[k] = _mm512_cmp_ps_mask(_mm512_loadu_ps(x1 + r), _mm512_set1_ps(tr.th[1]), _CMP_GT_OQ);
        idx[k] = _mm512_mask_add_epi32(_mm512_set1_epi32(2), right[k], _mm512_set1_epi32(2), one);
    }
    if constexpr (D > 1) {
        // Level 1: each row is at slot 2 or 3: two contiguous loads and a blend.
        const float* x2 = xt + tr.f[2];
        const float* x3 = xt + tr.f[3];
        const __m512 th2 = _mm512_set1_ps(tr.th[2]), th3 = _mm512_set1_ps(tr.th[3]);
#pragma GCC unroll 16
        for (int k = 0; k < G; ++k) {
            const int64_t r = (g0 + k) * 16;
            const __m512 xv = _mm512_mask_blend_ps(right[k], _mm512_loadu_ps(x2 + r), _mm512_loadu_ps(x3 + r));
            const __mmask16 rr = _mm512_cmp_ps_mask(xv, _mm512_mask_blend_ps(right[k], th2, th3), _CMP_GT_OQ);
            idx[k] = _mm512_add_epi32(idx[k], idx[k]);
            idx[k] = _mm512_mask_add_epi32(idx[k], rr, idx[k], one);
        }
    }
#pragma GCC unroll 16
    for (int l = 2; l < D; ++l) {
#pragma GCC unroll 16
        for (int k = 0; k < G; ++k) {
            __m512 tv;
            __m512i fv;
            if (l < 4) {  // slots 4..15: permute index is the slot itself
                tv = _mm512_permutexvar_ps(idx[k], tr.t0);
                fv = _mm512_permutexvar_epi32(idx[k], tr.f0);
            } else if (l == 4) {  // slots 16..31: the permute reads the low 4 bits
                tv = _mm512_permutexvar_ps(idx[k], tr.t1);
                fv = _mm512_permutexvar_epi32(idx[k], tr.f1);
            } else if (l == 5) {  // slots 32..63: two-table permute reads the low 5 bits
                tv = _mm512_permutex2var_ps(tr.t2, idx[k], tr.t3);
                fv = _mm512_permutex2var_epi32(tr.f2, idx[k], tr.f3);
            } else {
                tv = _mm512_i32gather_ps(idx[k], tr.th, 4);
                fv = _mm512_i32gather_epi32(idx[k], tr.f, 4);
            }
            const __m512 xv = _mm512_i32gather_ps(_mm512_add_epi32(fv, iota), xt + (g0 + k) * 16, 4);
            const __mmask16 rr = _mm512_cmp_ps_mask(xv, tv, _CMP_GT_OQ);
            idx[k] = _mm512_add_epi32(idx[k], idx[k]);
            idx[k] = _mm512_mask_add_epi32(idx[k], rr, idx[k], one);
        }
    }
#pragma GCC unroll 16
    for (int k = 0; k < G; ++k) {
        const __m512d v0 = _mm512_i32gather_pd(_mm512_castsi512_si256(idx[k]), tr.lv, 8);
        const __m512d v1 = _mm512_i32gather_pd(_mm512_extracti32x8_epi32(idx[k], 1), tr.lv, 8);
        double* a = acc + (g0 + k) * 16;
        _mm512_storeu_pd(a, _mm512_add_pd(_mm512_loadu_pd(a), v0));
        _mm512_storeu_pd(a + 8, _mm512_add_pd(_mm512_loadu_pd(a + 8), v1));
    }
}

template <int D>
PYNOMALY_AVX512 void avx512_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    constexpr int G = 8;
    const int64_t groups = (n_rows + 15) / 16;
    // Masked loads: a shallow tree has fewer than 64 slots.
    auto mask_from = [](int64_t first) -> __mmask16 {
        const int64_t n = S - first;
        return n <= 0 ? 0 : (n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1));
    };
    for (int64_t t = 0; t < c.n_trees; ++t) {
        Avx512Tree tr;
        tr.f = c.feature_scaled.data() + t * S;
        tr.th = c.threshold.data() + t * S;
        tr.lv = c.leaf_value.data() + t * S - S;
        tr.t0 = _mm512_maskz_loadu_ps(mask_from(0), tr.th);
        tr.t1 = _mm512_maskz_loadu_ps(mask_from(16), tr.th + 16);
        tr.t2 = _mm512_maskz_loadu_ps(mask_from(32), tr.th + 32);
        tr.t3 = _mm512_maskz_loadu_ps(mask_from(48), tr.th + 48);
        tr.f0 = _mm512_maskz_loadu_epi32(mask_from(0), tr.f);
        tr.f1 = _mm512_maskz_loadu_epi32(mask_from(16), tr.f + 16);
        tr.f2 = _mm512_maskz_loadu_epi32(mask_from(32), tr.f + 32);
        tr.f3 = _mm512_maskz_loadu_epi32(mask_from(48), tr.f + 48);
        int64_t g = 0;
        for (; g + G <= groups; g += G) avx512_groups<D, G>(tr, xt, g, acc);
        for (; g < groups; ++g) avx512_groups<D, 1>(tr, xt, g, acc);
    }
}

#endif  // PYNOMALY_X86

#define PYNOMALY_DEPTH_TABLE(kernel)                                                                 \
    {nullptr,       kernel<1>,  kernel<2>,  kernel<3>, kernel<4>,  kernel<5>, kernel<6>,              \
     kernel<7>,     kernel<8>,  kernel<9>,  kernel<10>, kernel<11>, kernel<12>}

static_assert(Forest::kMaxCompleteDepth == 12, "depth tables cover depths 1..12");

const BlockKernel kPortable[] = PYNOMALY_DEPTH_TABLE(portable_kernel);
void portable_entry(const Compiled& c, const float* xt, int64_t n, double* acc) { kPortable[c.depth](c, xt, n, acc); }

#ifdef PYNOMALY_NEON
const BlockKernel kNeonHybrid[] = PYNOMALY_DEPTH_TABLE(neon_hybrid_kernel);
void neon_hybrid_entry(const Compiled& c, const float* xt, int64_t n, double* acc) {
    kNeonHybrid[c.depth](c, xt, n, acc);
}
#endif

#ifdef PYNOMALY_X86
const BlockKernel kAvx2[] = PYNOMALY_DEPTH_TABLE(avx2_kernel);
const BlockKernel kAvx512[] = PYNOMALY_DEPTH_TABLE(avx512_kernel);
const BlockKernel kAvx2Hybrid[] = PYNOMALY_DEPTH_TABLE(avx2_hybrid_kernel);
void avx2_hybrid_entry(const Compiled& c, const float* xt, int64_t n, double* acc) {
    kAvx2Hybrid[c.depth](c, xt, n, acc);
}
void avx2_entry(const Compiled& c, const float* xt, int64_t n, double* acc) { kAvx2[c.depth](c, xt, n, acc); }
void avx512_entry(const Compiled& c, const float* xt, int64_t n, double* acc) { kAvx512[c.depth](c, xt, n, acc); }
#endif

// A handful of rows (a single-row call): lanes would be mostly empty, so walk the trees of one
// row eight at a time instead; the eight chains of dependent loads overlap in the core (four
// left it waiting on load latency: 1.5x slower). Sums in tree order.
template <int D>
void few_rows_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    const Compiled::Test* N = c.tests.data();
    const double* LV = c.leaf_value.data() - S;
    const int64_t T = c.n_trees;
    for (int64_t i = 0; i < n_rows; ++i) {
        const float* x = xt + i;
        double sum = 0.0;
        int64_t t = 0;
        // Each group's leaves are added one tree at a time, in tree order, onto the running
        // sum: the same additions in the same order as every other kernel.
        for (; t + 8 <= T; t += 8) {
            uint32_t node[8];
            for (int g = 0; g < 8; ++g) node[g] = 1;
#pragma GCC unroll 16
            for (int l = 0; l < D; ++l) {
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) {
                    const Compiled::Test n = N[(t + g) * S + node[g]];
                    node[g] = 2 * node[g] + (x[n.feature_scaled] > n.threshold);
                }
            }
            for (int g = 0; g < 8; ++g) sum += LV[(t + g) * S + node[g]];
        }
        for (; t < T; ++t) {
            const int64_t o = t * S;
            uint32_t a = 1;
            for (int l = 0; l < D; ++l) a = 2 * a + (x[N[o + a].feature_scaled] > N[o + a].threshold);
            sum += LV[o + a];
        }
        acc[i] += sum;
    }
}

const BlockKernel kFewRowsTable[] = PYNOMALY_DEPTH_TABLE(few_rows_kernel);

}  // namespace

namespace {

struct KernelEntry {
    const char* name;
    BlockKernel fn;
    SimdTarget needs;
};

// Every block kernel of this build. Order matters only for ties in calibration (first wins).
const KernelEntry kKernels[] = {
#ifdef PYNOMALY_X86
    {"avx512-gather", avx512_entry, SimdTarget::avx512},
    {"avx2-gather", avx2_entry, SimdTarget::avx2},
    {"avx2-hybrid", avx2_hybrid_entry, SimdTarget::avx2},
#endif
#ifdef PYNOMALY_NEON
    {"neon-hybrid", neon_hybrid_entry, SimdTarget::neon},
#endif
    {"portable", portable_entry, SimdTarget::baseline},
};
constexpr int kNumKernels = sizeof(kKernels) / sizeof(kKernels[0]);
constexpr int kAuto = -1, kReference = -2, kFewRowsOnly = -3;
std::atomic<int> g_forced{kAuto};

// A small synthetic forest and block for calibration: 8 complete trees of depth 8 (psi = 256,
// the default) over 16 features, one block of random rows. Big enough that each timing is tens
// of microseconds and touches the caches the way real blocks do; small enough that the whole
// calibration is about a millisecond.
struct CalibrationCase {
    Forest forest;
    std::vector<float> xt;
    static ForestNodes nodes() {
        ForestNodes n;
        n.n_features = 16;
        n.psi = 256;
        uint64_t s = 0x9E3779B97F4A7C15ULL;
        auto next = [&s] { s = s * 6364136223846793005ULL + 1442695040888963407ULL; return s >> 33; };
        const int inner = 255;  // levels 0..7, BFS order: children of i are 2i + 1 and 2i + 2
        n.tree_offset.push_back(0);
        for (int t = 0; t < 8; ++t) {
            for (int i = 0; i < 2 * inner + 1; ++i) {
                const bool leaf = i >= inner;
                n.feature.push_back(leaf ? -1 : static_cast<int32_t>(next() % 16));
                n.threshold.push_back(leaf ? 0.0f : static_cast<float>(next() % 2000) / 1000.0f - 1.0f);
                n.left.push_back(leaf ? 0 : 2 * i + 1);
                n.leaf_value.push_back(leaf ? 8.0 + static_cast<double>(next() % 7) : 0.0);
            }
            n.tree_offset.push_back(static_cast<int32_t>(n.feature.size()));
        }
        return n;
    }
    CalibrationCase() : forest(nodes()) {
        const auto& c = forest.compiled();
        xt.resize(static_cast<size_t>(c.n_features * c.block_rows));
        uint64_t s = 12345;
        for (float& v : xt) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            v = static_cast<float>((s >> 33) % 3000) / 1000.0f - 1.5f;
        }
    }
};

IforestKernelChoice calibrate(SimdTarget t) {
    IforestKernelChoice out;
    std::vector<int> cand;
    for (int k = 0; k < kNumKernels; ++k)
        if (simd_includes(t, kKernels[k].needs)) cand.push_back(k);
    const std::string isa = std::string(simd_name(t)) + " ISA: ";
    if (cand.size() == 1) {
        out.kernel = kKernels[cand[0]].fn;
        out.name = kKernels[cand[0]].name;
        out.reason = isa + out.name + " iforest kernel, the only one for this target";
        return out;
    }
    // Measured, not looked up by CPU: gathers are fast on Intel since Skylake and slow on AMD
    // Zen 2/3 (the same ISA, 2-3x apart), and a vendor/family table would be wrong for the next
    // CPU and for hypervisors that mask the family. Interleaved rounds, minimum per kernel: a
    // noisy neighbour or an interrupt slows one round, not the minimum.
    const auto start = std::chrono::steady_clock::now();
    const CalibrationCase cal;
    const auto& c = cal.forest.compiled();
    std::vector<double> acc(static_cast<size_t>(c.block_rows));
    std::vector<double> best(cand.size(), 1e30);
    for (int round = 0; round < 7; ++round)
        for (size_t j = 0; j < cand.size(); ++j) {
            std::fill(acc.begin(), acc.end(), 0.0);
            const auto t0 = std::chrono::steady_clock::now();
            kKernels[cand[j]].fn(c, cal.xt.data(), c.block_rows, acc.data());
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            best[j] = std::min(best[j], dt);
        }
    size_t win = 0;
    for (size_t j = 1; j < cand.size(); ++j)
        if (best[j] < best[win]) win = j;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    out.kernel = kKernels[cand[win]].fn;
    out.name = kKernels[cand[win]].name;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.2f ms", ms);
    out.reason = isa + out.name + " iforest kernel chosen by calibration (" + buf + "; time relative to it:";
    for (size_t j = 0; j < cand.size(); ++j) {
        std::snprintf(buf, sizeof buf, " %s %.2f%s", kKernels[cand[j]].name, best[j] / best[win],
                      j + 1 < cand.size() ? "," : ")");
        out.reason += buf;
    }
    out.calibration_ms = ms;
    return out;
}

}  // namespace

const IforestKernelChoice& iforest_kernel_choice(SimdTarget t) {
    static std::once_flag once[kSimdTargets];
    static IforestKernelChoice choice[kSimdTargets];
    const int i = static_cast<int>(t);
    std::call_once(once[i], [&] { choice[i] = calibrate(t); });
    return choice[i];
}

std::vector<std::string> iforest_kernel_names(SimdTarget t) {
    std::vector<std::string> names;
    for (const KernelEntry& k : kKernels)
        if (simd_includes(t, k.needs)) names.push_back(k.name);
    names.push_back("few-rows");
    names.push_back("reference");
    return names;
}

void force_iforest_kernel(const std::string& name) {
    if (name.empty() || name == "auto") return g_forced.store(kAuto);
    if (name == "reference") return g_forced.store(kReference);
    if (name == "few-rows") return g_forced.store(kFewRowsOnly);
    for (int k = 0; k < kNumKernels; ++k)
        if (name == kKernels[k].name) {
            if (!simd_includes(active_simd(), kKernels[k].needs))
                throw InvalidInput("iforest kernel '" + name + "' needs SIMD target '" +
                                   simd_name(kKernels[k].needs) + "', active is '" + simd_name(active_simd()) + "'");
            return g_forced.store(k);
        }
    std::string known;
    for (const std::string& n : iforest_kernel_names(active_simd())) known += (known.empty() ? "" : ", ") + n;
    throw InvalidInput("unknown iforest kernel '" + name + "'; this target runs: auto, " + known);
}

std::string forced_iforest_kernel() {
    const int f = g_forced.load();
    if (f == kAuto) return "";
    if (f == kReference) return "reference";
    if (f == kFewRowsOnly) return "few-rows";
    return kKernels[f].name;
}

IforestDispatch iforest_dispatch(SimdTarget t) {
    IforestDispatch d;
    const int f = g_forced.load();
    if (f == kAuto) {
        d.block = iforest_kernel_choice(t).kernel;
    } else if (f == kReference) {
        d.reference = true;
    } else if (f == kFewRowsOnly) {
        d.block = few_rows_kernel;
        d.few_rows_min = INT64_MAX;
    } else {
        // A forced kernel runs every call, however few its rows, so tests can reach its edge cases;
        // forcing a kernel and then lowering the target below it falls back to the automatic choice.
        if (simd_includes(t, kKernels[f].needs)) {
            d.block = kKernels[f].fn;
            d.few_rows_min = 0;
        } else {
            d.block = iforest_kernel_choice(t).kernel;
        }
    }
    return d;
}

void few_rows_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    kFewRowsTable[c.depth](c, xt, n_rows, acc);
}

void sparse_block_kernel(const ForestNodes& nodes, int64_t block_rows, const float* xt, int64_t n_rows,
                         double* acc) {
    for (int t = 0; t < nodes.n_trees(); ++t) {
        const int32_t base = nodes.tree_offset[t];
        const int32_t* feature = nodes.feature.data() + base;
        const float* threshold = nodes.threshold.data() + base;
        const int32_t* left = nodes.left.data() + base;
        const double* leaf = nodes.leaf_value.data() + base;
        for (int64_t i = 0; i < n_rows; ++i) {
            int32_t node = 0;
            while (feature[node] >= 0)
                node = left[node] + (xt[feature[node] * block_rows + i] > threshold[node]);
            acc[i] += leaf[node];
        }
    }
}

}  // namespace pynomaly
