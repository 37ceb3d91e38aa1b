// Score kernels, one set per SIMD target, chosen at run time (see scores_kernels.hpp).
// Plain loops are written once (always-inline functions below) and compiled into each target's
// wrapper, where the compiler vectorises them with that target's instructions; erf (unify) and
// the selection bracket are written with intrinsics because compilers do not vectorise table
// selection or compress-stores. No FMA anywhere: every target rounds the same operations.
#include "scores_kernels.hpp"

#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#endif

#define PYNOMALY_INLINE inline __attribute__((always_inline))

namespace pynomaly {

namespace {

#include "scores_erf_coeffs.inc"

// Interval i of the erf polynomial covers [0.375 i, 0.375 (i + 1)); u = x - its centre.
constexpr int kErfIntervals = 16;
alignas(64) constexpr double kErfCenter[kErfIntervals] = {
    0.1875, 0.5625, 0.9375, 1.3125, 1.6875, 2.0625, 2.4375, 2.8125,
    3.1875, 3.5625, 3.9375, 4.3125, 4.6875, 5.0625, 5.4375, 5.8125};
constexpr double kErfIntervalsPerUnit = 8.0 / 3.0;
constexpr double kErfOne = 6.0;  // erf(x) rounds to 1.0 for x >= 6

// ---- generic (scalar-written) kernels --------------------------------------------------------

PYNOMALY_INLINE void block_stats_impl(const double* x, int64_t n, double shift, BlockStats* out) {
    // Eight interleaved accumulators: the order of additions is fixed, so any vector width
    // computes the same sums.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    double lo[8], hi[8];
    for (int j = 0; j < 8; ++j) lo[j] = hi[j] = x[0];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) {
            const double v = x[i + j];
            acc[j] += v - shift;
            lo[j] = v < lo[j] ? v : lo[j];
            hi[j] = v > hi[j] ? v : hi[j];
        }
    for (int j = 0; i + j < n; ++j) {
        const double v = x[i + j];
        acc[j] += v - shift;
        lo[j] = v < lo[j] ? v : lo[j];
        hi[j] = v > hi[j] ? v : hi[j];
    }
    const double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    const double mean = sum / static_cast<double>(n);
    double m2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    i = 0;
    for (; i + 8 <= n; i += 8) {
        // This pass reads L1; meanwhile ask for the next block (a prefetch past the end of
        // the scores is harmless), so memory keeps streaming instead of idling.
        __builtin_prefetch(x + kMomentBlock + i);
        for (int j = 0; j < 8; ++j) {
            const double d = (x[i + j] - shift) - mean;
            m2[j] += d * d;
        }
    }
    for (int j = 0; i + j < n; ++j) {
        const double d = (x[i + j] - shift) - mean;
        m2[j] += d * d;
    }
    double mn = lo[0], mx = hi[0];
    for (int j = 1; j < 8; ++j) {
        mn = lo[j] < mn ? lo[j] : mn;
        mx = hi[j] > mx ? hi[j] : mx;
    }
    out->sum = sum;
    out->m2 = ((m2[0] + m2[1]) + (m2[2] + m2[3])) + ((m2[4] + m2[5]) + (m2[6] + m2[7]));
    out->min = mn;
    out->max = mx;
}

PYNOMALY_INLINE void minmax_impl(const double* x, int64_t n, double scale, double offset, double* out) {
    for (int64_t i = 0; i < n; ++i) {
        double y = x[i] * scale + offset;
        y = y < 0.0 ? 0.0 : y;  // comparisons are false for NaN: NaN stays NaN, as np.clip
        y = y > 1.0 ? 1.0 : y;
        out[i] = y;
    }
}

PYNOMALY_INLINE void zscore_impl(const double* x, int64_t n, double mean, double scale, double* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) / scale;
}

