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

// Interval i of the erf polynomial covers [0.75 i, 0.75 (i + 1)); u = x - its centre.
alignas(64) constexpr double kErfCenter[8] = {0.375, 1.125, 1.875, 2.625, 3.375, 4.125, 4.875, 5.625};
constexpr double kErfIntervalsPerUnit = 4.0 / 3.0;
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
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) {
            const double d = (x[i + j] - shift) - mean;
            m2[j] += d * d;
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

PYNOMALY_INLINE double unify_one(double s, double mean, double inv) {
    const double x = (s - mean) * inv;
    double xc = x > 0.0 ? x : 0.0;  // also maps NaN to 0, like max_pd(x, 0)
    xc = xc < kErfOne ? xc : kErfOne;
    int i = static_cast<int>(xc * kErfIntervalsPerUnit);
    i = i < 7 ? i : 7;
    const double u = xc - kErfCenter[i];
    double p = kErfCoef[kErfDegree][i];
    for (int k = kErfDegree - 1; k >= 0; --k) p = p * u + kErfCoef[k][i];
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
    // Branch-free upper bound: the loop runs ceil(log2 m) times whatever the value.
    for (int64_t i = 0; i < n; ++i) {
        const double v = x[i];
        const double* base = sorted;
        int64_t len = m;
        while (len > 1) {
            const int64_t half = len / 2;
            base = base[half - 1] <= v ? base + half : base;
            len -= half;
        }
        const int64_t count = (base - sorted) + (base[0] <= v);
        out[i] = v != v ? -1 : count;
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

// ---- AVX2: 4 lanes; a coefficient is picked from 8 intervals by two permutes and a blend ----

// Row[i] for each lane's interval i: `perm` selects within a half (4 doubles), `upper` the half.
PYNOMALY_AVX2_ATTR PYNOMALY_INLINE __m256d pick_avx2(const double* row, __m256i perm, __m256d upper) {
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_castpd_ps(_mm256_load_pd(row)), perm);
    const __m256 b = _mm256_permutevar8x32_ps(_mm256_castpd_ps(_mm256_load_pd(row + 4)), perm);
    return _mm256_blendv_pd(_mm256_castps_pd(a), _mm256_castps_pd(b), upper);
}

PYNOMALY_AVX2_ATTR void unify_avx2(const double* x, int64_t n, double mean, double inv, double* out) {
    const __m256d vmean = _mm256_set1_pd(mean), vinv = _mm256_set1_pd(inv);
    const __m256d zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0), six = _mm256_set1_pd(kErfOne);
    const __m256d per_unit = _mm256_set1_pd(kErfIntervalsPerUnit);
    const __m256i one64 = _mm256_set1_epi64x(1);
    int64_t i = 0;
    for (; i < n; i += 4) {
        const int64_t left = n - i;
        __m256d s;
        if (left >= 4) {
            s = _mm256_loadu_pd(x + i);
        } else {
            alignas(32) double tmp[4] = {0, 0, 0, 0};
            for (int64_t j = 0; j < left; ++j) tmp[j] = x[i + j];
            s = _mm256_load_pd(tmp);
        }
        const __m256d v = _mm256_mul_pd(_mm256_sub_pd(s, vmean), vinv);
        const __m256d xc = _mm256_min_pd(_mm256_max_pd(v, zero), six);
        __m128i idx = _mm256_cvttpd_epi32(_mm256_mul_pd(xc, per_unit));
        idx = _mm_min_epi32(idx, _mm_set1_epi32(7));
        const __m256d upper = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpgt_epi32(idx, _mm_set1_epi32(3))));
        const __m256i e = _mm256_cvtepu32_epi64(_mm_slli_epi32(_mm_and_si128(idx, _mm_set1_epi32(3)), 1));
        const __m256i perm = _mm256_or_si256(e, _mm256_slli_epi64(_mm256_add_epi64(e, one64), 32));
        const __m256d u = _mm256_sub_pd(xc, pick_avx2(kErfCenter, perm, upper));
        __m256d p = pick_avx2(kErfCoef[kErfDegree], perm, upper);
        for (int k = kErfDegree - 1; k >= 0; --k) p = _mm256_add_pd(_mm256_mul_pd(p, u), pick_avx2(kErfCoef[k], perm, upper));
        p = _mm256_max_pd(_mm256_min_pd(p, one), zero);
        __m256d r = _mm256_blendv_pd(p, one, _mm256_cmp_pd(v, six, _CMP_GE_OQ));
        r = _mm256_blendv_pd(r, zero, _mm256_cmp_pd(v, zero, _CMP_LE_OQ));
        r = _mm256_blendv_pd(r, v, _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
        if (left >= 4) {
            _mm256_storeu_pd(out + i, r);
        } else {
            alignas(32) double tmp[4];
            _mm256_store_pd(tmp, r);
            for (int64_t j = 0; j < left; ++j) out[i + j] = tmp[j];
        }
    }
}

PYNOMALY_AVX2_ATTR int64_t bracket_avx2(const double* x, int64_t n, double lo, double hi, double* keep, int64_t* below,
                     int64_t* nan) {
    return bracket_impl(x, n, lo, hi, keep, below, nan);
}

// ---- AVX-512: 8 lanes; one permute picks a coefficient from the 8 intervals -------------------

PYNOMALY_AVX512_ATTR void unify_avx512(const double* x, int64_t n, double mean, double inv, double* out) {
    const __m512d vmean = _mm512_set1_pd(mean), vinv = _mm512_set1_pd(inv);
    const __m512d zero = _mm512_setzero_pd(), one = _mm512_set1_pd(1.0), six = _mm512_set1_pd(kErfOne);
    const __m512d per_unit = _mm512_set1_pd(kErfIntervalsPerUnit);
    const __m512i seven = _mm512_set1_epi64(7);
    __m512d coef[kErfDegree + 1];
    for (int k = 0; k <= kErfDegree; ++k) coef[k] = _mm512_load_pd(kErfCoef[k]);
    const __m512d center = _mm512_load_pd(kErfCenter);
    for (int64_t i = 0; i < n; i += 8) {
        const int64_t left = n - i;
        const __mmask8 m = left >= 8 ? __mmask8(0xFF) : __mmask8((1u << left) - 1);
        const __m512d s = _mm512_maskz_loadu_pd(m, x + i);
        const __m512d v = _mm512_mul_pd(_mm512_sub_pd(s, vmean), vinv);
        const __m512d xc = _mm512_min_pd(_mm512_max_pd(v, zero), six);
        const __m512i idx = _mm512_min_epi64(_mm512_cvttpd_epi64(_mm512_mul_pd(xc, per_unit)), seven);
        const __m512d u = _mm512_sub_pd(xc, _mm512_permutexvar_pd(idx, center));
        __m512d p = _mm512_permutexvar_pd(idx, coef[kErfDegree]);
        for (int k = kErfDegree - 1; k >= 0; --k)
            p = _mm512_add_pd(_mm512_mul_pd(p, u), _mm512_permutexvar_pd(idx, coef[k]));
        p = _mm512_max_pd(_mm512_min_pd(p, one), zero);
        __m512d r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, six, _CMP_GE_OQ), p, one);
        r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, zero, _CMP_LE_OQ), r, zero);
        r = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q), r, v);
        _mm512_mask_storeu_pd(out + i, m, r);
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
