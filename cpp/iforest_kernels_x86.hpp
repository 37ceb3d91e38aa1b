// The x86 block kernels of the isolation forest: AVX2 and AVX-512 gather kernels and the AVX2
// hybrid (iforest_kernels.cpp says how each family walks the trees and how one is chosen),
// compiled with target attributes so the rest of the library stays baseline. Private to
// iforest_kernels.cpp (iforest_kernels_chains.hpp says why it is a header).
#pragma once

#include "iforest_kernels_chains.hpp"

#ifdef PYNOMALY_X86

namespace pynomaly {
namespace {

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

}  // namespace
}  // namespace pynomaly

#endif  // PYNOMALY_X86