// erf's degree-12 polynomial on u by Estrin's scheme: its longest chain is 4 multiply-adds
// (Horner's is 12), so more lanes are in flight at once. Every target (doubles, AVX2 and
// AVX-512 vectors) runs this same expression, so the results are the same bits on all of them;
// the error stays below 5e-16 (tests/test_scores.py checks 2e-15 against SciPy).
static_assert(kErfDegree == 12, "erf_poly is written out for degree 12");

template <class V, class Coef>
PYNOMALY_INLINE V erf_poly(V u, const Coef& c) {
    const V u2 = u * u, u4 = u2 * u2, u8 = u4 * u4;
    const V r0 = (c(0) + c(1) * u) + (c(2) + c(3) * u) * u2;
    const V r1 = (c(4) + c(5) * u) + (c(6) + c(7) * u) * u2;
    const V r2 = (c(8) + c(9) * u) + (c(10) + c(11) * u) * u2;
    return (r0 + r1 * u4) + (r2 + c(12) * u4) * u8;
}

PYNOMALY_INLINE double unify_one(double s, double mean, double inv) {
    const double x = (s - mean) * inv;
    double xc = x > 0.0 ? x : 0.0;  // also maps NaN to 0, like max_pd(x, 0)
    xc = xc < kErfOne ? xc : kErfOne;
    int i = static_cast<int>(xc * kErfIntervalsPerUnit);
    i = i < kErfIntervals - 1 ? i : kErfIntervals - 1;
    double p = erf_poly(xc - kErfCenter[i], [i](int k) { return kErfCoef[k][i]; });
    p = p < 1.0 ? p : 1.0;
    p = p > 0.0 ? p : 0.0;
    double r = x >= kErfOne ? 1.0 : p;
    r = x <= 0.0 ? 0.0 : r;
    return x != x ? x : r;
}

PYNOMALY_INLINE void unify_impl(const double* x, int64_t n, double mean, double inv, double* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = unify_one(x[i], mean, inv);
}

PYNOMALY_INLINE int64_t bracket_impl(const double* x, int64_t n, double lo, double hi, double* keep, int64_t* below,
                                     int64_t* nan) {
    int64_t k = 0, b = 0, nn = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double v = x[i];
        keep[k] = v;  // written always, kept only when inside: no branch to mispredict
        k += (v >= lo) & (v <= hi);
        b += v < lo;
        nn += v != v;
    }
    *below += b;
    *nan += nn;
    return k;
}

PYNOMALY_INLINE void ecdf_count_impl(const double* sorted, int64_t m, const double* x, int64_t n, int64_t* out) {
    // Branch-free upper bound. The sequence of halvings depends on m only, so kLanes searches
    // advance in lockstep: their cache misses overlap instead of queueing one after another.
    constexpr int kLanes = 16;
    for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
        const int lanes = static_cast<int>(n - i0 < kLanes ? n - i0 : kLanes);
        int64_t pos[kLanes];
        double v[kLanes];
        for (int j = 0; j < kLanes; ++j) {
            pos[j] = 0;
            v[j] = j < lanes ? x[i0 + j] : 0.0;
        }
        int64_t len = m;
        while (len > 1) {
            const int64_t half = len / 2;
            for (int j = 0; j < kLanes; ++j) pos[j] += sorted[pos[j] + half - 1] <= v[j] ? half : 0;
            len -= half;
        }
        for (int j = 0; j < lanes; ++j) {
            const int64_t count = pos[j] + (sorted[pos[j]] <= v[j]);
            out[i0 + j] = v[j] != v[j] ? -1 : count;
        }
    }
}

#define PYNOMALY_GENERIC_WRAPPERS(suffix, attr)                                                              \
    attr void block_stats_##suffix(const double* x, int64_t n, double shift, BlockStats* out) {                 \
        block_stats_impl(x, n, shift, out);                                                                   \
    } \
    attr void minmax_##suffix(const double* x, int64_t n, double s, double o, double* out) {                  \
        minmax_impl(x, n, s, o, out);                                                                         \
    }                                                                                                         \
    attr void zscore_##suffix(const double* x, int64_t n, double m, double s, double* out) {                  \
        zscore_impl(x, n, m, s, out);                                                                         \
    }                                                                                                         \
    attr void ecdf_count_##suffix(const double* s, int64_t m, const double* x, int64_t n, int64_t* out) {     \
        ecdf_count_impl(s, m, x, n, out);                                                                     \
    }

