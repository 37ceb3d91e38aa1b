// Exact k-nearest-neighbour search (knn_search): argument checks, the blocked brute-force driver
// (float32 screening with a proven error bound, exact float64 verification of the candidates),
// the KD-tree for low dimension, per-query top-k heaps and the threaded driver over query blocks.
//
// Why screening is exact: for every pair the float32 kernel computes s, and we bound the
// difference between s and the exact float64 key by E = C * (|x|^2 + |y|^2) + A (norms of the
// centred, power-of-two-scaled rows; for l1 the L1 norms). A row can only belong to the k
// nearest if s - E <= tau, the current k-th exact key; the bound is folded into per-row offsets
// and per-query thresholds so the kernel does one compare per pair. Every row that passes is
// then measured exactly in float64 and ranked by (key, index), so neighbour sets and distances
// are those of a direct float64 computation, whatever the SIMD target or the thread count.
#include "knn.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>
#include <chrono>
#include <cstdio>
#include <cstdlib>
static double TRACE_T(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
#define TRACE(msg) do { if (std::getenv("KNN_TRACE")) std::fprintf(stderr, "%s %.4f\n", msg, TRACE_T()); } while (0)

#include "knn_kernels.hpp"
#include "parallel.hpp"

namespace pynomaly {

Metric metric_from_name(const std::string& name) {
    if (name == "euclidean" || name == "l2") return Metric::euclidean;
    if (name == "sqeuclidean") return Metric::sqeuclidean;
    if (name == "manhattan" || name == "l1" || name == "cityblock") return Metric::manhattan;
    if (name == "cosine") return Metric::cosine;
    throw InvalidInput("unknown metric '" + name + "'; accepted: euclidean, sqeuclidean, manhattan, cosine");
}

KnnAlgorithm knn_algorithm_from_name(const std::string& name) {
    if (name == "auto") return KnnAlgorithm::automatic;
    if (name == "brute") return KnnAlgorithm::brute;
    if (name == "kd_tree") return KnnAlgorithm::kd_tree;
    throw InvalidInput("unknown algorithm '" + name + "'; accepted: auto, brute, kd_tree");
}

const char* knn_algorithm_name(KnnAlgorithm a) {
    switch (a) {
        case KnnAlgorithm::brute: return "brute";
        case KnnAlgorithm::kd_tree: return "kd_tree";
        default: return "auto";
    }
}

KnnAlgorithm choose_knn_algorithm(int64_t n, int64_t d, Metric metric) {
    // Crossovers measured at k = 20, one thread, Gaussian data (bench notes in RESULTS.md):
    // the KD-tree wins at d <= 3 from a few thousand rows and at d = 4 from ~20k rows
    // (n = 100k: 1.5 s vs 2.3 s); at d = 6 they tie, and at d = 8 the pruned, spatially
    // ordered brute force is 6x faster (3.6 s vs 22.7 s). Cosine has no tree.
    if (metric == Metric::cosine) return KnnAlgorithm::brute;
    if ((d <= 3 && n >= 2000) || (d == 4 && n >= 20000)) return KnnAlgorithm::kd_tree;
    return KnnAlgorithm::brute;
}

namespace {

// ---- shared pieces ------------------------------------------------------------------------

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

// ---- brute force with float32 screening ----------------------------------------------------

struct Screen {
    Metric metric;
    ScreenKind kind;
    int64_t d;
    std::vector<double> mean;  // subtracted before rounding to float32 (not for cosine)
    double scale = 1.0;        // power of two: scaled keys are exact multiples of true keys
    double key_scale = 1.0;    // screened value = key_scale * key (up to the bound)
    double C = 0.0, A = 0.0;   // the error bound's relative and absolute parts
    float alpha = 1.0f;

    // Row (in double) -> float32 screening coordinates; returns the norm used in the bound
    // (squared L2 or L1 of the rounded coordinates, computed in double).
    double transform(const double* row, float* out, int64_t stride) const {
        if (metric == Metric::cosine) {
            const double n = l2norm(row, d);
            const double inv = n > 0.0 ? 1.0 / n : 0.0;
            for (int64_t j = 0; j < d; ++j) out[j * stride] = static_cast<float>(row[j] * inv);
        } else {
            for (int64_t j = 0; j < d; ++j) out[j * stride] = static_cast<float>((row[j] - mean[j]) * scale);
        }
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            const double v = out[j * stride];
            s += kind == ScreenKind::dot ? v * v : std::fabs(v);
        }
        return s;
    }
    // Offset of a data row: the part of "s - E <= tau" that depends only on the row. In these
    // units a candidate's exact key lies within [s, s + 2C(nx + ny) + 2A], shifted per query.
    float offset(double ny) const {
        return kind == ScreenKind::dot ? static_cast<float>(ny * (1.0 - C)) : static_cast<float>(-C * ny);
    }
};

Screen make_screen(const MatrixView& data, const MatrixView* queries, Metric metric) {
    Screen s;
    s.metric = metric;
    s.d = data.cols;
    s.kind = metric == Metric::manhattan ? ScreenKind::l1 : ScreenKind::dot;
    s.alpha = s.kind == ScreenKind::dot ? -2.0f : 1.0f;
    const int64_t d = data.cols;
    std::vector<double> row(d);
    double rawmax = 0.0;
    if (metric != Metric::cosine) {
        s.mean.assign(d, 0.0);
        for (int64_t i = 0; i < data.rows; ++i) {
            read_row(data, i, row.data());
            for (int64_t j = 0; j < d; ++j) s.mean[j] += row[j];
        }
        for (double& m : s.mean) m /= static_cast<double>(data.rows);
        // Largest centred coordinate over data and queries: scale it to at most 1 by a power
        // of two, so float32 neither overflows nor loses the small rows to underflow.
        double amax = 0.0;
        auto scan = [&](const MatrixView& X) {
            for (int64_t i = 0; i < X.rows; ++i) {
                read_row(X, i, row.data());
                for (int64_t j = 0; j < d; ++j) {
                    amax = std::max(amax, std::fabs(row[j] - s.mean[j]));
                    rawmax = std::max(rawmax, std::fabs(row[j]) + std::fabs(s.mean[j]));
                }
            }
        };
        scan(data);
        if (queries) scan(*queries);
        if (amax > 0.0) s.scale = std::ldexp(1.0, -std::ilogb(amax) - 1);
        // Squared coordinates must stay within float32 after scaling: |x|^2 <= d.
        s.key_scale = s.kind == ScreenKind::dot ? s.scale * s.scale : s.scale;
    } else {
        s.key_scale = 2.0;  // |x/|x| - y/|y||^2 = 2 * cosine distance
    }
    // Rounding of inputs to float32 (2u relative per coordinate), of the d-term float32 sums
    // (gamma_d), of the norms, offsets and final fused compare: (d + 10) u suffices; we take 4x.
    const double u = std::ldexp(1.0, -24);
    s.C = (4.0 * static_cast<double>(d) + 40.0) * u;
    // Underflow to float32 subnormals costs at most 2^-149 per product; far below this.
    s.A = static_cast<double>(d + 1) * std::ldexp(1.0, -100);
    // Centring in float64 errs by up to 2^-53 of the raw magnitude per coordinate: negligible
    // unless the data sit far from the origin relative to their spread, where it dominates.
    if (metric != Metric::cosine) s.A += 8.0 * static_cast<double>(d) * std::ldexp(rawmax * s.scale, -52);
    return s;
}

double value_at(const MatrixView& X, int64_t r, int64_t c) {
    const int64_t o = r * X.row_stride + c * X.col_stride;
    return X.is_float32 ? static_cast<double>(X.ptr<float>()[o]) : X.ptr<double>()[o];
}

// A spatial order of the rows (median splits on the widest of a sample's coordinates, down to
// 32 rows): rows close in space end up close in the order. The brute force packs data and
// visits self-queries in this order and scans each query block's own region first, so every
// query's threshold is near its final value after the first data block, and almost nothing
// else passes the screen. It only changes speed: results are ranked by (key, original index).
// With `split_depth` > 0, stops that many levels down and appends the unsorted segments to
// `segments` instead of recursing (the caller sorts them in parallel).
void spatial_order(const MatrixView& X, int64_t begin, int64_t end, std::vector<int64_t>& order, int split_depth = 0,
                   std::vector<std::pair<int64_t, int64_t>>* segments = nullptr) {
    const int64_t len = end - begin;
    if (len <= 32) return;
    if (segments && split_depth == 0) {
        segments->push_back({begin, end});
        return;
    }
    const int64_t d = X.cols, step = std::max<int64_t>(len / 64, 1);
    int64_t dim = 0;
    double widest = -1.0;
    for (int64_t j = 0; j < d; ++j) {
        double lo = std::numeric_limits<double>::infinity(), hi = -lo;
        for (int64_t i = begin; i < end; i += step) {
            const double v = value_at(X, order[i], j);
            lo = std::min(lo, v), hi = std::max(hi, v);
        }
        if (hi - lo > widest) widest = hi - lo, dim = j;
    }
    const int64_t mid = begin + len / 2;
    std::nth_element(order.begin() + begin, order.begin() + mid, order.begin() + end, [&](int64_t a, int64_t b) {
        const double va = value_at(X, a, dim), vb = value_at(X, b, dim);
        return va < vb || (va == vb && a < b);
    });
    spatial_order(X, begin, mid, order, split_depth - 1, segments);
    spatial_order(X, mid, end, order, split_depth - 1, segments);
}

void brute_force(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric, int n_threads,
                 const CancelCheck& cancel, double* dist, int64_t* idx) {
    const int64_t n = data.rows, d = data.cols;
    const MatrixView& Q = queries ? *queries : data;
    const int64_t nq = Q.rows;
    TRACE("bf start");
    const Screen sc = make_screen(data, queries, metric);
    TRACE("screen");
    const ExactMetric em{metric, d};
    const ScreenKernel kernel = select_screen_kernel(active_simd(), sc.kind);

    // Data in float32 panels (the only O(n d) copy), with per-row offsets; padding rows get an
    // offset of +inf so they never pass a finite threshold.
    const int64_t n_panels = (n + kPanel - 1) / kPanel;
    std::vector<float> panels(static_cast<size_t>(n_panels * d * kPanel), 0.0f);
    std::vector<float> off(static_cast<size_t>(n_panels * kPanel), std::numeric_limits<float>::infinity());
    std::vector<double> dnorm(metric == Metric::cosine ? n : 0);
    std::vector<float> nyv(n);
    std::vector<int64_t> order(n);  // packed position -> original row
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    // A few queries (scoring a handful of new rows) cannot repay the O(n log n) sort.
    if (!queries || nq >= 256) {
        // The top three levels on this thread, then the eight subtrees on the threads: each
        // segment is sorted exactly as the serial recursion would, so the order (which only
        // affects speed anyway) does not depend on n_threads.
        std::vector<std::pair<int64_t, int64_t>> segments;
        spatial_order(data, 0, n, order, 3, &segments);
        parallel_chunks(static_cast<int64_t>(segments.size()), n_threads, cancel, [&](int64_t c) {
            spatial_order(data, segments[c].first, segments[c].second, order);
        });
    }
    TRACE("sorted");
    {
        std::vector<double> row(d);
        for (int64_t i = 0; i < n; ++i) {
            read_row(data, order[i], row.data());
            const int64_t p = i / kPanel, l = i % kPanel;
            const double ny = sc.transform(row.data(), panels.data() + p * d * kPanel + l, kPanel);
            off[i] = sc.offset(ny);
            nyv[i] = static_cast<float>(ny);
            if (metric == Metric::cosine) dnorm[order[i]] = l2norm(row.data(), d);
        }
    }
    // Bounding box (in screening coordinates) and largest norm of each panel: rows are in the
    // spatial order, so panels are compact and a whole panel can be skipped for a group of
    // queries when even its nearest corner cannot pass any of their thresholds. At low
    // dimension this prunes most panels (a KD-tree's effect without its pointer chasing); at
    // high dimension it costs one O(d) test per 8 x 32 tile.
    std::vector<float> plo(static_cast<size_t>(n_panels * d)), phi(static_cast<size_t>(n_panels * d));
    std::vector<float> pny(n_panels, 0.0f);
    for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t rows = std::min<int64_t>(kPanel, n - p * kPanel);
        for (int64_t f = 0; f < d; ++f) {
            const float* col = panels.data() + p * d * kPanel + f * kPanel;
            float lo = col[0], hi = col[0];
            for (int64_t l = 1; l < rows; ++l) lo = std::min(lo, col[l]), hi = std::max(hi, col[l]);
            plo[p * d + f] = lo, phi[p * d + f] = hi;
        }
        for (int64_t l = 0; l < rows; ++l) pny[p] = std::max(pny[p], nyv[p * kPanel + l]);
    }
    // The same per group of kGroupPanels panels, tested first so that far regions are skipped
    // a group at a time.
    TRACE("packed");
    constexpr int64_t kGroupPanels = 8;
    const int64_t n_super = (n_panels + kGroupPanels - 1) / kGroupPanels;
    std::vector<float> slo(static_cast<size_t>(n_super * d)), shi(static_cast<size_t>(n_super * d));
    std::vector<float> sny(n_super, 0.0f);
    for (int64_t sp = 0; sp < n_super; ++sp) {
        const int64_t p0 = sp * kGroupPanels, p1 = std::min(n_panels, p0 + kGroupPanels);
        for (int64_t f = 0; f < d; ++f) {
            float lo = plo[p0 * d + f], hi = phi[p0 * d + f];
            for (int64_t p = p0 + 1; p < p1; ++p) lo = std::min(lo, plo[p * d + f]), hi = std::max(hi, phi[p * d + f]);
            slo[sp * d + f] = lo, shi[sp * d + f] = hi;
        }
        for (int64_t p = p0; p < p1; ++p) sny[sp] = std::max(sny[sp], pny[p]);
    }
    // Data panels per block: keep a block within ~32 KiB so that it stays in L1 (48 KiB here)
    // with the query group while a query block sweeps it (8 groups per block). 128 KiB blocks
    // (L2) were ~7% slower at d = 32 (panel loads from L2 limit the kernel) and the same at
    // d = 8; a whole number of panel groups.
    const int64_t block_panels =
        std::clamp<int64_t>(32768 / (4 * kPanel * std::max<int64_t>(d, 1)), 8, 256) / kGroupPanels * kGroupPanels;
    const int64_t n_chunks = (nq + kQueryBlock - 1) / kQueryBlock;
    const int64_t n_blocks = (n_panels + block_panels - 1) / block_panels;

    // Every candidate's upper bound in the kernel's units: s + c2 * (nx + ny) + a2 (see
    // Screen). A little over 2C and 2A so that evaluating it in float32 stays an upper bound.
    const float c2 = static_cast<float>(2.5 * sc.C), a2 = static_cast<float>(2.5 * sc.A) + FLT_MIN;

    TRACE("boxes");
    parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
        const int64_t q0 = chunk * kQueryBlock;
        const int64_t qn = std::min(kQueryBlock, nq - q0);
        const int64_t groups = (qn + kRows - 1) / kRows;
        std::vector<float> xq(static_cast<size_t>(groups * kRows * d), 0.0f);
        std::vector<double> xd(static_cast<size_t>(qn * d)), qnorm(qn);
        std::vector<float> nx(qn);
        // Padding rows get -inf: they never pass.
        std::vector<float> thr(static_cast<size_t>(groups * kRows), -std::numeric_limits<float>::infinity());
        // Per query: the candidates that passed the screen, with their bounds. The threshold is
        // refreshed lazily: when a list reaches its capacity, the k-th smallest upper bound
        // becomes the threshold and everything whose lower bound is above it is dropped. A
        // push per candidate keeps the hot path short; capacity doubles when ties keep a list
        // full, so duplicates cost O(m log m), never O(m^2).
        struct Cand {
            float s, su;
            int64_t pos;
        };
        std::vector<std::vector<Cand>> cand(qn);
        // Self-queries go in the spatial order; qrow[i] is the query's row (in Q and the output).
        std::vector<int64_t> qrow(qn);
        for (int64_t i = 0; i < qn; ++i) qrow[i] = queries ? q0 + i : order[q0 + i];
        std::vector<size_t> cap(qn, static_cast<size_t>(2 * k + 32));
        // A self-query's neighbours in the spatial order are near it: the k-th smallest upper
        // bound among 2k of them is a threshold close to the final one before the scan starts.
        // They are not candidates yet (the scan will meet them again).
        std::vector<float> seed_su;
        auto seed_threshold = [&](int64_t pos, const float* x, float nxq) {
            const int64_t lo = std::max<int64_t>(0, std::min(pos - k, n - 2 * k - 1));
            seed_su.clear();
            for (int64_t j = lo; j < lo + 2 * k + 1; ++j) {
                if (j == pos) continue;
                const float* col = panels.data() + (j / kPanel) * d * kPanel + (j % kPanel);
                float acc = 0.0f;
                if (sc.kind == ScreenKind::dot)
                    for (int64_t f = 0; f < d; ++f) acc += x[f] * col[f * kPanel];
                else
                    for (int64_t f = 0; f < d; ++f) acc += std::fabs(x[f] - col[f * kPanel]);
                const float sv = sc.alpha * acc + off[j];
                seed_su.push_back(sv + c2 * (nxq + nyv[j]) + a2);
            }
            std::nth_element(seed_su.begin(), seed_su.begin() + (k - 1), seed_su.end());
            return seed_su[k - 1];
        };
        auto prune = [&](int64_t qi) {
            auto& c = cand[qi];
            std::nth_element(c.begin(), c.begin() + (k - 1), c.end(),
                             [](const Cand& x, const Cand& y) { return x.su < y.su; });
            const float t = c[k - 1].su;
            c.erase(std::remove_if(c.begin(), c.end(), [t](const Cand& e) { return e.s > t; }), c.end());
            if (c.size() * 2 > cap[qi]) cap[qi] *= 2;
            return t;
        };
        for (int64_t i = 0; i < qn; ++i) {
            double* row = xd.data() + i * d;
            read_row(Q, qrow[i], row);
            nx[i] = static_cast<float>(sc.transform(row, xq.data() + i * d, 1));
            qnorm[i] = metric == Metric::cosine ? l2norm(row, d) : 0.0;
            thr[i] = std::numeric_limits<float>::infinity();
            cand[i].reserve(cap[i]);
            if (!queries) thr[i] = seed_threshold(q0 + i, xq.data() + i * d, nx[i]);
        }
        uint32_t masks[kRows];
        alignas(64) float tile[kRows * kPanel];
        // Each group's box and largest norm, for the panel test.
        std::vector<float> glo(static_cast<size_t>(groups * d)), ghi(static_cast<size_t>(groups * d));
        std::vector<double> gnx(groups, 0.0);
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t rows = std::min<int64_t>(kRows, qn - g * kRows);
            for (int64_t f = 0; f < d; ++f) {
                float lo = xq[g * kRows * d + f], hi = lo;
                for (int64_t r = 1; r < rows; ++r) {
                    const float v = xq[(g * kRows + r) * d + f];
                    lo = std::min(lo, v), hi = std::max(hi, v);
                }
                glo[g * d + f] = lo, ghi[g * d + f] = hi;
            }
            for (int64_t r = 0; r < rows; ++r) gnx[g] = std::max(gnx[g], static_cast<double>(nx[g * kRows + r]));
        }
        const bool l1 = sc.kind == ScreenKind::l1;
        bool use_bounds = true;
        int64_t tests = 0, pruned = 0;
        // Lower bound of s over a panel for a group: the boxes' distance, less the error bound
        // and the shift in s (see Screen). Summed in float32 (vectorizable), then shaded down
        // by more than that sum's relative rounding error.
        const double shade = 1.0 - static_cast<double>(d + 8) * std::ldexp(1.0, -23);
        auto box_bound = [&](int64_t g, const float* c, const float* e, float nyf) {
            const float* a = glo.data() + g * d;
            const float* b = ghi.data() + g * d;
            float lb = 0.0f;
            for (int64_t f = 0; f < d; ++f) {
                const float gap = std::max(0.0f, std::max(c[f] - b[f], a[f] - e[f]));
                lb += l1 ? gap : gap * gap;
            }
            const double lbd = static_cast<double>(lb) * shade;
            const double ny = nyf;
            return l1 ? lbd - sc.C * (gnx[g] + 2.0 * ny) - sc.A : lbd - gnx[g] * (1.0 + sc.C) - 2.0 * sc.C * ny - sc.A;
        };
        // Start with the data block holding the queries themselves (self-join), then wrap.
        const int64_t first_block = queries ? 0 : (q0 / kPanel) / block_panels;
        for (int64_t bi = 0; bi < n_blocks; ++bi) {
            const int64_t b0 = ((first_block + bi) % n_blocks) * block_panels;
            const int64_t b1 = std::min(n_panels, b0 + block_panels);
            for (int64_t g = 0; g < groups; ++g) {
                const float* xg = xq.data() + g * kRows * d;
                float* tg = thr.data() + g * kRows;
                for (int64_t p = b0; p < b1; ++p) {
                    if (use_bounds) {
                        float tmax = tg[0];
                        for (int r = 1; r < kRows; ++r) tmax = std::max(tmax, tg[r]);
                        if (p % kGroupPanels == 0) {
                            const int64_t sp = p / kGroupPanels;
                            if (box_bound(g, slo.data() + sp * d, shi.data() + sp * d, sny[sp]) >
                                static_cast<double>(tmax)) {
                                p += kGroupPanels - 1;
                                continue;
                            }
                        }
                        ++tests;
                        if (box_bound(g, plo.data() + p * d, phi.data() + p * d, pny[p]) > static_cast<double>(tmax)) {
                            ++pruned;
                            continue;
                        }
                        // Data without structure at this scale (e.g. Gaussian, d >= 8): the
                        // boxes overlap everywhere, so stop paying for the test in this chunk.
                        if (tests == 4096 && pruned * 64 < tests) use_bounds = false;
                    }
                    if (!kernel(xg, d, panels.data() + p * d * kPanel, off.data() + p * kPanel, sc.alpha, tg, masks,
                                tile))
                        continue;
                    for (int r = 0; r < kRows; ++r) {
                        uint32_t m = masks[r];
                        const int64_t qi = g * kRows + r;
                        while (m) {
                            const int l = __builtin_ctz(m);
                            m &= m - 1;
                            const int64_t j = p * kPanel + l;  // packed position
                            if (j >= n || (!queries && j == q0 + qi)) continue;
                            const float sv = tile[r * kPanel + l];
                            if (!(sv <= tg[r])) continue;  // the threshold fell earlier in this tile
                            auto& c = cand[qi];
                            c.push_back({sv, sv + c2 * (nx[qi] + nyv[j]) + a2, j});
                            if (c.size() >= cap[qi]) tg[r] = prune(qi);
                        }
                    }
                }
            }
        }
        // Exact verification. The candidates' rows are scattered over the input, so each one is
        // a cache miss: the rows of query i + 1 are prefetched while query i is verified, and
        // float64 rows with unit column stride are read in place instead of copied.
        for (int64_t i = 0; i < qn; ++i) prune(i);
        const bool in_place = !data.is_float32 && data.col_stride == 1;
        const int64_t item = data.is_float32 ? 4 : 8;
        const char* base = static_cast<const char*>(data.data);
        auto prefetch_rows = [&](int64_t i) {
            for (const Cand& e : cand[i]) {
                const char* r = base + order[e.pos] * data.row_stride * item;
                const int64_t bytes = ((d - 1) * data.col_stride + 1) * item;
                for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b);
            }
        };
        if (qn > 0) prefetch_rows(0);
        std::vector<double> yrow(d);
        const bool by_four = in_place && (metric == Metric::euclidean || metric == Metric::sqeuclidean);
        for (int64_t i = 0; i < qn; ++i) {
            if (i + 1 < qn) prefetch_rows(i + 1);
            TopK heap{dist + qrow[i] * k, idx + qrow[i] * k, k};
            size_t c0 = 0;
            if (by_four) {
                // The heap's result is the k smallest (key, index) pairs whatever the order of
                // the offers, so grouping them changes nothing.
                const double* rows[4];
                double keys[4];
                for (; c0 + 4 <= cand[i].size(); c0 += 4) {
                    for (int u = 0; u < 4; ++u) rows[u] = data.ptr<double>() + order[cand[i][c0 + u].pos] * data.row_stride;
                    em.sq_key4(xd.data() + i * d, rows, keys);
                    for (int u = 0; u < 4; ++u) heap.offer(keys[u], order[cand[i][c0 + u].pos]);
                }
            }
            for (size_t c = c0; c < cand[i].size(); ++c) {
                const Cand& e = cand[i][c];
                const int64_t j = order[e.pos];
                const double* y = yrow.data();
                if (in_place)
                    y = data.ptr<double>() + j * data.row_stride;
                else
                    read_row(data, j, yrow.data());
                heap.offer(em.key(xd.data() + i * d, y, qnorm[i], metric == Metric::cosine ? dnorm[j] : 0.0), j);
            }
            heap.finish(em);
        }
    });
}

