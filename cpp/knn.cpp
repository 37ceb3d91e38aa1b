// Exact k-nearest-neighbour search (knn_search): argument checks, the blocked brute-force driver
// (float32 screening with a proven error bound, exact float64 verification of the candidates),
// the KD-tree for low dimension, per-query top-k heaps and the threaded driver over query blocks.
// The self-join (queries = data, LOF's fit) screens each float32 tile both ways, so it does about
// half the FMAs of the query scan (self_join_scan).
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
#include <condition_variable>
#include <limits>
#include <mutex>
#include <tuple>
#include <vector>

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
    // A screened pair's upper bound in the same units: s + c2 * (nx + ny) + a2, with c2 and a2 a
    // little over 2C and 2A so that evaluating it in float32 stays an upper bound. Symmetric in
    // the two rows, so it also bounds the transposed pairs of a self-join.
    //
    // Cosine's zero rows are the exception: a zero row is at distance 1 from every row
    // (scikit-learn's convention), i.e. 2 in these units, while its screening coordinates are 0
    // and the screen sees |0 - y|^2 = |y|^2 (at most 1). s stays a lower bound (1 or 0 below
    // 2), but s plus the margin does not bound the key from above; 2 does, less the query's norm
    // (the shift), so any pair with a zero norm gets 2 plus the margin.
    float c2 = 0.0f, a2 = 0.0f;
    float upper(float s, float nx, float ny) const {
        if (metric == Metric::cosine && (nx == 0.0f || ny == 0.0f)) s = 2.0f;
        return s + c2 * (nx + ny) + a2;
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
        // At most 2^511, so that scale^2 (key_scale) stays finite: data whose coordinates are
        // all below ~1e-154 (subnormals, found by fuzzing) made it infinite, every screened
        // value NaN and the heaps short of k, and the search returned indices past the data.
        if (amax > 0.0) s.scale = std::ldexp(1.0, std::min(-std::ilogb(amax) - 1, 511));
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
    // Scaled coordinates are within [-1, 1], so no key nor screened value exceeds 4d in size: a
    // bound past that says only "anything may pass", and stays one when capped. Uncapped, rows
    // far from the origin next to no spread (e.g. all equal to 1e78) made it infinite in
    // float32, no seed entered a heap, and the self-join verified the index -1 (found by fuzzing).
    s.A = std::min(s.A, 4.0 * static_cast<double>(d) + 4.0);
    s.c2 = static_cast<float>(2.5 * s.C), s.a2 = static_cast<float>(2.5 * s.A) + FLT_MIN;
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

// The data rows in float32 panels (the only O(n d) copy of the data), in a spatial order when it
// pays, with what every scan reads: per-row offsets and norms, and the bounding boxes (in
// screening coordinates) and largest norms of each panel and each group of kGroupPanels panels.
constexpr int64_t kGroupPanels = 8;

struct Packed {
    int64_t n = 0, d = 0, n_panels = 0;
    std::vector<float> panels;   // panel p: d x kPanel floats, feature-major
    std::vector<float> off;      // per packed row; +inf for padding rows, which never pass
    std::vector<float> nyv;      // per packed row: its norm in the error bound
    std::vector<double> dnorm;   // cosine only: L2 norm per original row
    std::vector<int64_t> order;  // packed position -> original row
    std::vector<float> plo, phi, pny, slo, shi, sny;
    int64_t block_panels = 0;    // data panels per block of a scan (whole panel groups)
    const float* panel(int64_t p) const { return panels.data() + p * d * kPanel; }
    float coord(int64_t pos, int64_t f) const { return panels[(pos / kPanel) * d * kPanel + f * kPanel + pos % kPanel]; }
};

// A self-query's seed window: the 2k + 1 packed positions around pos (shifted at the ends;
// fewer when n <= 2k), which are near it in the spatial order.
int64_t seed_window_lo(int64_t pos, int64_t n, int64_t k) { return std::max<int64_t>(0, std::min(pos - k, n - 2 * k - 1)); }

// The screened value of one pair, in scalar float32 (the seeds): query coordinates x in screen
// units against packed row j; covered by the same error bound as the kernels' value.
float screened_pair(const Screen& sc, const Packed& pk, const float* x, int64_t j) {
    float acc = 0.0f;
    if (sc.kind == ScreenKind::dot)
        for (int64_t f = 0; f < sc.d; ++f) acc += x[f] * pk.coord(j, f);
    else
        for (int64_t f = 0; f < sc.d; ++f) acc += std::fabs(x[f] - pk.coord(j, f));
    return sc.alpha * acc + pk.off[j];
}

Packed pack_rows(const MatrixView& data, bool sort, const Screen& sc, Metric metric, int n_threads,
                 const CancelCheck& cancel) {
    Packed pk;
    const int64_t n = data.rows, d = data.cols;
    pk.n = n, pk.d = d, pk.n_panels = (n + kPanel - 1) / kPanel;
    const int64_t n_panels = pk.n_panels;
    pk.panels.assign(static_cast<size_t>(n_panels * d * kPanel), 0.0f);
    pk.off.assign(static_cast<size_t>(n_panels * kPanel), std::numeric_limits<float>::infinity());
    pk.dnorm.resize(metric == Metric::cosine ? n : 0);
    pk.nyv.assign(static_cast<size_t>(n_panels * kPanel), 0.0f);
    pk.order.resize(n);
    for (int64_t i = 0; i < n; ++i) pk.order[i] = i;
    if (sort) {
        // The top three levels on this thread, then the eight subtrees on the threads: each
        // segment is sorted exactly as the serial recursion would, so the order (which only
        // affects speed anyway) does not depend on n_threads.
        std::vector<std::pair<int64_t, int64_t>> segments;
        spatial_order(data, 0, n, pk.order, 3, &segments);
        parallel_chunks(static_cast<int64_t>(segments.size()), n_threads, cancel, [&](int64_t c) {
            spatial_order(data, segments[c].first, segments[c].second, pk.order);
        });
    }
    {
        std::vector<double> row(d);
        for (int64_t i = 0; i < n; ++i) {
            read_row(data, pk.order[i], row.data());
            const int64_t p = i / kPanel, l = i % kPanel;
            const double ny = sc.transform(row.data(), pk.panels.data() + p * d * kPanel + l, kPanel);
            pk.off[i] = sc.offset(ny);
            pk.nyv[i] = static_cast<float>(ny);
            if (metric == Metric::cosine) pk.dnorm[pk.order[i]] = l2norm(row.data(), d);
        }
    }
    // Rows are in the spatial order, so panels are compact and a whole panel can be skipped for
    // a group of queries when even its nearest corner cannot pass any of their thresholds. At
    // low dimension this prunes most panels (a KD-tree's effect without its pointer chasing); at
    // high dimension it costs one O(d) test per 8 x 32 tile.
    pk.plo.resize(static_cast<size_t>(n_panels * d)), pk.phi.resize(static_cast<size_t>(n_panels * d));
    pk.pny.assign(n_panels, 0.0f);
    for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t rows = std::min<int64_t>(kPanel, n - p * kPanel);
        for (int64_t f = 0; f < d; ++f) {
            const float* col = pk.panel(p) + f * kPanel;
            float lo = col[0], hi = col[0];
            for (int64_t l = 1; l < rows; ++l) lo = std::min(lo, col[l]), hi = std::max(hi, col[l]);
            pk.plo[p * d + f] = lo, pk.phi[p * d + f] = hi;
        }
        for (int64_t l = 0; l < rows; ++l) pk.pny[p] = std::max(pk.pny[p], pk.nyv[p * kPanel + l]);
    }
    // The same per group of kGroupPanels panels, tested first so that far regions are skipped
    // a group at a time.
    const int64_t n_super = (n_panels + kGroupPanels - 1) / kGroupPanels;
    pk.slo.resize(static_cast<size_t>(n_super * d)), pk.shi.resize(static_cast<size_t>(n_super * d));
    pk.sny.assign(n_super, 0.0f);
    for (int64_t sp = 0; sp < n_super; ++sp) {
        const int64_t p0 = sp * kGroupPanels, p1 = std::min(n_panels, p0 + kGroupPanels);
        for (int64_t f = 0; f < d; ++f) {
            float lo = pk.plo[p0 * d + f], hi = pk.phi[p0 * d + f];
            for (int64_t p = p0 + 1; p < p1; ++p) lo = std::min(lo, pk.plo[p * d + f]), hi = std::max(hi, pk.phi[p * d + f]);
            pk.slo[sp * d + f] = lo, pk.shi[sp * d + f] = hi;
        }
        for (int64_t p = p0; p < p1; ++p) pk.sny[sp] = std::max(pk.sny[sp], pk.pny[p]);
    }
    // Data panels per block: keep a block within ~32 KiB so that it stays in L1 (48 KiB here)
    // with the query group while a query block sweeps it (8 groups per block). 128 KiB blocks
    // (L2) were ~7% slower at d = 32 (panel loads from L2 limit the kernel) and the same at
    // d = 8; a whole number of panel groups.
    pk.block_panels =
        std::clamp<int64_t>(32768 / (4 * kPanel * std::max<int64_t>(d, 1)), 8, 256) / kGroupPanels * kGroupPanels;
    return pk;
}

