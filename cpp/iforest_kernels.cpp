// Isolation-forest traversal kernels. Every kernel walks the padded complete layout (a 1-based
// heap per tree, see Forest::Compiled) for exactly `depth` levels: slot = 2 * slot +
// (x > threshold), with no data-dependent branches. The SIMD kernels advance 8 or 16 rows per
// tree step and keep several groups of rows in flight so the long gather latencies overlap.
// The top levels of each tree are read from registers by permutes (the heap's level alignment
// makes the slot number the permute index), level 0 and 1 read x with contiguous loads
// (every row of a group is at one of at most two nodes), deeper levels gather.
// Every kernel adds the trees' path lengths to a row in tree order, in float64, so all
// kernels give bit-identical sums. x86 kernels are compiled with target attributes so the
// rest of the library stays baseline.
#include "iforest_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PYNOMALY_X86 1
#endif

namespace pynomaly {

namespace {

using Compiled = Forest::Compiled;

template <int D>
void scalar_kernel(const Compiled& c, const float* xt, int64_t n_rows, double* acc) {
    constexpr int64_t S = int64_t(1) << D;
    const int64_t padded = (n_rows + 3) / 4 * 4;  // blocks are zero-padded to 16 rows
    for (int64_t t = 0; t < c.n_trees; ++t) {
        const int32_t* f = c.feature_scaled.data() + t * S;
        const float* th = c.threshold.data() + t * S;
        const double* lv = c.leaf_value.data() + t * S - S;
        // Four rows at once: independent dependency chains keep the core busy.
        for (int64_t i = 0; i < padded; i += 4) {
            uint32_t a = 1, b = 1, cc = 1, d = 1;
#pragma GCC unroll 16
            for (int l = 0; l < D; ++l) {
                a = 2 * a + (xt[f[a] + i] > th[a]);
                b = 2 * b + (xt[f[b] + i + 1] > th[b]);
                cc = 2 * cc + (xt[f[cc] + i + 2] > th[cc]);
                d = 2 * d + (xt[f[d] + i + 3] > th[d]);
            }
            acc[i] += lv[a];
            acc[i + 1] += lv[b];
            acc[i + 2] += lv[cc];
            acc[i + 3] += lv[d];
        }
    }
}

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

const BlockKernel kScalar[] = PYNOMALY_DEPTH_TABLE(scalar_kernel);
void scalar_entry(const Compiled& c, const float* xt, int64_t n, double* acc) { kScalar[c.depth](c, xt, n, acc); }

#ifdef PYNOMALY_X86
const BlockKernel kAvx2[] = PYNOMALY_DEPTH_TABLE(avx2_kernel);
const BlockKernel kAvx512[] = PYNOMALY_DEPTH_TABLE(avx512_kernel);
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

BlockKernel select_block_kernel(SimdTarget target) {
#ifdef PYNOMALY_X86
    if (target == SimdTarget::avx512) return avx512_entry;
    if (target == SimdTarget::avx2) return avx2_entry;
#endif
    (void)target;
    return scalar_entry;
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