// ---- KD-tree ---------------------------------------------------------------------------------

struct KdTree {
    int64_t n = 0, d = 0;
    std::vector<double> pts;     // rows in tree order (float64 copy: exact for both input types)
    std::vector<int64_t> order;  // tree position -> original row
    struct Node {
        int64_t begin, end, left, right;  // left/right < 0 for a leaf
    };
    std::vector<Node> nodes;
    std::vector<double> lo, hi;  // bounding box of each node, d values each

    static constexpr int64_t kLeaf = 24;

    KdTree(const MatrixView& X) : n(X.rows), d(X.cols) {
        std::vector<double> all(static_cast<size_t>(n * d));
        for (int64_t i = 0; i < n; ++i) read_row(X, i, all.data() + i * d);
        order.resize(n);
        for (int64_t i = 0; i < n; ++i) order[i] = i;
        nodes.reserve(static_cast<size_t>(2 * (n / kLeaf + 1)));
        build(all, 0, n);
        pts.resize(static_cast<size_t>(n * d));
        for (int64_t i = 0; i < n; ++i) std::copy_n(all.data() + order[i] * d, d, pts.data() + i * d);
    }

    int64_t build(const std::vector<double>& all, int64_t begin, int64_t end) {
        const int64_t id = static_cast<int64_t>(nodes.size());
        nodes.push_back({begin, end, -1, -1});
        lo.resize(static_cast<size_t>((id + 1) * d));
        hi.resize(static_cast<size_t>((id + 1) * d));
        double* l = lo.data() + id * d;
        double* h = hi.data() + id * d;
        std::fill_n(l, d, std::numeric_limits<double>::infinity());
        std::fill_n(h, d, -std::numeric_limits<double>::infinity());
        for (int64_t i = begin; i < end; ++i) {
            const double* p = all.data() + order[i] * d;
            for (int64_t j = 0; j < d; ++j) l[j] = std::min(l[j], p[j]), h[j] = std::max(h[j], p[j]);
        }
        if (end - begin <= kLeaf) return id;
        int64_t dim = 0;
        double spread = -1.0;
        for (int64_t j = 0; j < d; ++j)
            if (h[j] - l[j] > spread) spread = h[j] - l[j], dim = j;
        if (spread <= 0.0) return id;  // all rows identical: one (large) leaf
        const int64_t mid = begin + (end - begin) / 2;
        // Ties by original index make the tree, hence nothing else, depend on sort internals.
        std::nth_element(order.begin() + begin, order.begin() + mid, order.begin() + end, [&](int64_t a, int64_t b) {
            const double va = all[a * d + dim], vb = all[b * d + dim];
            return va < vb || (va == vb && a < b);
        });
        const int64_t left = build(all, begin, mid);
        const int64_t right = build(all, mid, end);
        nodes[id].left = left;
        nodes[id].right = right;
        return id;
    }

