// Isolation-forest traversal kernels. Every kernel walks the padded complete layout (see
// Forest::Compiled) for exactly `depth` levels: node = 2 * node + 1 + (x > threshold), with
// no data-dependent branches. The SIMD kernels advance 8 or 16 rows per tree step; the top
// levels of each tree are held in registers (permutes), deeper levels are gathered.
// x86 kernels are compiled with target attributes so the rest of the library stays baseline.
#include "iforest_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#endif

namespace pynomaly {

namespace {

template <int D>
void scalar_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t I = (int64_t(1) << D) - 1;
    const int64_t T = static_cast<int64_t>(c.threshold.size()) / I;
    const int64_t padded = (n_rows + 3) / 4 * 4;
    for (int64_t t = 0; t < T; ++t) {
        const int32_t* f = c.feature_scaled.data() + t * I;
        const float* th = c.threshold.data() + t * I;
        const double* lv = c.leaf_value.data() + t * (I + 1);
        // Four rows at once: independent dependency chains keep the core busy.
        for (int64_t i = 0; i < padded; i += 4) {
            uint32_t a = 0, b = 0, cc = 0, d = 0;
            for (int l = 0; l < D; ++l) {
                a = 2 * a + 1 + (xt[f[a] + i] > th[a]);
                b = 2 * b + 1 + (xt[f[b] + i + 1] > th[b]);
                cc = 2 * cc + 1 + (xt[f[cc] + i + 2] > th[cc]);
                d = 2 * d + 1 + (xt[f[d] + i + 3] > th[d]);
            }
            acc[i] += lv[a - I];
            acc[i + 1] += lv[b - I];
            acc[i + 2] += lv[cc - I];
            acc[i + 3] += lv[d - I];
        }
    }
}

#ifdef PYNOMALY_X86

template <int D>
__attribute__((target("avx2,fma"))) void avx2_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows,
                                                     double* acc) {
    constexpr int64_t I = (int64_t(1) << D) - 1;
    const int64_t T = static_cast<int64_t>(c.threshold.size()) / I;
    const int64_t groups = (n_rows + 7) / 8;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i leaf_base = _mm256_set1_epi32(static_cast<int32_t>(I));
    alignas(32) float top_t[8];
    alignas(32) int32_t top_f[8];
    for (int64_t t = 0; t < T; ++t) {
        const int32_t* f = c.feature_scaled.data() + t * I;
        const float* th = c.threshold.data() + t * I;
        const double* lv = c.leaf_value.data() + t * (I + 1);
        // Levels 0..2 (nodes 0..6) live in one register each for thresholds and features.
        for (int j = 0; j < 8; ++j) {
            top_t[j] = j < I ? th[j] : 0.0f;
            top_f[j] = j < I ? f[j] : 0;
        }
        const __m256 rt = _mm256_load_ps(top_t);
        const __m256i rf = _mm256_load_si256(reinterpret_cast<const __m256i*>(top_f));
        for (int64_t g = 0; g < groups; ++g) {
            const __m256i lane = _mm256_add_epi32(iota, _mm256_set1_epi32(static_cast<int32_t>(g * 8)));
            // Level 0: every row is at the root, so x is a contiguous load.
            __m256 xv = _mm256_loadu_ps(xt + f[0] + g * 8);
            __m256i right = _mm256_castps_si256(_mm256_cmp_ps(xv, _mm256_set1_ps(th[0]), _CMP_GT_OQ));
            __m256i idx = _mm256_sub_epi32(one, right);
            for (int l = 1; l < D; ++l) {
                __m256 tv;
                __m256i fv;
                if (l < 3) {
                    tv = _mm256_permutevar8x32_ps(rt, idx);
                    fv = _mm256_permutevar8x32_epi32(rf, idx);
                } else {
                    tv = _mm256_i32gather_ps(th, idx, 4);
                    fv = _mm256_i32gather_epi32(f, idx, 4);
                }
                xv = _mm256_i32gather_ps(xt, _mm256_add_epi32(fv, lane), 4);
                right = _mm256_castps_si256(_mm256_cmp_ps(xv, tv, _CMP_GT_OQ));
                idx = _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(idx, idx), one), right);
            }
            const __m256i leaf = _mm256_sub_epi32(idx, leaf_base);
            const __m256d v0 = _mm256_i32gather_pd(lv, _mm256_castsi256_si128(leaf), 8);
            const __m256d v1 = _mm256_i32gather_pd(lv, _mm256_extracti128_si256(leaf, 1), 8);
            double* a = acc + g * 8;
            _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), v0));
            _mm256_storeu_pd(a + 4, _mm256_add_pd(_mm256_loadu_pd(a + 4), v1));
        }
    }
}

#define PYNOMALY_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

