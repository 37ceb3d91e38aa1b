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

// Sym: the queries in panel layout and the transposed compare of SymScreenKernel (the
// accumulators are shared).
template <ScreenKind K, bool Sym>
bool scalar_tile(const float* xq, int64_t d, const float* panel, const float* off, const float* offq, float alpha,
                 const float* thr, const float* thr_panel, uint32_t* masks, uint32_t* tmasks, float* s_out,
                 float* t_out) {
    bool any = false;
    for (int r = 0; r < kRows; ++r) {
        float acc[kPanel] = {};
        for (int64_t j = 0; j < d; ++j) {
            const float xv = Sym ? xq[j * kPanel + r] : xq[r * d + j];
            const float* p = panel + j * kPanel;
            for (int l = 0; l < kPanel; ++l) {
                if constexpr (K == ScreenKind::dot)
                    acc[l] += xv * p[l];
                else
                    acc[l] += std::fabs(xv - p[l]);
            }
        }
        uint32_t m = 0, tm = 0;
        for (int l = 0; l < kPanel; ++l) {
            const float s = alpha * acc[l] + off[l];
            s_out[r * kPanel + l] = s;
            m |= uint32_t(s <= thr[r]) << l;
            if constexpr (Sym) {
                const float t = alpha * acc[l] + offq[r];
                t_out[r * kPanel + l] = t;
                tm |= uint32_t(t <= thr_panel[l]) << l;
            }
        }
        masks[r] = m;
        any |= m != 0;
        if constexpr (Sym) {
            tmasks[r] = tm;
            any |= tm != 0;
        }
    }
    return any;
}

template <ScreenKind K>
bool scalar_screen(const float* xq, int64_t d, const float* panel, const float* off, float alpha, const float* thr,
                   uint32_t* masks, float* s_out) {
    return scalar_tile<K, false>(xq, d, panel, off, nullptr, alpha, thr, nullptr, masks, nullptr, s_out, nullptr);
}

#ifdef PYNOMALY_X86

// Four query rows x 16 data rows (two ymm) per pass; four passes cover the 8 x 32 tile. Eight
// accumulators keep both FMA ports busy without spilling the 16 ymm registers.
template <ScreenKind K, bool Sym>
__attribute__((target("avx2,fma"))) bool avx2_tile(const float* xq, int64_t d, const float* panel, const float* off,
                                                   const float* offq, float alpha, const float* thr,
                                                   const float* thr_panel, uint32_t* masks, uint32_t* tmasks,
                                                   float* s_out, float* t_out) {
    const __m256 va = _mm256_set1_ps(alpha);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int r = 0; r < kRows; ++r) masks[r] = 0;
    if constexpr (Sym)
        for (int r = 0; r < kRows; ++r) tmasks[r] = 0;
    bool any = false;
    for (int rh = 0; rh < kRows; rh += 4) {
        for (int lh = 0; lh < kPanel; lh += 16) {
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
                   a31 = a00;
            // Query r, feature j at x[j * fs + r * rs]: rows contiguous, or (Sym) panel layout.
            const int64_t rs = Sym ? 1 : d, fs = Sym ? kPanel : 1;
            const float* x0 = xq + rh * rs;
            const float* x1 = x0 + rs;
            const float* x2 = x1 + rs;
            const float* x3 = x2 + rs;
            for (int64_t j = 0; j < d; ++j) {
                const __m256 p0 = _mm256_loadu_ps(panel + j * kPanel + lh);
                const __m256 p1 = _mm256_loadu_ps(panel + j * kPanel + lh + 8);
                const __m256 b0 = _mm256_broadcast_ss(x0 + j * fs), b1 = _mm256_broadcast_ss(x1 + j * fs);
                const __m256 b2 = _mm256_broadcast_ss(x2 + j * fs), b3 = _mm256_broadcast_ss(x3 + j * fs);
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
                if constexpr (Sym) {
                    const __m256 oq = _mm256_set1_ps(offq[rh + q]);
                    const __m256 t0 = _mm256_fmadd_ps(va, accs[2 * q], oq);
                    const __m256 t1 = _mm256_fmadd_ps(va, accs[2 * q + 1], oq);
                    _mm256_storeu_ps(t_out + (rh + q) * kPanel + lh, t0);
                    _mm256_storeu_ps(t_out + (rh + q) * kPanel + lh + 8, t1);
                    const __m256 tp0 = _mm256_loadu_ps(thr_panel + lh), tp1 = _mm256_loadu_ps(thr_panel + lh + 8);
                    const uint32_t n0 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(t0, tp0, _CMP_LE_OQ)));
                    const uint32_t n1 = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(t1, tp1, _CMP_LE_OQ)));
                    const uint32_t tm = (n0 | (n1 << 8)) << lh;
                    tmasks[rh + q] |= tm;
                    any |= tm != 0;
                }
            }
        }
    }
    return any;
}

