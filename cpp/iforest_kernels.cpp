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
//
// The shared pieces are in iforest_kernels_chains.hpp, the x86 kernels in iforest_kernels_x86.hpp;
// both are part of this translation unit.
#include "iforest_kernels.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "iforest_kernels_chains.hpp"
#include "iforest_kernels_x86.hpp"

namespace pynomaly {

namespace {

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
