// Drivers of the score kernels: argument checks, splitting work over threads, merging block
// moments, and the O(n) selection behind percentile / contamination_threshold.
#include "scores.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "scores_kernels.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pynomaly {

namespace {

// Below this many scores a call stays on the calling thread: waking a team costs more than
// streaming 32k doubles (~10 us).
constexpr int64_t kParallelMin = int64_t(1) << 15;

// Which thread of the team runs this (0 outside a parallel region): per-thread buffers.
int current_slot() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Runs body(begin, end) over [0, n) in chunks (starts are multiples of 8) taken dynamically by
// up to n_threads threads: about 16 chunks per thread, so a thread on a busy core does less
// instead of holding everyone up. Results never depend on the split: every body is elementwise
// or writes per-item results. Exceptions (allocation) are kept and rethrown after the join.
template <class Body>
void parallel_ranges(int64_t n, int n_threads, Body&& body, int64_t min_parallel = kParallelMin) {
    const int nt = n < min_parallel ? 1 : effective_threads(n_threads, n / (min_parallel / 2));
    if (nt <= 1) {
        body(int64_t(0), n);
        return;
    }
    int64_t chunk = std::max<int64_t>(min_parallel / 2, n / (int64_t(nt) * 16));
    chunk = (chunk + 7) / 8 * 8;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    std::exception_ptr error;
    std::mutex mu;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
#endif
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t b = c * chunk, e = std::min(n, b + chunk);
        try {
            body(b, e);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

[[noreturn]] void throw_bad_value(const double* x, int64_t n, const char* what) {
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(x[i]))
            throw InvalidInput(std::string("scores contain NaN at index ") + std::to_string(i) + "; " + what);
        if (std::isinf(x[i]))
            throw InvalidInput(std::string("scores contain infinity at index ") + std::to_string(i) + "; " + what);
    }
    throw InvalidInput(std::string("scores are too large to sum in float64 (overflow); ") + what);
}

void check_n(int64_t n) {
    if (n < 1) throw InvalidInput("scores are empty; at least one score is required");
}

void check_location_scale(double mean, double std) {
    if (!std::isfinite(mean)) throw InvalidInput("mean must be finite, got " + std::to_string(mean));
    if (!std::isfinite(std) || std < 0) throw InvalidInput("std must be finite and >= 0, got " + std::to_string(std));
}

// First NaN index, or -1 (used to name the bad score after a pass found one).
int64_t first_nan(const double* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (std::isnan(x[i])) return i;
    return -1;
}

[[noreturn]] void throw_nan(int64_t index) {
    throw InvalidInput("scores contain NaN at index " + std::to_string(index) +
                       "; a threshold of NaN would label nothing, so drop or impute missing scores first");
}

// Values of ranks k0 <= k1 (k1 <= k0 + 1) of x in ascending order, by selection. Throws on NaN.
void select_pair(const double* x, int64_t n, int64_t k0, int64_t k1, int n_threads, double* v0, double* v1) {
    const ScoreKernels& kern = score_kernels(active_simd());
    auto finish = [&](std::vector<double>& buf, int64_t r0) {
        // buf holds ranks r0, r0 + 1, ... of the data (any order): select inside it.
        std::nth_element(buf.begin(), buf.begin() + r0, buf.end());
        *v0 = buf[r0];
        if (k1 == k0) {
            *v1 = *v0;
        } else {
            *v1 = *std::min_element(buf.begin() + r0 + 1, buf.end());
        }
    };
    constexpr int64_t kSample = 65536;
    if (n >= 8 * kSample) {
        // A deterministic pseudo-random sample brackets ranks k0..k1 with a margin of 4 standard
        // deviations of the sample rank on each side; one pass then counts the scores below the
        // bracket and keeps those inside (about 3% of them). The sample only affects speed: a
        // bracket that misses (probability < 1e-8) falls back to selecting on all scores.
        std::vector<double> sample(kSample);
        uint64_t state = 0x9E3779B97F4A7C15ULL ^ static_cast<uint64_t>(n);
        for (int64_t j = 0; j < kSample; ++j) {
            uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
            z ^= z >> 31;
            sample[j] = x[static_cast<int64_t>(z % static_cast<uint64_t>(n))];
        }
        const double frac = static_cast<double>(k0) / static_cast<double>(n - 1);
        const int64_t r = static_cast<int64_t>(frac * (kSample - 1));
        const int64_t margin = 1024;  // 4 * sqrt(kSample): >= 8 standard deviations of the sample rank
        double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();
        if (r - margin >= 0) {
            std::nth_element(sample.begin(), sample.begin() + (r - margin), sample.end());
            lo = sample[r - margin];
        }
        if (r + 1 + margin < kSample) {
            std::nth_element(sample.begin(), sample.begin() + (r + 1 + margin), sample.end());
            hi = sample[r + 1 + margin];
        }
        if (!(lo <= hi)) lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();

        const int nt = effective_threads(n_threads, n / (kParallelMin / 2));
        std::vector<std::vector<double>> kept(std::max(nt, 1));
        std::vector<int64_t> below(kept.size(), 0), nans(kept.size(), 0);
        parallel_ranges(n, nt, [&](int64_t b, int64_t e) {
            const int slot = current_slot();
            constexpr int64_t kPiece = 4096;
            double scratch[kPiece + 8];
            std::vector<double>& out = kept[slot];
            for (int64_t i = b; i < e; i += kPiece) {
                const int64_t len = std::min(kPiece, e - i);
                const int64_t k = kern.bracket(x + i, len, lo, hi, scratch, &below[slot], &nans[slot]);
                out.insert(out.end(), scratch, scratch + k);
            }
        });
        int64_t n_below = 0, n_nan = 0, n_kept = 0;
        for (size_t s = 0; s < kept.size(); ++s) {
            n_below += below[s];
            n_nan += nans[s];
            n_kept += static_cast<int64_t>(kept[s].size());
        }
        if (n_nan > 0) throw_nan(first_nan(x, n));
        if (n_below <= k0 && k1 < n_below + n_kept) {
            std::vector<double> buf;
            buf.reserve(n_kept);
            for (auto& v : kept) buf.insert(buf.end(), v.begin(), v.end());
            finish(buf, k0 - n_below);
            return;
        }
    } else {
        const int64_t bad = first_nan(x, n);
        if (bad >= 0) throw_nan(bad);
    }
    std::vector<double> buf(x, x + n);
    finish(buf, k0);
}

}  // namespace

