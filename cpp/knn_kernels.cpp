// Float32 screening kernels for the exact kNN search: a register-blocked tile of kRows queries x
// kPanel data rows, accumulated over all features, then compared against per-query thresholds so
// that only candidates (rare after the first few panels) leave the kernel. x86 kernels carry
// target attributes so the rest of the library stays baseline; the caller picks one at run time.
// Results may differ between targets only within the rounding the caller's error bound covers:
// every candidate is verified exactly in float64 afterwards.
#include "knn_kernels.hpp"

#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#endif

namespace pynomaly {

namespace {

template <ScreenKind K>
bool scalar_screen(const float* xq, int64_t d, const float* panel, const float* off, float alpha, const float* thr,
                   uint32_t* masks, float* s_out) {
    bool any = false;
    for (int r = 0; r < kRows; ++r) {
        float acc[kPanel] = {};
        const float* x = xq + r * d;
        for (int64_t j = 0; j < d; ++j) {
            const float xv = x[j];
            const float* p = panel + j * kPanel;
            for (int l = 0; l < kPanel; ++l) {
                if constexpr (K == ScreenKind::dot)
                    acc[l] += xv * p[l];
                else
                    acc[l] += std::fabs(xv - p[l]);
            }
        }
        uint32_t m = 0;
        for (int l = 0; l < kPanel; ++l) {
            const float s = alpha * acc[l] + off[l];
            s_out[r * kPanel + l] = s;
            m |= uint32_t(s <= thr[r]) << l;
        }
        masks[r] = m;
        any |= m != 0;
    }
    return any;
}

#ifdef PYNOMALY_X86

// Four query rows x 16 data rows (two ymm) per pass; four passes cover the 8 x 32 tile. Eight
// accumulators keep both FMA ports busy without spilling the 16 ymm registers.
template <ScreenKind K>
__attribute__((target("avx2,fma"))) bool avx2_screen(const float* xq, int64_t d, const float* panel, const float* off,
                                                     float alpha, const float* thr, uint32_t* masks, float* s_out) {
    const __m256 va = _mm256_set1_ps(alpha);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int r = 0; r < kRows; ++r) masks[r] = 0;
    bool any = false;
    for (int rh = 0; rh < kRows; rh += 4) {
        for (int lh = 0; lh < kPanel; lh += 16) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
                   a31 = a00;
            const float* x0 = xq + rh * d;
            const float* x1 = x0 + d;
            const float* x2 = x1 + d;
            const float* x3 = x2 + d;
            for (int64_t j = 0; j < d; ++j) {
                const __m256 p0 = _mm256_loadu_ps(panel + j * kPanel + lh);
                const __m256 p1 = _mm256_loadu_ps(panel + j * kPanel + lh + 8);
                const __m256 b0 = _mm256_broadcast_ss(x0 + j), b1 = _mm256_broadcast_ss(x1 + j);
                const __m256 b2 = _mm256_broadcast_ss(x2 + j), b3 = _mm256_broadcast_ss(x3 + j);
                if constexpr (K == ScreenKind::dot) {
                    a00 = _mm256_fmadd_ps(b0, p0, a00), a01 = _mm256_fmadd_ps(b0, p1, a01);
                    a10 = _mm256_fmadd_ps(b1, p0, a10), a11 = _mm256_fmadd_ps(b1, p1, a11);
                    a20 = _mm256_fmadd_ps(b2, p0, a20), a21 = _mm256_fmadd_ps(b2, p1, a21);
                    a30 = _mm256_fmadd_ps(b3, p0, a30), a31 = _mm256_fmadd_ps(b3, p1, a31);
                } else {
#define PYNOMALY_L1(a, b, p) a = _mm256_add_ps(a, _mm256_andnot_ps(sign, _mm256_sub_ps(b, p)))
                    PYNOMALY_L1(a00, b0, p0), PYNOMALY_L1(a01, b0, p1);
                    PYNOMALY_L1(a10, b1, p0), PYNOMALY_L1(a11, b1, p1);
                    PYNOMALY_L1(a20, b2, p0), PYNOMALY_L1(a21, b2, p1);
                    PYNOMALY_L1(a30, b3, p0), PYNOMALY_L1(a31, b3, p1);
#undef PYNOMALY_L1
                }
            }
            const __m256 o0 = _mm256_loadu_ps(off + lh), o1 = _mm256_loadu_ps(off + lh + 8);
            const __m256 accs[8] = {a00, a01, a10, a11, a20, a21, a30, a31};
            for (int q = 0; q < 4; ++q) {
                const __m256 t = _mm256_set1_ps(thr[rh + q]);
                const __m256 s0 = _mm256_fmadd_ps(va, accs[2 * q], o0);
                const __m256 s1 = _mm256_fmadd_ps(va, accs[2 * q + 1], o1);
                _mm256_storeu_ps(s_out + (rh + q) * kPanel + lh, s0);
                _mm256_storeu_ps(s_out + (rh + q) * kPanel + lh + 8, s1);
                const uint32_t m0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s0, t, _CMP_LE_OQ)));
                const uint32_t m1 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(s1, t, _CMP_LE_OQ)));
                const uint32_t m = (m0 | (m1 << 8)) << lh;
                masks[rh + q] |= m;
                any |= m != 0;
            }
        }
    }
    return any;
}

