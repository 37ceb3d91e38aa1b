// Run-time SIMD selection and thread-count policy.
#include "common.hpp"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pynomaly {

const char* simd_name(SimdTarget t) {
    switch (t) {
        case SimdTarget::avx512: return "avx512";
        case SimdTarget::avx2: return "avx2";
        case SimdTarget::neon: return "neon";
        default: return "baseline";
    }
}

SimdTarget simd_from_name(const std::string& name) {
    if (name == "baseline") return SimdTarget::baseline;
    if (name == "avx2") return SimdTarget::avx2;
    if (name == "avx512") return SimdTarget::avx512;
    if (name == "neon") return SimdTarget::neon;
    throw InvalidInput("unknown SIMD target '" + name + "'; accepted: baseline, avx2, avx512, neon");
}

SimdTarget best_supported_simd() {
#if defined(__x86_64__) || defined(_M_X64)
    // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return SimdTarget::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdTarget::avx2;
#elif defined(__aarch64__)
    return SimdTarget::neon;  // Advanced SIMD is mandatory in AArch64
#endif
    return SimdTarget::baseline;
}

bool simd_includes(SimdTarget active, SimdTarget needs) {
    if (needs == SimdTarget::baseline || needs == active) return true;
    return active == SimdTarget::avx512 && needs == SimdTarget::avx2;
}

bool simd_supported(SimdTarget t) { return simd_includes(best_supported_simd(), t); }

namespace {
std::atomic<int>& active_slot() {
    static std::atomic<int> slot{static_cast<int>(best_supported_simd())};
    return slot;
}
}  // namespace

SimdTarget active_simd() { return static_cast<SimdTarget>(active_slot().load(std::memory_order_relaxed)); }

void set_active_simd(SimdTarget t) {
    if (!simd_supported(t))
        throw InvalidInput(std::string("SIMD target '") + simd_name(t) +
                           "' is not supported by this CPU; the best it supports is '" +
                           simd_name(best_supported_simd()) + "'");
    active_slot().store(static_cast<int>(t), std::memory_order_relaxed);
}

int effective_threads(int requested, int64_t work_items) {
    // More threads than processors only adds switching for CPU-bound kernels, and an absurd
    // request (n_jobs=10**6) would make the OpenMP runtime abort when thread creation fails.
    // One thread needs no answer from the OS: asking costs a sched_getaffinity call, about a
    // quarter of scoring a single row.
    if (requested == 1 || work_items <= 1) return 1;
    const int procs = openmp_max_threads();
    int n = requested;
    if (n <= 0 || n > procs) n = procs;
    if (work_items < n) n = static_cast<int>(work_items);
    return std::max(n, 1);
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

}  // namespace pynomaly