// Bounding box and largest norm of each group of kRows rows: at(i, f) is feature f of row i
// (qn rows), nxq[i] its norm.
struct GroupBoxes {
    std::vector<float> lo, hi;
    std::vector<double> nx;
    template <class At>
    GroupBoxes(At at, const float* nxq, int64_t qn, int64_t d) {
        const int64_t groups = (qn + kRows - 1) / kRows;
        lo.resize(static_cast<size_t>(groups * d)), hi.resize(static_cast<size_t>(groups * d)), nx.assign(groups, 0.0);
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t rows = std::min<int64_t>(kRows, qn - g * kRows);
            for (int64_t f = 0; f < d; ++f) {
                float l = at(g * kRows, f), h = l;
                for (int64_t r = 1; r < rows; ++r) {
                    const float v = at(g * kRows + r, f);
                    l = std::min(l, v), h = std::max(h, v);
                }
                lo[g * d + f] = l, hi[g * d + f] = h;
            }
            for (int64_t r = 0; r < rows; ++r) nx[g] = std::max(nx[g], static_cast<double>(nxq[g * kRows + r]));
        }
    }
};

// Lower bound of the screened value s over a tile: the distance between the queries' box
// [a, b] and the rows' box [c, e], less the error bound and the shift in s (see Screen); nq and
// ny are the largest norms of the queries and the rows. The box distance is symmetric, so with
// nq and ny swapped it bounds the transposed values of a self-join tile. Summed in float32
// (vectorizable), then shaded down by more than that sum's relative rounding error.
struct TileBound {
    const Screen& sc;
    int64_t d;
    double shade;
    TileBound(const Screen& s, int64_t dim) : sc(s), d(dim), shade(1.0 - static_cast<double>(dim + 8) * std::ldexp(1.0, -23)) {}
    double box(const float* a, const float* b, const float* c, const float* e) const {
        const bool l1 = sc.kind == ScreenKind::l1;
        float lb = 0.0f;
        for (int64_t f = 0; f < d; ++f) {
            const float gap = std::max(0.0f, std::max(c[f] - b[f], a[f] - e[f]));
            lb += l1 ? gap : gap * gap;
        }
        return static_cast<double>(lb) * shade;
    }
    double lower(double lbd, double nq, double ny) const {
        return sc.kind == ScreenKind::l1 ? lbd - sc.C * (nq + 2.0 * ny) - sc.A
                                         : lbd - nq * (1.0 + sc.C) - 2.0 * sc.C * ny - sc.A;
    }
};