PYNOMALY_GENERIC_WRAPPERS(baseline, )

void unify_baseline(const double* x, int64_t n, double mean, double inv, double* out) {
    unify_impl(x, n, mean, inv, out);
}
int64_t bracket_baseline(const double* x, int64_t n, double lo, double hi, double* keep, int64_t* below,
                         int64_t* nan) {
    return bracket_impl(x, n, lo, hi, keep, below, nan);
}

#ifdef PYNOMALY_X86

#define PYNOMALY_AVX2_ATTR __attribute__((target("avx2,fma")))
#define PYNOMALY_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

PYNOMALY_GENERIC_WRAPPERS(avx2, PYNOMALY_AVX2_ATTR)
PYNOMALY_GENERIC_WRAPPERS(avx512, PYNOMALY_AVX512_ATTR)

// ---- AVX2: 4 lanes; coefficients come from a table of interval pairs -------------------------
// AVX2 has no permute over 16 doubles (AVX-512's route), its gathers were slow, and
// transposing four lanes' coefficient rows costs 8 shuffles per 4 coefficients, all on one
// port. Instead a table holds, for every pair of intervals (a, b), the pairs (c_k[a], c_k[b]):
// lanes 0-1 and 2-3 each load one 16-byte pair per coefficient, no shuffles. 16 x 16 pairs x
// 14 values x 16 bytes = 56 KiB; clustered scores touch a few of them.

static_assert(kErfDegree + 2 <= 16, "pair layout: coefficients 0..degree, then the centre");

struct ErfPairs {
    alignas(64) double v[kErfIntervals][kErfIntervals][kErfDegree + 2][2];
    constexpr ErfPairs() : v() {
        for (int a = 0; a < kErfIntervals; ++a)
            for (int b = 0; b < kErfIntervals; ++b) {
                for (int k = 0; k <= kErfDegree; ++k) {
                    v[a][b][k][0] = kErfCoef[k][a];
                    v[a][b][k][1] = kErfCoef[k][b];
                }
                v[a][b][kErfDegree + 1][0] = kErfCenter[a];
                v[a][b][kErfDegree + 1][1] = kErfCenter[b];
            }
    }
};
constexpr ErfPairs kErfPairs;

// Four lanes of unify: standardised values, clamped to [0, 6], and their coefficient pairs.
struct ErfLanes {
    __m256d v, xc;
    const double (*lo)[2];  // pairs of lanes 0-1, indexed by coefficient
    const double (*hi)[2];  // pairs of lanes 2-3
};

PYNOMALY_AVX2_ATTR PYNOMALY_INLINE void erf_lanes_avx2(__m256d s, __m256d vmean, __m256d vinv, ErfLanes& l) {
    l.v = _mm256_mul_pd(_mm256_sub_pd(s, vmean), vinv);
    l.xc = _mm256_min_pd(_mm256_max_pd(l.v, _mm256_setzero_pd()), _mm256_set1_pd(kErfOne));
    alignas(16) int idx[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(idx),
                    _mm_min_epi32(_mm256_cvttpd_epi32(_mm256_mul_pd(l.xc, _mm256_set1_pd(kErfIntervalsPerUnit))),
                                  _mm_set1_epi32(kErfIntervals - 1)));
    l.lo = kErfPairs.v[idx[0]][idx[1]];
    l.hi = kErfPairs.v[idx[2]][idx[3]];
}

PYNOMALY_AVX2_ATTR PYNOMALY_INLINE __m256d erf_coef_avx2(const ErfLanes& l, int k) {
    return _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_load_pd(l.lo[k])), _mm_load_pd(l.hi[k]), 1);
}

