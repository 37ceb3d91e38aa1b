// What every exact kNN search shares (knn.cpp says how the search works): rows read as float64, the
// finiteness check, the exact metrics in float64, the per-query top-k heap and the query block.
// Private to knn.cpp: the search is one translation unit (the tests build the core from its .cpp
// files by name), hence the unnamed namespace.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "knn.hpp"

namespace pynomaly {
namespace {

// Row r of a view, read into double (in place for any layout; one row at a time).
void read_row(const MatrixView& X, int64_t r, double* out) {
    if (X.is_float32) {
        const float* p = X.ptr<float>() + r * X.row_stride;
        for (int64_t j = 0; j < X.cols; ++j) out[j] = p[j * X.col_stride];
    } else {
        const double* p = X.ptr<double>() + r * X.row_stride;
        for (int64_t j = 0; j < X.cols; ++j) out[j] = p[j * X.col_stride];
    }
}

void check_finite(const MatrixView& X, const char* name) {
    std::vector<double> row(X.cols);
    for (int64_t i = 0; i < X.rows; ++i) {
        read_row(X, i, row.data());
        for (int64_t j = 0; j < X.cols; ++j) {
            const double v = row[j];
            if (std::fabs(v) <= 1e150) continue;
            const std::string where = " at row " + std::to_string(i) + ", column " + std::to_string(j);
            if (std::isnan(v)) throw InvalidInput(std::string(name) + " contains NaN" + where + "; impute or drop missing values first");
            if (std::isinf(v)) throw InvalidInput(std::string(name) + " contains infinity" + where + "; only finite values are accepted");
            throw InvalidInput(std::string(name) + " contains " + std::to_string(v) + where +
                               "; values must be within +-1e150 so that squared distances stay finite");
        }
    }
}

// The exact key that ranks neighbours: squared euclidean, L1, or cosine distance, in float64,
// features summed in order (the KD-tree's box bounds rely on the same order).
struct ExactMetric {
    Metric metric;
    int64_t d;
    double key(const double* a, const double* b, double na, double nb) const {
        if (metric == Metric::manhattan) {
            double s = 0.0;
            for (int64_t j = 0; j < d; ++j) s += std::fabs(a[j] - b[j]);
            return s;
        }
        if (metric == Metric::cosine) {
            // scikit-learn's convention: a zero row has similarity 0 (distance 1) with anything.
            if (na == 0.0 || nb == 0.0) return 1.0;
            double s = 0.0;
            for (int64_t j = 0; j < d; ++j) s += a[j] * b[j];
            return std::clamp(1.0 - s / (na * nb), 0.0, 2.0);
        }
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            const double t = a[j] - b[j];
            s += t * t;
        }
        return s;
    }
    double output(double key) const { return metric == Metric::euclidean ? std::sqrt(key) : key; }
    // key() for four rows of squared euclidean at once, each summed in the same order as key()
    // (bit-identical): one row's sum is a chain of dependent adds, four interleave.
    void sq_key4(const double* a, const double* const b[4], double out[4]) const {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            const double t0 = a[j] - b[0][j], t1 = a[j] - b[1][j], t2 = a[j] - b[2][j], t3 = a[j] - b[3][j];
            s0 += t0 * t0, s1 += t1 * t1, s2 += t2 * t2, s3 += t3 * t3;
        }
        out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
    }
};

double l2norm(const double* a, int64_t d) {
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) s += a[j] * a[j];
    return std::sqrt(s);
}

// Bounded max-heap of the k best (key, index) pairs of one query, kept in the output row.
struct TopK {
    double* key;
    int64_t* idx;
    int64_t k;
    int64_t m = 0;
    static bool less(double ka, int64_t ia, double kb, int64_t ib) { return ka < kb || (ka == kb && ia < ib); }
    double tau() const { return m < k ? std::numeric_limits<double>::infinity() : key[0]; }
    // Returns whether the heap changed.
    bool offer(double kv, int64_t iv) {
        if (m < k) {
            int64_t c = m++;
            while (c > 0) {
                const int64_t p = (c - 1) / 2;
                if (!less(key[p], idx[p], kv, iv)) break;
                key[c] = key[p], idx[c] = idx[p], c = p;
            }
            key[c] = kv, idx[c] = iv;
            return true;
        }
        if (!less(kv, iv, key[0], idx[0])) return false;
        int64_t c = 0;
        for (;;) {
            int64_t l = 2 * c + 1;
            if (l >= k) break;
            if (l + 1 < k && less(key[l], idx[l], key[l + 1], idx[l + 1])) ++l;
            if (!less(kv, iv, key[l], idx[l])) break;
            key[c] = key[l], idx[c] = idx[l], c = l;
        }
        key[c] = kv, idx[c] = iv;
        return true;
    }
    void finish(const ExactMetric& em) {
        std::vector<std::pair<double, int64_t>> v(m);
        for (int64_t i = 0; i < m; ++i) v[i] = {key[i], idx[i]};
        std::sort(v.begin(), v.end());
        for (int64_t i = 0; i < m; ++i) key[i] = em.output(v[i].first), idx[i] = v[i].second;
    }
};

constexpr int64_t kQueryBlock = 64;  // queries per chunk: the unit of threading and of Ctrl-C polling

}  // namespace
}  // namespace pynomaly