    double box_key(int64_t node, const double* x, Metric metric) const {
        const double* l = lo.data() + node * d;
        const double* h = hi.data() + node * d;
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) {
            const double t = x[j] < l[j] ? l[j] - x[j] : (x[j] > h[j] ? x[j] - h[j] : 0.0);
            s += metric == Metric::manhattan ? t : t * t;
        }
        return s;
    }

    // Depth-first, nearer child first; a subtree is skipped only when its box is strictly
    // farther than the k-th key, so ties with a lower index are still found.
    void search(int64_t node, double node_key, const double* x, int64_t self, const ExactMetric& em,
                TopK& heap) const {
        if (node_key > heap.tau()) return;
        const Node& nd = nodes[node];
        if (nd.left < 0) {
            for (int64_t i = nd.begin; i < nd.end; ++i) {
                const int64_t o = order[i];
                if (o == self) continue;
                heap.offer(em.key(x, pts.data() + i * d, 0.0, 0.0), o);
            }
            return;
        }
        const double kl = box_key(nd.left, x, em.metric), kr = box_key(nd.right, x, em.metric);
        if (kl <= kr) {
            search(nd.left, kl, x, self, em, heap);
            search(nd.right, kr, x, self, em, heap);
        } else {
            search(nd.right, kr, x, self, em, heap);
            search(nd.left, kl, x, self, em, heap);
        }
    }
};