// Exact verification of one query's candidates (packed positions) into its heap, in float64.
// The candidates' rows are scattered over the input, so each one is a cache miss: the caller
// prefetches the next query's rows (prefetch_rows) while this one is verified, and float64 rows
// with unit column stride are read in place instead of copied.
template <class Cands>
void prefetch_rows(const MatrixView& data, const Packed& pk, const Cands& cand) {
    const int64_t item = data.is_float32 ? 4 : 8;
    const char* base = static_cast<const char*>(data.data);
    const int64_t bytes = ((data.cols - 1) * data.col_stride + 1) * item;
    for (const auto& e : cand) {
        const char* r = base + pk.order[e.pos] * data.row_stride * item;
        for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b);
    }
}

template <class Cands>
void verify_candidates(const MatrixView& data, const Packed& pk, const ExactMetric& em, const double* x, double xnorm,
                       const Cands& cand, TopK& heap, std::vector<double>& yrow) {
    const int64_t d = data.cols;
    const bool in_place = !data.is_float32 && data.col_stride == 1;
    const bool by_four = in_place && (em.metric == Metric::euclidean || em.metric == Metric::sqeuclidean);
    size_t c0 = 0;
    if (by_four) {
        // The heap's result is the k smallest (key, index) pairs whatever the order of the
        // offers, so grouping them changes nothing.
        const double* rows[4];
        double keys[4];
        for (; c0 + 4 <= cand.size(); c0 += 4) {
            for (int u = 0; u < 4; ++u) rows[u] = data.ptr<double>() + pk.order[cand[c0 + u].pos] * data.row_stride;
            em.sq_key4(x, rows, keys);
            for (int u = 0; u < 4; ++u) heap.offer(keys[u], pk.order[cand[c0 + u].pos]);
        }
    }
    yrow.resize(d);
    for (size_t c = c0; c < cand.size(); ++c) {
        const int64_t j = pk.order[cand[c].pos];
        const double* y = yrow.data();
        if (in_place)
            y = data.ptr<double>() + j * data.row_stride;
        else
            read_row(data, j, yrow.data());
        heap.offer(em.key(x, y, xnorm, em.metric == Metric::cosine ? pk.dnorm[j] : 0.0), j);
    }
    heap.finish(em);
}