// erf's polynomial clipped to [0, 1], then the saturated ends and NaN passed through.
PYNOMALY_AVX2_ATTR PYNOMALY_INLINE __m256d erf_finish_avx2(const ErfLanes& l, __m256d p) {
    const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
    p = _mm256_max_pd(_mm256_min_pd(p, one), zero);
    __m256d r = _mm256_blendv_pd(p, one, _mm256_cmp_pd(l.v, _mm256_set1_pd(kErfOne), _CMP_GE_OQ));
    r = _mm256_blendv_pd(r, zero, _mm256_cmp_pd(l.v, zero, _CMP_LE_OQ));
    return _mm256_blendv_pd(r, l.v, _mm256_cmp_pd(l.v, l.v, _CMP_UNORD_Q));
}

PYNOMALY_AVX2_ATTR PYNOMALY_INLINE __m256d erf_poly_avx2(const ErfLanes& l) {
    return erf_poly(_mm256_sub_pd(l.xc, erf_coef_avx2(l, kErfDegree + 1)),
                    [&l](int k) PYNOMALY_AVX2_ATTR { return erf_coef_avx2(l, k); });
}

// Interval indices of four lanes (clamped as erf_lanes_avx2 does).
PYNOMALY_AVX2_ATTR PYNOMALY_INLINE __m128i erf_intervals_avx2(__m256d s, __m256d vmean, __m256d vinv) {
    const __m256d v = _mm256_mul_pd(_mm256_sub_pd(s, vmean), vinv);
    const __m256d xc = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(kErfOne));
    return _mm_min_epi32(_mm256_cvttpd_epi32(_mm256_mul_pd(xc, _mm256_set1_pd(kErfIntervalsPerUnit))),
                         _mm_set1_epi32(kErfIntervals - 1));
}

PYNOMALY_AVX2_ATTR void unify_avx2(const double* x, int64_t n, double mean, double inv, double* out) {
    const __m256d vmean = _mm256_set1_pd(mean), vinv = _mm256_set1_pd(inv);
    int64_t i = 0;
    // Two passes per block: the interval indices first, then the polynomials. In one pass each
    // group of four waited on its own chain (value -> index -> store -> reload -> coefficient
    // loads -> 4 multiply-adds) and the reorder window held too few groups to hide it; with
    // the indices already in L1 the coefficient loads start at once. Same arithmetic, same bits.
    constexpr int64_t kBlock = 512;
    alignas(32) int32_t idx[kBlock];
    for (; i + kBlock <= n; i += kBlock) {
        for (int64_t j = 0; j < kBlock; j += 4)
            _mm_store_si128(reinterpret_cast<__m128i*>(idx + j), erf_intervals_avx2(_mm256_loadu_pd(x + i + j), vmean, vinv));
        for (int64_t j = 0; j < kBlock; j += 4) {
            ErfLanes a;
            a.v = _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i + j), vmean), vinv);
            a.xc = _mm256_min_pd(_mm256_max_pd(a.v, _mm256_setzero_pd()), _mm256_set1_pd(kErfOne));
            a.lo = kErfPairs.v[idx[j]][idx[j + 1]];
            a.hi = kErfPairs.v[idx[j + 2]][idx[j + 3]];
            _mm256_storeu_pd(out + i + j, erf_finish_avx2(a, erf_poly_avx2(a)));
        }
    }
    for (; i + 4 <= n; i += 4) {
        ErfLanes a;
        erf_lanes_avx2(_mm256_loadu_pd(x + i), vmean, vinv, a);
        _mm256_storeu_pd(out + i, erf_finish_avx2(a, erf_poly_avx2(a)));
    }
    for (; i < n; i += 4) {
        const int64_t left = n - i;
        alignas(32) double tmp[4] = {0, 0, 0, 0};
        for (int64_t j = 0; j < left && j < 4; ++j) tmp[j] = x[i + j];
        ErfLanes a;
        erf_lanes_avx2(_mm256_load_pd(tmp), vmean, vinv, a);
        _mm256_store_pd(tmp, erf_finish_avx2(a, erf_poly_avx2(a)));
        for (int64_t j = 0; j < left && j < 4; ++j) out[i + j] = tmp[j];
    }
}