ScoreMoments score_moments(const double* x, int64_t n, int n_threads) {
    check_n(n);
    const ScoreKernels& kern = score_kernels(active_simd());
    const int64_t nb = (n + kMomentBlock - 1) / kMomentBlock;
    std::vector<BlockStats> blocks(nb);
    const double shift = std::isfinite(x[0]) ? x[0] : 0.0;  // a non-finite x[0] is reported below
    parallel_ranges(
        nb, n_threads,
        [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
                const int64_t start = i * kMomentBlock;
                kern.block_stats(x + start, std::min(kMomentBlock, n - start), shift, &blocks[i]);
            }
        },
        kParallelMin / kMomentBlock);
    // Chan, Golub and LeVeque's pairwise update, block by block in a fixed order.
    ScoreMoments m;
    double mean = 0.0, m2 = 0.0;
    int64_t count = 0;
    m.min = blocks[0].min;
    m.max = blocks[0].max;
    for (int64_t i = 0; i < nb; ++i) {
        const BlockStats& s = blocks[i];
        if (!std::isfinite(s.sum)) throw_bad_value(x, n, "only finite scores have a mean and standard deviation");
        const int64_t len = std::min(kMomentBlock, n - i * kMomentBlock);
        const double bmean = s.sum / static_cast<double>(len);
        const int64_t total = count + len;
        const double delta = bmean - mean;
        mean += delta * (static_cast<double>(len) / static_cast<double>(total));
        m2 += s.m2 + delta * delta * (static_cast<double>(count) * static_cast<double>(len) / static_cast<double>(total));
        count = total;
        m.min = std::min(m.min, s.min);
        m.max = std::max(m.max, s.max);
    }
    if (!std::isfinite(m2)) throw_bad_value(x, n, "only finite scores have a mean and standard deviation");
    m.n = n;
    m.mean = shift + mean;
    m.std = std::sqrt(m2 / static_cast<double>(n));
    return m;
}

void minmax_scale(const double* x, int64_t n, double lo, double hi, double* out, int n_threads) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi)
        throw InvalidInput("min-max scaling needs finite lo <= hi, got lo=" + std::to_string(lo) +
                           ", hi=" + std::to_string(hi));
    double range = hi - lo;
    if (!std::isfinite(range))
        throw InvalidInput("min-max scaling: the range hi - lo overflows float64");
    if (range < 10 * DBL_EPSILON) range = 1.0;  // scikit-learn's _handle_zeros_in_scale
    const double scale = 1.0 / range;
    const double offset = 0.0 - lo * scale;
    const ScoreKernels& kern = score_kernels(active_simd());
    parallel_ranges(n, n_threads, [&](int64_t b, int64_t e) { kern.minmax(x + b, e - b, scale, offset, out + b); });
}

