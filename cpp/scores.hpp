// From scores to decisions: statistics of training scores (moments, order statistics) and the
// transforms that turn raw scores into [0, 1] values (min-max, z-score, unify, empirical CDF).
// Knows nothing of Python. Every function gives the same result for any n_threads and any SIMD
// target; small arrays run on the calling thread.
#pragma once

#include <cstdint>

#include "common.hpp"

namespace pynomaly {

// The decision rule, as pynomaly.service.Scorer.decide states it in Python: a row is an anomaly
// when its score is above the threshold. Every C++ site that labels or counts anomalies calls it.
inline bool is_anomaly(double score, double threshold) { return score > threshold; }

// Mean, population standard deviation (ddof = 0, as np.std), minimum and maximum of n finite
// scores, in one pass over memory: fixed blocks of 2048 scores are summed in L1 (block mean,
// then squared deviations from it) and merged with Chan et al.'s update, so the result is
// accurate (no E[x^2] - E[x]^2 cancellation) and independent of threads and SIMD target.
// Throws InvalidInput for n < 1 or a NaN / infinite score (naming its index).
struct ScoreMoments {
    int64_t n = 0;
    double mean = 0.0;
    double std = 0.0;
    double min = 0.0;
    double max = 0.0;
};
ScoreMoments score_moments(const double* x, int64_t n, int n_threads);

// Min-max scaling fitted on [lo, hi] and clipped to [0, 1], computed exactly as scikit-learn's
// MinMaxScaler (y = x * scale + offset with scale = 1 / (hi - lo), offset = -lo * scale; a range
// below 10 eps counts as 1) so results are bit-equal to PyOD's predict_proba(method="linear").
// NaN stays NaN. out may alias x. Throws InvalidInput unless lo <= hi are finite.
void minmax_scale(const double* x, int64_t n, double lo, double hi, double* out, int n_threads);

// (x - mean) / std; a std below 10 eps counts as 1 (scikit-learn's StandardScaler rule), so
// constant training scores never divide by zero. NaN stays NaN. out may alias x.
// Throws InvalidInput unless mean is finite and std is finite and >= 0.
void zscore(const double* x, int64_t n, double mean, double std, double* out, int n_threads);

// Gaussian scaling (Kriegel et al. 2011): max(0, erf((x - mean) / (std * sqrt(2)))), clipped to
// [0, 1], as PyOD's predict_proba(method="unify"). erf is a piecewise polynomial accurate to a
// few ulp of 1 (absolute error < 1e-15; see tools/gen_erf_coeffs.py). std == 0 (constant training scores): 1 above the
// mean, 0 otherwise. NaN stays NaN. out may alias x. Throws InvalidInput as zscore.
void unify(const double* x, int64_t n, double mean, double std, double* out, int n_threads);

// Empirical CDF of the training scores: for each x, the number of training scores <= x
// (binary search in `sorted`, ascending, m >= 1). ecdf_count gives the count (what ExCeeD
// uses), ecdf the count / m. A NaN x gives -1 in ecdf_count and NaN in ecdf.
void ecdf_count(const double* sorted, int64_t m, const double* x, int64_t n, int64_t* out, int n_threads);
void ecdf(const double* sorted, int64_t m, const double* x, int64_t n, double* out, int n_threads);

// The q-th percentile (q in [0, 100]) with linear interpolation, bit-equal to
// np.percentile(x, q): the two order statistics around (n - 1) * q / 100 are found by
// selection in O(n) (a sample brackets them, one pass counts and keeps the bracket, the bracket
// is selected), then combined with NumPy's own lerp. Throws InvalidInput for n < 1, q outside
// [0, 100] or a NaN score (NumPy would return NaN, which labels nothing).
double percentile(const double* x, int64_t n, double q, int n_threads);

// The threshold for a contamination rate c in [0, 1]: percentile(x, 100 * (1 - c)), computed
// with the same floating-point steps as PyOD's np.percentile(scores, 100 * (1 - c)).
double contamination_threshold(const double* x, int64_t n, double contamination, int n_threads);

// Sorted copy of the scores (for ecdf); throws InvalidInput on NaN.
void sorted_copy(const double* x, int64_t n, double* out, int n_threads);

}  // namespace pynomaly