// One-way scan: OpenMP over blocks of kQueryBlock queries, each swept over every data block,
// candidates kept per query of the block and verified at its end. With `self` the queries are
// the data rows (Q is data), taken in the packed order, each excluded from its own neighbours:
// the self-join for large k (see brute_force).
void query_scan(const MatrixView& data, const MatrixView& Q, bool self, int64_t k, const Screen& sc,
                const ExactMetric& em, const Packed& pk, int n_threads, const CancelCheck& cancel, double* dist,
                int64_t* idx) {
    const int64_t n = pk.n, d = pk.d, nq = Q.rows, n_panels = pk.n_panels;
    const Metric metric = sc.metric;
    const ScreenKernel kernel = select_screen_kernel(active_simd(), sc.kind);
    const TileBound bound(sc, d);
    const int64_t n_chunks = (nq + kQueryBlock - 1) / kQueryBlock;
    const int64_t n_blocks = (n_panels + pk.block_panels - 1) / pk.block_panels;
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
        // Self-queries go in the packed (spatial) order; qrow[i] is the query's row (in Q and the output).
        std::vector<int64_t> qrow(qn);
        for (int64_t i = 0; i < qn; ++i) qrow[i] = self ? pk.order[q0 + i] : q0 + i;
        std::vector<size_t> cap(qn, static_cast<size_t>(2 * k + 32));
        // A self-query's neighbours in the spatial order are near it: the k-th smallest upper
        // bound among 2k of them (fewer when n <= 2k) is a threshold close to the final one
        // before the scan starts. They are not candidates yet (the scan will meet them again).
        std::vector<float> seed_su;
        auto seed_threshold = [&](int64_t pos, const float* x, float nxq) {
            const int64_t lo = seed_window_lo(pos, n, k), hi = std::min(n, lo + 2 * k + 1);
            seed_su.clear();
            for (int64_t j = lo; j < hi; ++j)
                if (j != pos) seed_su.push_back(sc.upper(screened_pair(sc, pk, x, j), nxq, pk.nyv[j]));
            std::nth_element(seed_su.begin(), seed_su.begin() + (k - 1), seed_su.end());  // k <= n - 1 offered
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
            thr[i] = self ? seed_threshold(q0 + i, xq.data() + i * d, nx[i]) : std::numeric_limits<float>::infinity();
            cand[i].reserve(cap[i]);
        }
        uint32_t masks[kRows];
        alignas(64) float tile[kRows * kPanel];
        const GroupBoxes gb([&](int64_t i, int64_t f) { return xq[i * d + f]; }, nx.data(), qn, d);
        bool use_bounds = true;
        int64_t tests = 0, pruned = 0;
        // Start with the data block holding the queries themselves (self-join), then wrap.
        const int64_t first_block = self ? (q0 / kPanel) / pk.block_panels : 0;
        for (int64_t bi = 0; bi < n_blocks; ++bi) {
            const int64_t b0 = ((first_block + bi) % n_blocks) * pk.block_panels;
            const int64_t b1 = std::min(n_panels, b0 + pk.block_panels);
            for (int64_t g = 0; g < groups; ++g) {
                const float* xg = xq.data() + g * kRows * d;
                float* tg = thr.data() + g * kRows;
                const float* ga = gb.lo.data() + g * d;
                const float* gh = gb.hi.data() + g * d;
                for (int64_t p = b0; p < b1; ++p) {
                    if (use_bounds) {
                        float tmax = tg[0];
                        for (int r = 1; r < kRows; ++r) tmax = std::max(tmax, tg[r]);
                        if (p % kGroupPanels == 0) {
                            const int64_t sp = p / kGroupPanels;
                            const double lb = bound.box(ga, gh, pk.slo.data() + sp * d, pk.shi.data() + sp * d);
                            if (bound.lower(lb, gb.nx[g], pk.sny[sp]) > static_cast<double>(tmax)) {
                                p += kGroupPanels - 1;
                                continue;
                            }
                        }
                        ++tests;
                        const double lb = bound.box(ga, gh, pk.plo.data() + p * d, pk.phi.data() + p * d);
                        if (bound.lower(lb, gb.nx[g], pk.pny[p]) > static_cast<double>(tmax)) {
                            ++pruned;
                            continue;
                        }
                        // Data without structure at this scale (e.g. Gaussian, d >= 8): the
                        // boxes overlap everywhere, so stop paying for the test in this chunk.
                        if (tests == 4096 && pruned * 64 < tests) use_bounds = false;
                    }
                    if (!kernel(xg, d, pk.panel(p), pk.off.data() + p * kPanel, sc.alpha, tg, masks, tile)) continue;
                    for (int r = 0; r < kRows; ++r) {
                        uint32_t m = masks[r];
                        const int64_t qi = g * kRows + r;
                        while (m) {
                            const int l = __builtin_ctz(m);
                            m &= m - 1;
                            const int64_t j = p * kPanel + l;  // packed position
                            if (j >= n || (self && j == q0 + qi)) continue;
                            const float sv = tile[r * kPanel + l];
                            if (!(sv <= tg[r])) continue;  // the threshold fell earlier in this tile
                            auto& c = cand[qi];
                            c.push_back({sv, sc.upper(sv, nx[qi], pk.nyv[j]), j});
                            if (c.size() >= cap[qi]) tg[r] = prune(qi);
                        }
                    }
                }
            }
        }
        for (int64_t i = 0; i < qn; ++i) prune(i);
        if (qn > 0) prefetch_rows(data, pk, cand[0]);
        std::vector<double> yrow(d);
        for (int64_t i = 0; i < qn; ++i) {
            if (i + 1 < qn) prefetch_rows(data, pk, cand[i + 1]);
            TopK heap{dist + qrow[i] * k, idx + qrow[i] * k, k};
            verify_candidates(data, pk, em, xd.data() + i * d, qnorm[i], cand[i], heap, yrow);
        }
    });
}

