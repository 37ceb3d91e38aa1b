// The brute-force kNN search with float32 screening (knn.cpp says why screening is exact): the
// screen's scaling and error bound, the rows packed into panels in a spatial order, the box bounds
// that skip far tiles, the exact verification of candidates, and the one-way query scan. The
// self-join (knn_selfjoin.hpp) reuses all but the scan. Private to knn.cpp: the search is one
// translation unit (the tests build the core from its .cpp files by name), hence the unnamed
// namespace.
#pragma once

#include "knn_kernels.hpp"
#include "knn_shared.hpp"
#include "parallel.hpp"

namespace pynomaly {
namespace {

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

}  // namespace
}  // namespace pynomaly