template <ScreenKind K>
__attribute__((target("avx2,fma"))) bool avx2_screen(const float* xq, int64_t d, const float* panel, const float* off,
                                                     float alpha, const float* thr, uint32_t* masks, float* s_out) {
    return avx2_tile<K, false>(xq, d, panel, off, nullptr, alpha, thr, nullptr, masks, nullptr, s_out, nullptr);
}

#define PYNOMALY_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

// All 8 query rows x 32 data rows (two zmm) at once: 16 accumulators, each panel load feeding
// eight FMAs and each broadcast two.
template <ScreenKind K, bool Sym>
PYNOMALY_AVX512 bool avx512_tile(const float* xq, int64_t d, const float* panel, const float* off, const float* offq,
                                 float alpha, const float* thr, const float* thr_panel, uint32_t* masks,
                                 uint32_t* tmasks, float* s_out, float* t_out) {
    __m512 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
        const __m512 p0 = _mm512_loadu_ps(panel + j * kPanel);
        const __m512 p1 = _mm512_loadu_ps(panel + j * kPanel + 16);
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
            const __m512 b = _mm512_set1_ps(Sym ? xq[j * kPanel + r] : xq[r * d + j]);
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
    if constexpr (Sym) {
        // The transposed compare first, while the accumulators are still raw; t is recomputed
        // (same FMA, same bits) for the rare tile that must store it, to keep 16 zmm free.
        const __m512 tp0 = _mm512_loadu_ps(thr_panel), tp1 = _mm512_loadu_ps(thr_panel + 16);
        for (int r = 0; r < kRows; ++r) {
            const __m512 oq = _mm512_set1_ps(offq[r]);
            const uint32_t m0 = _mm512_cmp_ps_mask(_mm512_fmadd_ps(va, acc[r][0], oq), tp0, _CMP_LE_OQ);
            const uint32_t m1 = _mm512_cmp_ps_mask(_mm512_fmadd_ps(va, acc[r][1], oq), tp1, _CMP_LE_OQ);
            tmasks[r] = m0 | (m1 << 16);
            any |= tmasks[r];
        }
        if (any != 0)
            for (int r = 0; r < kRows; ++r) {
                const __m512 oq = _mm512_set1_ps(offq[r]);
                _mm512_storeu_ps(t_out + r * kPanel, _mm512_fmadd_ps(va, acc[r][0], oq));
                _mm512_storeu_ps(t_out + r * kPanel + 16, _mm512_fmadd_ps(va, acc[r][1], oq));
            }
    }
    uint32_t any_rows = 0;
    for (int r = 0; r < kRows; ++r) {
        const __m512 t = _mm512_set1_ps(thr[r]);
        acc[r][0] = _mm512_fmadd_ps(va, acc[r][0], o0);
        acc[r][1] = _mm512_fmadd_ps(va, acc[r][1], o1);
        const uint32_t m0 = _mm512_cmp_ps_mask(acc[r][0], t, _CMP_LE_OQ);
        const uint32_t m1 = _mm512_cmp_ps_mask(acc[r][1], t, _CMP_LE_OQ);
        masks[r] = m0 | (m1 << 16);
        any_rows |= masks[r];
    }
    if (any_rows != 0)
        for (int r = 0; r < kRows; ++r) {
            _mm512_storeu_ps(s_out + r * kPanel, acc[r][0]);
            _mm512_storeu_ps(s_out + r * kPanel + 16, acc[r][1]);
        }
    return (any | any_rows) != 0;  // the common case: nothing passed, nothing stored
}

template <ScreenKind K>
PYNOMALY_AVX512 bool avx512_screen(const float* xq, int64_t d, const float* panel, const float* off, float alpha,
                                   const float* thr, uint32_t* masks, float* s_out) {
    return avx512_tile<K, false>(xq, d, panel, off, nullptr, alpha, thr, nullptr, masks, nullptr, s_out, nullptr);
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

SymScreenKernel select_sym_screen_kernel(SimdTarget target, ScreenKind kind) {
    const bool dot = kind == ScreenKind::dot;
#ifdef PYNOMALY_X86
    if (target == SimdTarget::avx512)
        return dot ? avx512_tile<ScreenKind::dot, true> : avx512_tile<ScreenKind::l1, true>;
    if (target == SimdTarget::avx2) return dot ? avx2_tile<ScreenKind::dot, true> : avx2_tile<ScreenKind::l1, true>;
#else
    (void)target;
#endif
    return dot ? scalar_tile<ScreenKind::dot, true> : scalar_tile<ScreenKind::l1, true>;
}

}  // namespace pynomaly