void zscore(const double* x, int64_t n, double mean, double std, double* out, int n_threads) {
    check_location_scale(mean, std);
    const double scale = std < 10 * DBL_EPSILON ? 1.0 : std;
    const ScoreKernels& kern = score_kernels(active_simd());
    parallel_ranges(n, n_threads, [&](int64_t b, int64_t e) { kern.zscore(x + b, e - b, mean, scale, out + b); });
}

void unify(const double* x, int64_t n, double mean, double std, double* out, int n_threads) {
    check_location_scale(mean, std);
    if (std == 0.0) {
        // Constant training scores: the Gaussian degenerates to a step at the mean.
        parallel_ranges(n, n_threads, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) out[i] = x[i] != x[i] ? x[i] : (x[i] > mean ? 1.0 : 0.0);
        });
        return;
    }
    // PyOD divides by sigma * sqrt(2); multiplying by its reciprocal differs by at most an ulp
    // of the erf argument and avoids a division per score.
    const double inv = 1.0 / (std * 1.4142135623730951);
    const ScoreKernels& kern = score_kernels(active_simd());
    parallel_ranges(n, n_threads, [&](int64_t b, int64_t e) { kern.unify(x + b, e - b, mean, inv, out + b); });
}

void ecdf_count(const double* sorted, int64_t m, const double* x, int64_t n, int64_t* out, int n_threads) {
    if (m < 1) throw InvalidInput("the empirical CDF needs at least one training score");
    const ScoreKernels& kern = score_kernels(active_simd());
    // A binary search costs ~log2(m) dependent loads per score: threads pay off much earlier.
    parallel_ranges(
        n, n_threads, [&](int64_t b, int64_t e) { kern.ecdf_count(sorted, m, x + b, e - b, out + b); }, 2048);
}

void ecdf(const double* sorted, int64_t m, const double* x, int64_t n, double* out, int n_threads) {
    std::vector<int64_t> counts(static_cast<size_t>(n));
    ecdf_count(sorted, m, x, n, counts.data(), n_threads);
    const double dm = static_cast<double>(m);
    for (int64_t i = 0; i < n; ++i)
        out[i] = counts[i] < 0 ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(counts[i]) / dm;
}

double percentile(const double* x, int64_t n, double q, int n_threads) {
    check_n(n);
    if (!(q >= 0.0 && q <= 100.0)) throw InvalidInput("percentile q must be in [0, 100], got " + std::to_string(q));
    // NumPy's steps for method="linear" with a Python float q: quantile = q / 100,
    // virtual index = (n - 1) * quantile, neighbours floor / floor + 1 (both the last element
    // when the index reaches n - 1), gamma = index - (the neighbour index actually used).
    const double quantile = q / 100.0;
    const double vi = static_cast<double>(n - 1) * quantile;
    int64_t prev, next;
    if (vi >= static_cast<double>(n - 1)) {
        prev = next = n - 1;
    } else {
        prev = static_cast<int64_t>(std::floor(vi));
        next = prev + 1;
    }
    const double gamma = vi - (vi >= static_cast<double>(n - 1) ? -1.0 : static_cast<double>(prev));
    double a, b;
    select_pair(x, n, prev, next, n_threads, &a, &b);
    // np.lib._function_base_impl._lerp, operation for operation.
    const double diff = b - a;
    double r = a + diff * gamma;
    if (gamma >= 0.5) r = b - diff * (1.0 - gamma);
    return r;
}

double contamination_threshold(const double* x, int64_t n, double contamination, int n_threads) {
    if (!(contamination >= 0.0 && contamination <= 1.0))
        throw InvalidInput("contamination must be in [0, 1], got " + std::to_string(contamination));
    return percentile(x, n, 100.0 * (1.0 - contamination), n_threads);
}

void sorted_copy(const double* x, int64_t n, double* out, int n_threads) {
    check_n(n);
    (void)n_threads;
    const int64_t bad = first_nan(x, n);
    if (bad >= 0)
        throw InvalidInput("scores contain NaN at index " + std::to_string(bad) +
                           "; the empirical CDF is defined for ordered scores only");
    std::copy(x, x + n, out);
    std::sort(out, out + n);
}

}  // namespace pynomaly
