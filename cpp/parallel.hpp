// The one way the core runs chunks of work on threads: OpenMP with num_threads(n) (never
// omp_set_num_threads, which would leak into the user's process), dynamic scheduling, one
// chunk at a time on the calling thread when there is a single chunk or thread.
#pragma once

#include <atomic>
#include <exception>
#include <mutex>
#include <type_traits>

#include "common.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pynomaly {

// Runs body(chunk) for chunks [0, n_chunks) on up to n_threads threads. body may return void,
// or bool where false stops the remaining chunks (e.g. bad data found). Only the calling
// thread polls `cancel` and reports progress to it (it is the one that may touch the
// interpreter); every thread stops
// taking chunks once a stop is flagged. Exceptions never leave the parallel region: the first
// is kept and rethrown after the join. A cancelled call throws Cancelled.
template <class Body>
void parallel_chunks(int64_t n_chunks, int n_threads, const CancelCheck& cancel, Body&& body) {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> done{0};  // chunks finished, for the caller's progress reports
    bool cancelled = false;
    std::exception_ptr error;
    std::mutex error_mu;
    auto run_one = [&](int64_t c, bool is_caller) {
        if (stop.load(std::memory_order_relaxed)) return;
        if (is_caller) {
            cancel.progress(static_cast<double>(done.load(std::memory_order_relaxed)) / static_cast<double>(n_chunks));
            if (cancel()) {
                cancelled = true;
                stop.store(true);
                return;
            }
        }
        try {
            if constexpr (std::is_void_v<decltype(body(c))>) {
                body(c);
            } else {
                if (!body(c)) stop.store(true);
            }
            done.fetch_add(1, std::memory_order_relaxed);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mu);
            if (!error) error = std::current_exception();
            stop.store(true);
        }
    };
    const int nt = n_chunks > 1 ? effective_threads(n_threads, n_chunks) : 1;
    if (nt <= 1) {
        for (int64_t c = 0; c < n_chunks && !stop.load(std::memory_order_relaxed); ++c) run_one(c, true);
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t c = 0; c < n_chunks; ++c) run_one(c, omp_get_thread_num() == 0);
#else
        for (int64_t c = 0; c < n_chunks; ++c) run_one(c, true);
#endif
    }
    if (error) std::rethrow_exception(error);
    if (cancelled) throw Cancelled();
}

}  // namespace pynomaly
