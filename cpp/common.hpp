// Shared plumbing of the native core: matrix views, the errors it throws, run-time SIMD
// selection and cooperative cancellation. Knows nothing of Python.
#pragma once

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pynomaly {

// Bad arguments or data. The binding maps it to pynomaly.InvalidInputError (a ValueError).
struct InvalidInput : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Arrays that cannot define a model (read from a file, or built by another library). The
// binding maps it to pynomaly.ModelFormatError (also a ValueError).
struct InvalidModel : InvalidInput {
    using InvalidInput::InvalidInput;
};

// A long call was stopped because the caller asked (Ctrl-C); the binding re-raises the
// Python exception that the signal handler set.
struct Cancelled : std::runtime_error {
    Cancelled() : std::runtime_error("cancelled") {}
};

// A read-only 2-D view of float32 or float64 data with arbitrary element strides, so that
// C-ordered, Fortran-ordered and sliced arrays are all read in place.
struct MatrixView {
    const void* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t row_stride = 0;  // in elements
    int64_t col_stride = 0;  // in elements
    bool is_float32 = false;

    template <class T>
    const T* ptr() const { return static_cast<const T*>(data); }
};

// x86 targets are ordered (avx512 can run avx2 code); neon is aarch64's, always present there.
enum class SimdTarget : int { baseline = 0, avx2 = 1, avx512 = 2, neon = 3 };
constexpr int kSimdTargets = 4;

const char* simd_name(SimdTarget t);
SimdTarget simd_from_name(const std::string& name);  // throws InvalidInput
SimdTarget best_supported_simd();                     // what this CPU and OS can run
bool simd_supported(SimdTarget t);                    // baseline, and what best_supported_simd() includes
bool simd_includes(SimdTarget active, SimdTarget needs);  // may code for `needs` run when `active` is chosen?
SimdTarget active_simd();                             // what kernels use now
void set_active_simd(SimdTarget t);                   // throws InvalidInput unless simd_supported(t)

// Polled between chunks of a long native call by the thread that made the call; returns true
// to stop. The binding passes a function that checks Python's pending signals.
// The same thread may also be told how far the call has come (a fraction in [0, 1]) just
// before each poll; the binding turns it into the caller's progress callback.
struct CancelCheck {
    bool (*poll)(void* ctx) = nullptr;
    void* ctx = nullptr;
    void (*report)(void* ctx, double fraction) = nullptr;
    bool operator()() const { return poll != nullptr && poll(ctx); }
    void progress(double fraction) const {
        if (report != nullptr) report(ctx, fraction);
    }
};

// Threads for a parallel region: the request, capped at the processors this process may use
// and at the number of work items; a request < 1 means all processors.
int effective_threads(int requested, int64_t work_items);

bool openmp_enabled();
int openmp_max_threads();

}  // namespace pynomaly