// For each 4-bit mask, the 32-bit lane indices that move the selected doubles to the front.
struct CompressTable {
    alignas(32) int32_t idx[16][8];
    constexpr CompressTable() : idx() {
        for (int m = 0; m < 16; ++m) {
            int k = 0;
            for (int j = 0; j < 4; ++j)
                if (m & (1 << j)) {
                    idx[m][2 * k] = 2 * j;
                    idx[m][2 * k + 1] = 2 * j + 1;
                    ++k;
                }
            for (; k < 4; ++k) idx[m][2 * k] = idx[m][2 * k + 1] = 0;
        }
    }
};
constexpr CompressTable kCompress4;

PYNOMALY_AVX2_ATTR int64_t bracket_avx2(const double* x, int64_t n, double lo, double hi, double* keep,
                                        int64_t* below, int64_t* nan) {
    const __m256d vlo = _mm256_set1_pd(lo), vhi = _mm256_set1_pd(hi);
    int64_t k = 0, b = 0, nn = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m256d v = _mm256_loadu_pd(x + i);
        const int in = _mm256_movemask_pd(
            _mm256_and_pd(_mm256_cmp_pd(v, vlo, _CMP_GE_OQ), _mm256_cmp_pd(v, vhi, _CMP_LE_OQ)));
        b += __builtin_popcount(_mm256_movemask_pd(_mm256_cmp_pd(v, vlo, _CMP_LT_OQ)));
        nn += __builtin_popcount(_mm256_movemask_pd(_mm256_cmp_pd(v, v, _CMP_UNORD_Q)));
        // Move the kept doubles to the front with one permute, store all four (keep has spare
        // slots), advance by how many were kept.
        const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress4.idx[in]));
        _mm256_storeu_pd(keep + k, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), perm)));
        k += __builtin_popcount(in);
    }
    *below += b;
    *nan += nn;
    return k + bracket_impl(x + i, n - i, lo, hi, keep + k, below, nan);
}

// ---- AVX-512: 8 lanes; one two-register permute picks a coefficient from the 16 intervals -----

// G independent vectors per step: even Estrin's scheme is a chain of dependent multiply-adds,
// so interleaving G of them keeps both FP ports busy instead of waiting on one chain.
template <int G>
PYNOMALY_AVX512_ATTR PYNOMALY_INLINE void unify_group_avx512(const double* x, double* out, __mmask8 tail_mask,
                                                             __m512d vmean, __m512d vinv, const __m512d* coef,
                                                             const __m512d* center) {
    const __m512d zero = _mm512_setzero_pd(), one = _mm512_set1_pd(1.0), six = _mm512_set1_pd(kErfOne);
    const __m512d per_unit = _mm512_set1_pd(kErfIntervalsPerUnit);
    const __m512i last = _mm512_set1_epi64(kErfIntervals - 1);
    __m512d v[G], u[G], p[G];
    __m512i idx[G];
    for (int g = 0; g < G; ++g) {
        const __m512d s = G == 1 ? _mm512_maskz_loadu_pd(tail_mask, x) : _mm512_loadu_pd(x + 8 * g);
        v[g] = _mm512_mul_pd(_mm512_sub_pd(s, vmean), vinv);
        const __m512d xc = _mm512_min_pd(_mm512_max_pd(v[g], zero), six);
        idx[g] = _mm512_min_epi64(_mm512_cvttpd_epi64(_mm512_mul_pd(xc, per_unit)), last);
        u[g] = _mm512_sub_pd(xc, _mm512_permutex2var_pd(center[0], idx[g], center[1]));
    }
    for (int g = 0; g < G; ++g) {
        const __m512i ig = idx[g];
        p[g] = erf_poly(u[g], [coef, ig](int k) PYNOMALY_AVX512_ATTR {
            return _mm512_permutex2var_pd(coef[2 * k], ig, coef[2 * k + 1]);
        });
    }
    for (int g = 0; g < G; ++g) {
        const __m512d q = _mm512_max_pd(_mm512_min_pd(p[g], one), zero);
        __m512d r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v[g], six, _CMP_GE_OQ), q, one);
        r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v[g], zero, _CMP_LE_OQ), r, zero);
        r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v[g], v[g], _CMP_UNORD_Q), r, v[g]);
        if (G == 1)
            _mm512_mask_storeu_pd(out, tail_mask, r);
        else
            _mm512_storeu_pd(out + 8 * g, r);
    }
}