#define PYNOMALY_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

// All 8 query rows x 32 data rows (two zmm) at once: 16 accumulators, each panel load feeding
// eight FMAs and each broadcast two.
template <ScreenKind K>
PYNOMALY_AVX512 bool avx512_screen(const float* xq, int64_t d, const float* panel, const float* off, float alpha,
                                   const float* thr, uint32_t* masks, float* s_out) {
    __m512 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
        const __m512 p0 = _mm512_loadu_ps(panel + j * kPanel);
        const __m512 p1 = _mm512_loadu_ps(panel + j * kPanel + 16);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
            const __m512 b = _mm512_set1_ps(xq[r * d + j]);
            if constexpr (K == ScreenKind::dot) {
                acc[r][0] = _mm512_fmadd_ps(b, p0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(b, p1, acc[r][1]);
            } else {
                acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_abs_ps(_mm512_sub_ps(b, p0)));
                acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_abs_ps(_mm512_sub_ps(b, p1)));
            }
        }
    }
    const __m512 va = _mm512_set1_ps(alpha);
    const __m512 o0 = _mm512_loadu_ps(off), o1 = _mm512_loadu_ps(off + 16);
    uint32_t any = 0;
    for (int r = 0; r < kRows; ++r) {
        const __m512 t = _mm512_set1_ps(thr[r]);
        acc[r][0] = _mm512_fmadd_ps(va, acc[r][0], o0);
        acc[r][1] = _mm512_fmadd_ps(va, acc[r][1], o1);
        const uint32_t m0 = _mm512_cmp_ps_mask(acc[r][0], t, _CMP_LE_OQ);
        const uint32_t m1 = _mm512_cmp_ps_mask(acc[r][1], t, _CMP_LE_OQ);
        masks[r] = m0 | (m1 << 16);
        any |= masks[r];
    }
    if (any == 0) return false;  // the common case: nothing to store
    for (int r = 0; r < kRows; ++r) {
        _mm512_storeu_ps(s_out + r * kPanel, acc[r][0]);
        _mm512_storeu_ps(s_out + r * kPanel + 16, acc[r][1]);
    }
    return true;
}

#endif  // PYNOMALY_X86

}  // namespace

ScreenKernel select_screen_kernel(SimdTarget target, ScreenKind kind) {
    const bool dot = kind == ScreenKind::dot;
#ifdef PYNOMALY_X86
    if (target == SimdTarget::avx512) return dot ? avx512_screen<ScreenKind::dot> : avx512_screen<ScreenKind::l1>;
    if (target == SimdTarget::avx2) return dot ? avx2_screen<ScreenKind::dot> : avx2_screen<ScreenKind::l1>;
#else
    (void)target;
#endif
    return dot ? scalar_screen<ScreenKind::dot> : scalar_screen<ScreenKind::l1>;
}

}  // namespace pynomaly