template <int D>
PYNOMALY_AVX512 void avx512_kernel(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t I = (int64_t(1) << D) - 1;
    const int64_t T = static_cast<int64_t>(c.threshold.size()) / I;
    const int64_t groups = (n_rows + 15) / 16;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i one = _mm512_set1_epi32(1);
    alignas(64) float top_t[64];
    alignas(64) int32_t top_f[64];
    for (int64_t t = 0; t < T; ++t) {
        const int32_t* f = c.feature_scaled.data() + t * I;
        const float* th = c.threshold.data() + t * I;
        const double* lv = c.leaf_value.data() + t * (I + 1);
        // Levels 0..5 (nodes 0..62) in registers: nodes 0..14 | 15..30 | 31..62 (two registers).
        for (int j = 0; j < 64; ++j) {
            const int node = j < 15 ? j : (j < 16 ? -1 : j - 1);  // slot 15 is padding
            top_t[j] = node >= 0 && node < I ? th[node] : 0.0f;
            top_f[j] = node >= 0 && node < I ? f[node] : 0;
        }
        const __m512 t0 = _mm512_load_ps(top_t), t1 = _mm512_load_ps(top_t + 16);
        const __m512 t2 = _mm512_load_ps(top_t + 32), t3 = _mm512_load_ps(top_t + 48);
        const __m512i f0 = _mm512_load_si512(top_f), f1 = _mm512_load_si512(top_f + 16);
        const __m512i f2 = _mm512_load_si512(top_f + 32), f3 = _mm512_load_si512(top_f + 48);
        const __m512 th1 = _mm512_set1_ps(I > 1 ? th[1] : 0.0f), th2 = _mm512_set1_ps(I > 2 ? th[2] : 0.0f);
        const float* x1 = xt + (I > 1 ? f[1] : 0);
        const float* x2 = xt + (I > 2 ? f[2] : 0);
        const float* x0 = xt + f[0];
        const __m512 th0 = _mm512_set1_ps(th[0]);
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t r = g * 16;
            const __m512i lane = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(r)));
            // Level 0: all rows at the root -> contiguous load. Level 1: one of two nodes ->
            // two contiguous loads and a blend. Deeper levels gather x.
            __mmask16 right = _mm512_cmp_ps_mask(_mm512_loadu_ps(x0 + r), th0, _CMP_GT_OQ);
            __m512i idx = _mm512_mask_add_epi32(one, right, one, one);
            if (D > 1) {
                const __m512 xv = _mm512_mask_blend_ps(right, _mm512_loadu_ps(x1 + r), _mm512_loadu_ps(x2 + r));
                const __m512 tv = _mm512_mask_blend_ps(right, th1, th2);
                const __mmask16 r1 = _mm512_cmp_ps_mask(xv, tv, _CMP_GT_OQ);
                idx = _mm512_add_epi32(_mm512_add_epi32(idx, idx), one);
                idx = _mm512_mask_add_epi32(idx, r1, idx, one);
            }
            for (int l = 2; l < D; ++l) {
                __m512 tv;
                __m512i fv;
                if (l < 4) {
                    tv = _mm512_permutexvar_ps(idx, t0);
                    fv = _mm512_permutexvar_epi32(idx, f0);
                } else if (l == 4) {
                    const __m512i k = _mm512_sub_epi32(idx, _mm512_set1_epi32(15));
                    tv = _mm512_permutexvar_ps(k, t1);
                    fv = _mm512_permutexvar_epi32(k, f1);
                } else if (l == 5) {
                    const __m512i k = _mm512_sub_epi32(idx, _mm512_set1_epi32(31));
                    tv = _mm512_permutex2var_ps(t2, k, t3);
                    fv = _mm512_permutex2var_epi32(f2, k, f3);
                } else {
                    tv = _mm512_i32gather_ps(idx, th, 4);
                    fv = _mm512_i32gather_epi32(idx, f, 4);
                }
                const __m512 xv = _mm512_i32gather_ps(_mm512_add_epi32(fv, lane), xt, 4);
                const __mmask16 rr = _mm512_cmp_ps_mask(xv, tv, _CMP_GT_OQ);
                idx = _mm512_add_epi32(_mm512_add_epi32(idx, idx), one);
                idx = _mm512_mask_add_epi32(idx, rr, idx, one);
            }
            const __m512i leaf = _mm512_sub_epi32(idx, _mm512_set1_epi32(static_cast<int32_t>(I)));
            const __m512d v0 = _mm512_i32gather_pd(_mm512_castsi512_si256(leaf), lv, 8);
            const __m512d v1 = _mm512_i32gather_pd(_mm512_extracti32x8_epi32(leaf, 1), lv, 8);
            double* a = acc + r;
            _mm512_storeu_pd(a, _mm512_add_pd(_mm512_loadu_pd(a), v0));
            _mm512_storeu_pd(a + 8, _mm512_add_pd(_mm512_loadu_pd(a + 8), v1));
        }
    }
}

#endif  // PYNOMALY_X86

#define PYNOMALY_DEPTH_TABLE(kernel)                                                                 \
    {nullptr,       kernel<1>,  kernel<2>,  kernel<3>, kernel<4>,  kernel<5>, kernel<6>,              \
     kernel<7>,     kernel<8>,  kernel<9>,  kernel<10>, kernel<11>, kernel<12>}

void dispatch(const Forest::Compiled& c, const float* xt, int64_t n_rows, double* acc, const BlockKernel* table) {
    table[c.depth](c, xt, n_rows, acc);
}

const BlockKernel kScalar[] = PYNOMALY_DEPTH_TABLE(scalar_kernel);
void scalar_entry(const Forest::Compiled& c, const float* xt, int64_t n, double* acc) { dispatch(c, xt, n, acc, kScalar); }

#ifdef PYNOMALY_X86
const BlockKernel kAvx2[] = PYNOMALY_DEPTH_TABLE(avx2_kernel);
const BlockKernel kAvx512[] = PYNOMALY_DEPTH_TABLE(avx512_kernel);
void avx2_entry(const Forest::Compiled& c, const float* xt, int64_t n, double* acc) { dispatch(c, xt, n, acc, kAvx2); }
void avx512_entry(const Forest::Compiled& c, const float* xt, int64_t n, double* acc) { dispatch(c, xt, n, acc, kAvx512); }
#endif

static_assert(Forest::kMaxCompleteDepth == 12, "depth tables cover depths 1..12");

}  // namespace

BlockKernel select_block_kernel(SimdTarget target) {
#ifdef PYNOMALY_X86
    if (target == SimdTarget::avx512) return avx512_entry;
    if (target == SimdTarget::avx2) return avx2_entry;
#endif
    (void)target;
    return scalar_entry;
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