void kd_tree_search(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric, int n_threads,
                    const CancelCheck& cancel, double* dist, int64_t* idx) {
    const KdTree tree(data);
    const ExactMetric em{metric, data.cols};
    const int64_t d = data.cols;
    const int64_t nq = queries ? queries->rows : data.rows;
    const int64_t n_chunks = (nq + kQueryBlock - 1) / kQueryBlock;
    parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
        const int64_t q0 = chunk * kQueryBlock, q1 = std::min(nq, q0 + kQueryBlock);
        std::vector<double> x(d);
        for (int64_t t = q0; t < q1; ++t) {
            // Self-queries go in tree order: neighbouring queries share the paths they visit.
            const int64_t qi = queries ? t : tree.order[t];
            const double* xp;
            if (queries) {
                read_row(*queries, qi, x.data());
                xp = x.data();
            } else {
                xp = tree.pts.data() + t * d;
            }
            TopK heap{dist + qi * k, idx + qi * k, k};
            tree.search(0, tree.box_key(0, xp, metric), xp, queries ? -1 : qi, em, heap);
            heap.finish(em);
        }
    });
}

}  // namespace

KnnAlgorithm knn_search(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric,
                        KnnAlgorithm algorithm, int n_threads, const CancelCheck& cancel, double* dist,
                        int64_t* idx) {
    const int64_t n = data.rows;
    if (n < 1 || data.cols < 1) throw InvalidInput("X must have at least one row and one feature");
    if (queries && queries->cols != data.cols)
        throw InvalidInput("Y has " + std::to_string(queries->cols) + " features but X has " +
                           std::to_string(data.cols) + "; both must have the same number of features");
    const int64_t available = queries ? n : n - 1;
    if (k < 1) throw InvalidInput("k (n_neighbors) must be at least 1, got " + std::to_string(k));
    if (k > available)
        throw InvalidInput("k (n_neighbors) = " + std::to_string(k) + " but only " + std::to_string(available) +
                           (queries ? " rows are" : " other rows are") +
                           " available as neighbours; k must be at most " + std::to_string(available));
    TRACE("start");
    check_finite(data, "X");
    TRACE("finite");
    if (queries) check_finite(*queries, "Y");
    if (algorithm == KnnAlgorithm::automatic) algorithm = choose_knn_algorithm(n, data.cols, metric);
    if (algorithm == KnnAlgorithm::kd_tree && metric == Metric::cosine)
        throw InvalidInput("algorithm 'kd_tree' does not support the cosine metric; use 'brute' or 'auto'");
    if (algorithm == KnnAlgorithm::kd_tree)
        kd_tree_search(data, queries, k, metric, n_threads, cancel, dist, idx);
    else
        brute_force(data, queries, k, metric, n_threads, cancel, dist, idx);
    TRACE("done");
    return algorithm;
}

}  // namespace pynomaly