PYNOMALY_AVX512_ATTR void unify_avx512(const double* x, int64_t n, double mean, double inv, double* out) {
    const __m512d vmean = _mm512_set1_pd(mean), vinv = _mm512_set1_pd(inv);
    // Coefficient k of intervals 0-7 in coef[2k], of intervals 8-15 in coef[2k + 1].
    __m512d coef[2 * (kErfDegree + 1)];
    for (int k = 0; k <= kErfDegree; ++k) {
        coef[2 * k] = _mm512_load_pd(kErfCoef[k]);
        coef[2 * k + 1] = _mm512_load_pd(kErfCoef[k] + 8);
    }
    const __m512d center[2] = {_mm512_load_pd(kErfCenter), _mm512_load_pd(kErfCenter + 8)};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) unify_group_avx512<4>(x + i, out + i, 0xFF, vmean, vinv, coef, center);
    for (; i < n; i += 8) {
        const int64_t left = n - i;
        const __mmask8 m = left >= 8 ? __mmask8(0xFF) : __mmask8((1u << left) - 1);
        unify_group_avx512<1>(x + i, out + i, m, vmean, vinv, coef, center);
    }
}

PYNOMALY_AVX512_ATTR int64_t bracket_avx512(const double* x, int64_t n, double lo, double hi, double* keep,
                                            int64_t* below, int64_t* nan) {
    const __m512d vlo = _mm512_set1_pd(lo), vhi = _mm512_set1_pd(hi);
    int64_t k = 0, b = 0, nn = 0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d v = _mm512_loadu_pd(x + i);
        const __mmask8 in = _mm512_cmp_pd_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_pd_mask(v, vhi, _CMP_LE_OQ);
        b += __builtin_popcount(_mm512_cmp_pd_mask(v, vlo, _CMP_LT_OQ));
        nn += __builtin_popcount(_mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q));
        // Register compress then a full store (keep has 8 spare slots): much faster than a
        // compress-store to memory on several CPUs.
        _mm512_storeu_pd(keep + k, _mm512_maskz_compress_pd(in, v));
        k += __builtin_popcount(in);
    }
    *below += b;
    *nan += nn;
    return k + bracket_impl(x + i, n - i, lo, hi, keep + k, below, nan);
}

#endif  // PYNOMALY_X86

const ScoreKernels kBaseline{block_stats_baseline, minmax_baseline, zscore_baseline,
                             unify_baseline,       bracket_baseline, ecdf_count_baseline};
#ifdef PYNOMALY_X86
const ScoreKernels kAvx2{block_stats_avx2, minmax_avx2, zscore_avx2, unify_avx2, bracket_avx2, ecdf_count_avx2};
const ScoreKernels kAvx512{block_stats_avx512, minmax_avx512,  zscore_avx512,
                           unify_avx512,       bracket_avx512, ecdf_count_avx512};
#endif

}  // namespace

const ScoreKernels& score_kernels(SimdTarget target) {
#ifdef PYNOMALY_X86
    if (target == SimdTarget::avx512) return kAvx512;
    if (target == SimdTarget::avx2) return kAvx2;
#endif
    (void)target;
    return kBaseline;
}

}  // namespace pynomaly