// ---- the self-join: each tile screened both ways ----------------------------------------------
//
// With the queries being the data rows themselves, the pair (x, y) has the same distance as
// (y, x): a tile of kRows rows of band I against a panel of band J (I < J) feeds both the
// rows' candidate lists and, with the panel rows' own thresholds, the panel rows' lists
// (SymScreenKernel), so only the band pairs I <= J are screened: about half the FMAs of
// screening every query against every row. The transposed value t = alpha * acc + off[x] is
// what the query scan would compute for query y and data row x (the same float32 coordinates
// and products), so the error bound, the upper bound and the threshold logic carry over.
//
// Candidates now arrive for a row from the tasks of every band pair it is part of, so every
// row keeps its candidates and threshold for the whole scan: the k with the smallest upper
// bounds in a max-heap (12 bytes each), whose top is the threshold, plus the rare extras whose
// lower bound is still within it (near-ties within the error bound). Any k-th smallest upper
// bound over k distinct other rows is a valid threshold (at least the row's true k-th key in
// these units), so every true neighbour passes the screen and is kept: in the heap, or as an
// extra when a smaller bound displaces it. Tasks that run at the same time own disjoint bands
// (BandPairs), so rows are written by one thread at a time without locks; the order in which
// a row meets its candidates may depend on the threads, its exact neighbours do not. Offsets
// run in increasing order, so a row's near region (in the spatial order) is screened first.

// The band pairs (I, I + o), o = 0, 1, ..., handed out to threads so that running tasks never
// share a band: a task owns every row of its two bands (lists, thresholds) while it runs.
// Pairs are enumerated in that order by a cursor (no list of them: B^2 / 2 pairs for B bands).
class BandPairs {
public:
    explicit BandPairs(int64_t n_bands) : n_(n_bands), taken_(static_cast<size_t>(n_bands * (n_bands + 1) / 2)),
                                          busy_(n_bands, 0) {}
    int64_t size() const { return static_cast<int64_t>(taken_.size()); }
    // Claims a pair for the scope of the object (released on exceptions too, so that no other
    // thread waits for it forever).
    struct Claim {
        BandPairs& bp;
        int64_t I, J;
        explicit Claim(BandPairs& b) : bp(b) { std::tie(I, J) = bp.claim(); }
        ~Claim() { bp.release(I, J); }
        Claim(const Claim&) = delete;
        Claim& operator=(const Claim&) = delete;
    };

private:
    struct Cursor {
        size_t i = 0;
        int64_t o = 0, I = 0;
        void next(int64_t n) {
            ++i;
            if (++I + o >= n) ++o, I = 0;
        }
    };
    std::pair<int64_t, int64_t> claim() {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            while (first_.i < taken_.size() && taken_[first_.i]) first_.next(n_);
            // Pairs skipped here are taken or conflict with one of the few running tasks: the
            // scan is short.
            for (Cursor c = first_; c.i < taken_.size(); c.next(n_)) {
                if (taken_[c.i] || busy_[c.I] || busy_[c.I + c.o]) continue;
                taken_[c.i] = true, busy_[c.I] = busy_[c.I + c.o] = 1;
                return {c.I, c.I + c.o};
            }
            freed_.wait(lock);
        }
    }
    void release(int64_t I, int64_t J) {
        {
            std::lock_guard<std::mutex> lock(mu_);
            busy_[I] = busy_[J] = 0;
        }
        freed_.notify_all();
    }
    int64_t n_;
    std::vector<bool> taken_;
    std::vector<char> busy_;
    Cursor first_;
    std::mutex mu_;
    std::condition_variable freed_;
};

struct SelfCand {
    float s;      // screened value (a lower bound of the shifted exact key)
    int32_t pos;  // packed position of the other row
};

void self_join_scan(const MatrixView& data, int64_t k, const Screen& sc, const ExactMetric& em, const Packed& pk,
                    int n_threads, const CancelCheck& cancel, double* dist, int64_t* idx) {
    const int64_t n = pk.n, d = pk.d, n_panels = pk.n_panels;
    if (n > std::numeric_limits<int32_t>::max())
        throw InvalidInput("the brute-force self-join supports at most 2^31 - 1 rows, got " + std::to_string(n));
    const SymScreenKernel sym_kernel = select_sym_screen_kernel(active_simd(), sc.kind);
    const TileBound bound(sc, d);
    const int64_t band_panels = pk.block_panels, band_rows = band_panels * kPanel;
    const int64_t n_bands = (n_panels + band_panels - 1) / band_panels;
    constexpr float kInf = std::numeric_limits<float>::infinity();

    struct Entry {
        float su, s;
        int32_t pos;
    };
    std::vector<Entry> heap(static_cast<size_t>(n * k), Entry{kInf, kInf, -1});
    std::vector<std::vector<SelfCand>> extra(n);
    // Per packed row, the heap's top: contiguous for the kernel (-inf for padding rows).
    std::vector<float> thr(static_cast<size_t>(n_panels * kPanel), -kInf);
    std::fill_n(thr.begin(), n, kInf);
    // Exact keys for rows in exact mode, straight into the row's output heap.
    const bool cosine = em.metric == Metric::cosine;
    std::vector<char> exact(n, 0);
    // float64 rows with unit column stride are read in place, others through the caller's
    // buffers (two rows of d).
    const bool in_place = !data.is_float32 && data.col_stride == 1;
    auto offer_exact = [&](int64_t y, int64_t x, TopK& top, std::vector<double>& buf) {
        const int64_t ry = pk.order[y], rx = pk.order[x];
        const double *a, *b;
        if (in_place) {
            a = data.ptr<double>() + ry * data.row_stride, b = data.ptr<double>() + rx * data.row_stride;
        } else {
            buf.resize(2 * d);
            read_row(data, ry, buf.data()), read_row(data, rx, buf.data() + d);
            a = buf.data(), b = buf.data() + d;
        }
        top.offer(em.key(a, b, cosine ? pk.dnorm[ry] : 0.0, cosine ? pk.dnorm[rx] : 0.0), rx);
    };
    // Ties (duplicate rows: one row of mammography has 3329 copies) keep up to m extras per
    // row, and every row of a tie group has them at once: m^2 entries. A row whose extras
    // reach kExtraLimit after compaction switches to exact mode: its candidates so far are
    // verified into its output heap, and from then on each candidate is verified as it comes,
    // so memory stays O(n (k + kExtraLimit)) and the work is that of verifying at the end.
    constexpr size_t kExtraLimit = 32;
    auto to_exact = [&](int64_t y, std::vector<double>& buf) {
        exact[y] = 1;
        const int64_t ry = pk.order[y];
        TopK top{dist + ry * k, idx + ry * k, k};
        const Entry* h = heap.data() + y * k;
        for (int64_t i = 0; i < k; ++i) offer_exact(y, h[i].pos, top, buf);  // full: seeded with >= k
        for (const SelfCand& e : extra[y])
            if (e.s <= thr[y]) offer_exact(y, e.pos, top, buf);
        std::vector<SelfCand>().swap(extra[y]);
    };
    auto keep_extra = [&](int64_t y, float s, int32_t pos, std::vector<double>& buf) {
        auto& c = extra[y];
        c.push_back({s, pos});
        if (c.size() < kExtraLimit) return;
        const float t = thr[y];  // drop what the threshold has passed
        c.erase(std::remove_if(c.begin(), c.end(), [t](const SelfCand& e) { return e.s > t; }), c.end());
        if (c.size() >= kExtraLimit / 2) to_exact(y, buf);
    };
    // Row y meets row x with screened value sv <= thr[y]; buf: the caller's scratch.
    auto push = [&](int64_t y, float sv, int64_t x, std::vector<double>& buf) {
        const float su = sc.upper(sv, pk.nyv[y], pk.nyv[x]);
        Entry* h = heap.data() + y * k;
        if (exact[y]) {
            const int64_t ry = pk.order[y];
            TopK top{dist + ry * k, idx + ry * k, k, k};
            offer_exact(y, x, top, buf);
            if (!(su < h[0].su)) return;
        } else if (!(su < h[0].su)) {
            keep_extra(y, sv, static_cast<int32_t>(x), buf);
            return;
        }
        const Entry out = h[0];
        int64_t c = 0;  // sift the new entry down from the root
        for (;;) {
            int64_t l = 2 * c + 1;
            if (l >= k) break;
            if (l + 1 < k && h[l + 1].su > h[l].su) ++l;
            if (!(h[l].su > su)) break;
            h[c] = h[l], c = l;
        }
        h[c] = Entry{su, sv, static_cast<int32_t>(x)};
        thr[y] = h[0].su;
        if (!exact[y] && out.pos >= 0 && out.s <= thr[y]) keep_extra(y, out.s, out.pos, buf);
    };

    // Seeds: a row's neighbours in the spatial order are near it, so its heap starts with the
    // 2k rows around it (computed here in scalar float32, covered by the same error bound) and
    // its threshold is close to the final one before the scan starts. The scan skips these
    // pairs (window), so that no row is counted twice in a heap.
    auto in_window = [&](int64_t pos, int64_t j) {
        const int64_t lo = seed_window_lo(pos, n, k);
        return j >= lo && j < lo + 2 * k + 1;
    };
    constexpr int64_t kSeedChunk = 1024;
    parallel_chunks((n + kSeedChunk - 1) / kSeedChunk, n_threads, cancel, [&](int64_t c) {
        std::vector<float> x(d);
        std::vector<double> buf;
        for (int64_t pos = c * kSeedChunk; pos < std::min(n, (c + 1) * kSeedChunk); ++pos) {
            for (int64_t f = 0; f < d; ++f) x[f] = pk.coord(pos, f);
            const int64_t lo = seed_window_lo(pos, n, k), hi = std::min(n, lo + 2 * k + 1);
            for (int64_t j = lo; j < hi; ++j) {
                if (j == pos) continue;
                const float sv = screened_pair(sc, pk, x.data(), j);
                if (sv <= thr[pos]) push(pos, sv, j, buf);
            }
        }
    });

    // Whether the panel-box test pays, decided per band as in the query scan (it is switched off
    // for data whose boxes overlap everywhere). Only the task owning band I as its row side
    // touches these.
    std::vector<int64_t> tests(n_bands, 0), pruned(n_bands, 0);
    const GroupBoxes gb([&](int64_t i, int64_t f) { return pk.coord(i, f); }, pk.nyv.data(), n, d);
    // Each band's box and largest norm, from its panels'.
    std::vector<float> blo(static_cast<size_t>(n_bands * d), kInf), bhi(static_cast<size_t>(n_bands * d), -kInf);
    std::vector<double> bny(n_bands, 0.0);
    for (int64_t p = 0; p < n_panels; ++p) {
        const int64_t b = p / band_panels;
        for (int64_t f = 0; f < d; ++f)
            blo[b * d + f] = std::min(blo[b * d + f], pk.plo[p * d + f]), bhi[b * d + f] = std::max(bhi[b * d + f], pk.phi[p * d + f]);
        bny[b] = std::max(bny[b], static_cast<double>(pk.pny[p]));
    }
    float never[kPanel];
    std::fill_n(never, kPanel, -kInf);
    std::vector<char> use_bounds(n_bands, 1);
    auto run_pair = [&](int64_t I, int64_t J) {
        const bool diag = I == J;  // within one band each pair is met twice: screen one way only
        const int64_t r0 = I * band_rows, groups = (std::min(n, r0 + band_rows) - r0 + kRows - 1) / kRows;
        const int64_t p0 = J * band_panels, p1 = std::min(n_panels, p0 + band_panels);
        uint32_t masks[kRows], tmasks[kRows];
        alignas(64) float tile[kRows * kPanel], ttile[kRows * kPanel];
        std::vector<double> buf;
        // The largest threshold of each panel of band J (and of each group of kGroupPanels),
        // taken once: thresholds only fall, so these stay upper bounds for the box tests.
        std::vector<float> pmax, smax;
        if (use_bounds[I] && !diag) {
            pmax.assign(p1 - p0, -kInf), smax.assign((p1 - p0 + kGroupPanels - 1) / kGroupPanels, -kInf);
            for (int64_t p = p0; p < p1; ++p) {
                for (int l = 0; l < kPanel; ++l) pmax[p - p0] = std::max(pmax[p - p0], thr[p * kPanel + l]);
                smax[(p - p0) / kGroupPanels] = std::max(smax[(p - p0) / kGroupPanels], pmax[p - p0]);
            }
            // The whole pair at once: bands are compact in the spatial order, so on data with
            // structure most far pairs end here.
            float imax = -kInf, jmax = -kInf;
            for (int64_t i = r0; i < std::min(n, r0 + band_rows); ++i) imax = std::max(imax, thr[i]);
            for (float t : smax) jmax = std::max(jmax, t);
            const double lb = bound.box(blo.data() + I * d, bhi.data() + I * d, blo.data() + J * d, bhi.data() + J * d);
            if (bound.lower(lb, bny[I], bny[J]) > static_cast<double>(imax) &&
                bound.lower(lb, bny[J], bny[I]) > static_cast<double>(jmax))
                return;
        }
        for (int64_t g = r0 / kRows; g < r0 / kRows + groups; ++g) {
            const int64_t x0 = g * kRows;  // packed position of the group's first row
            const float* xg = pk.panel(x0 / kPanel) + x0 % kPanel;
            float* tg = thr.data() + x0;
            const float* ga = gb.lo.data() + g * d;
            const float* gh = gb.hi.data() + g * d;
            for (int64_t p = p0; p < p1; ++p) {
                if (use_bounds[I]) {
                    // Skipped only when neither way can pass: the rows' thresholds against the
                    // tile's bound, and (off the diagonal) the panel rows' against the swapped one.
                    float tmax = tg[0];
                    for (int r = 1; r < kRows; ++r) tmax = std::max(tmax, tg[r]);
                    auto skip = [&](double lb, double ny, float tpmax) {
                        if (bound.lower(lb, gb.nx[g], ny) <= static_cast<double>(tmax)) return false;
                        return diag || bound.lower(lb, ny, gb.nx[g]) > static_cast<double>(tpmax);
                    };
                    // Band J starts on a panel group (band_panels is a multiple of kGroupPanels).
                    if (p % kGroupPanels == 0) {
                        const int64_t sp = p / kGroupPanels;
                        const double lb = bound.box(ga, gh, pk.slo.data() + sp * d, pk.shi.data() + sp * d);
                        if (skip(lb, pk.sny[sp], diag ? -kInf : smax[(p - p0) / kGroupPanels])) {
                            p += kGroupPanels - 1;
                            continue;
                        }
                    }
                    ++tests[I];
                    const double lb = bound.box(ga, gh, pk.plo.data() + p * d, pk.phi.data() + p * d);
                    if (skip(lb, pk.pny[p], diag ? -kInf : pmax[p - p0])) {
                        ++pruned[I];
                        continue;
                    }
                    if (tests[I] == 4096 && pruned[I] * 64 < tests[I]) use_bounds[I] = 0;
                }
                // On the diagonal the transposed compare runs against -inf: it never passes.
                if (!sym_kernel(xg, d, pk.panel(p), pk.off.data() + p * kPanel, pk.off.data() + x0, sc.alpha, tg,
                                diag ? never : thr.data() + p * kPanel, masks, tmasks, tile, ttile))
                    continue;
                for (int r = 0; r < kRows; ++r) {
                    const int64_t x = x0 + r;
                    if (x >= n) break;
                    for (uint32_t m = masks[r]; m; m &= m - 1) {
                        const int l = __builtin_ctz(m);
                        const int64_t y = p * kPanel + l;
                        if (y >= n || y == x || in_window(x, y)) continue;
                        const float sv = tile[r * kPanel + l];
                        if (sv <= thr[x]) push(x, sv, y, buf);  // else the threshold fell in this tile
                    }
                    for (uint32_t m = tmasks[r]; m; m &= m - 1) {
                        const int l = __builtin_ctz(m);
                        const int64_t y = p * kPanel + l;
                        if (y >= n || in_window(y, x)) continue;
                        const float sv = ttile[r * kPanel + l];
                        if (sv <= thr[y]) push(y, sv, x, buf);
                    }
                }
            }
        }
    };
    // Every band pair once, nearest offsets first; each chunk of the threaded loop claims the
    // first unclaimed pair whose two bands no running task holds (waiting only when every pair
    // left conflicts), so there is no barrier to stall on a descheduled thread.
    BandPairs bp(n_bands);
    parallel_chunks(bp.size(), n_threads, cancel, [&](int64_t) {
        const BandPairs::Claim claim(bp);
        run_pair(claim.I, claim.J);
    });

    // Exact verification, row by row in the packed order: the heap and the extras still within
    // the threshold.
    const int64_t n_chunks = (n + kQueryBlock - 1) / kQueryBlock;
    parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
        const int64_t q0 = chunk * kQueryBlock, q1 = std::min(n, q0 + kQueryBlock);
        std::vector<std::vector<SelfCand>> cand(q1 - q0);
        for (int64_t pos = q0; pos < q1; ++pos) {
            if (exact[pos]) continue;
            auto& c = cand[pos - q0];
            const Entry* h = heap.data() + pos * k;
            for (int64_t i = 0; i < k; ++i) c.push_back({h[i].s, h[i].pos});  // full: 2k >= k seeds
            for (const SelfCand& e : extra[pos])
                if (e.s <= thr[pos]) c.push_back(e);
            std::vector<SelfCand>().swap(extra[pos]);
        }
        std::vector<double> x(d), yrow(d);
        prefetch_rows(data, pk, cand[0]);
        for (int64_t pos = q0; pos < q1; ++pos) {
            if (pos + 1 < q1) prefetch_rows(data, pk, cand[pos + 1 - q0]);
            const int64_t row = pk.order[pos];
            if (exact[pos]) {
                TopK{dist + row * k, idx + row * k, k, k}.finish(em);
                continue;
            }
            read_row(data, row, x.data());
            TopK top{dist + row * k, idx + row * k, k};
            verify_candidates(data, pk, em, x.data(), em.metric == Metric::cosine ? pk.dnorm[row] : 0.0,
                              cand[pos - q0], top, yrow);
        }
    });
}

void brute_force(const MatrixView& data, const MatrixView* queries, int64_t k, Metric metric, int n_threads,
                 const CancelCheck& cancel, double* dist, int64_t* idx) {
    const Screen sc = make_screen(data, queries, metric);
    const ExactMetric em{metric, data.cols};
    // A few queries (scoring a handful of new rows) cannot repay the O(n log n) sort.
    const Packed pk = pack_rows(data, !queries || queries->rows >= 256, sc, metric, n_threads, cancel);
    // The symmetric self-join pays per candidate with a heap operation where the one-way scan
    // appends and selects lazily; candidates grow with k (about k ln(n / k) per row), so past
    // k = 64 the one-way scan is faster (n = 20k, d = 16, 1 thread: 0.21 vs 0.34 s at k = 20,
    // 0.44 vs 0.51 s at k = 50, 0.86 vs 0.79 s at k = 100, 1.73 vs 1.25 s at k = 200).
    constexpr int64_t kSymmetricMaxK = 64;
    if (queries)
        query_scan(data, *queries, false, k, sc, em, pk, n_threads, cancel, dist, idx);
    else if (k > kSymmetricMaxK)
        query_scan(data, data, true, k, sc, em, pk, n_threads, cancel, dist, idx);
    else
        self_join_scan(data, k, sc, em, pk, n_threads, cancel, dist, idx);
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
    check_finite(data, "X");
    if (queries) check_finite(*queries, "Y");
    if (algorithm == KnnAlgorithm::automatic) algorithm = choose_knn_algorithm(n, data.cols, metric);
    if (algorithm == KnnAlgorithm::kd_tree && metric == Metric::cosine)
        throw InvalidInput("algorithm 'kd_tree' does not support the cosine metric; use 'brute' or 'auto'");
    if (algorithm == KnnAlgorithm::kd_tree)
        kd_tree_search(data, queries, k, metric, n_threads, cancel, dist, idx);
    else
        brute_force(data, queries, k, metric, n_threads, cancel, dist, idx);
    return algorithm;
}

}  // namespace pynomaly
