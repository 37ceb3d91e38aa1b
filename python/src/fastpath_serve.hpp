// The fast path's scoring step, shared by both callers of the native path: fastpath.cpp (the
// uvloop daemon hands it a receive buffer) and netloop.cpp (the native connection loop). A
// batch of parsed small detects for one detector is scored with one native call and answered
// with one reply frame per request, byte-identical to msgspec's (fastpath_wire.hpp). No Python
// here: the loop threads call it without the GIL.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"
#include "fastpath_explain.hpp"
#include "fastpath_wire.hpp"
#include "iforest.hpp"

namespace pynomaly::fastwire {

// What the native path needs of one served detector version; immutable once built. The
// forest is owned elsewhere (by the Python Forest object), which outlives every user of this.
struct Served {
    const Forest* forest = nullptr;
    int64_t n_features = 0;
    double threshold = 0;
    std::string name;  // UTF-8
    int64_t version = 0;
    std::shared_ptr<const LazyExplainer> explainer;  // for requests asking for attributions
};

struct Batch {
    std::vector<Request> requests;
    std::vector<unsigned char> rows;  // the requests' rows, aligned and contiguous
    std::vector<double> scores;
    std::vector<float> x32;    // a float64 request's rows as float32, for its attributions
    std::vector<double> phi;   // attributions, at the rows of the requests that ask for them
    int64_t n_rows = 0;
    bool f32 = false;

    void clear() {
        requests.clear();
        n_rows = 0;
    }
};

// What alert rules and metrics need of scored batches (the daemon's alerts, issue 12): rows,
// anomalies (scores above the threshold), the requests with at least one, the highest anomalous
// score and the highest anomaly rate of one request. Counted from the scores already computed:
// a comparison per row, nothing when a batch has no anomaly.
struct Tally {
    uint64_t anomalies = 0, flagged = 0;
    double max_score = -std::numeric_limits<double>::infinity(), max_rate = 0;

    // Adds a scored batch; returns whether it had an anomaly.
    bool add(const Batch& b, double threshold) {
        const double* s = b.scores.data();
        uint64_t k = 0;
        for (int64_t i = 0; i < b.n_rows; ++i) k += is_anomaly(s[i], threshold);
        if (k == 0) return false;
        int64_t row = 0;
        for (const Request& q : b.requests) {
            uint64_t kq = 0;
            for (int64_t i = row; i < row + q.n; ++i) {
                if (is_anomaly(s[i], threshold)) {
                    ++kq;
                    if (s[i] > max_score) max_score = s[i];
                }
            }
            if (kq) {
                ++flagged;
                const double rate = static_cast<double>(kq) / static_cast<double>(q.n);
                if (rate > max_rate) max_rate = rate;
            }
            row += q.n;
        }
        anomalies += k;
        return true;
    }
    void merge(const Tally& t) {
        anomalies += t.anomalies;
        flagged += t.flagged;
        if (t.max_score > max_score) max_score = t.max_score;
        if (t.max_rate > max_rate) max_rate = t.max_rate;
    }
};

// Rows kept for drift monitoring (issue 24): up to a cap of the rows scored since the host last
// took them, with their scores, and how many rows were served meanwhile (kept or not). float32
// rows are kept as float32 (the host counts a value that rounds to a bin edge as that edge),
// float64 rows as they came. The host counts them on the detector's reference bins off the
// serving path (pynomaly.serving.observe); a copy of the first rows only, so a request pays a
// few nanoseconds once the cap is reached.
struct Sample {
    std::vector<double> rows, scores;    // float64 requests' rows
    std::vector<float> rows32;           // float32 requests' rows
    std::vector<double> scores32;
    uint64_t served = 0;

    size_t kept() const { return scores.size() + scores32.size(); }

    // Adds a batch scored for d features, keeping rows while fewer than cap are kept.
    void add(const Batch& b, int64_t d, int64_t cap) {
        served += static_cast<uint64_t>(b.n_rows);
        int64_t room = cap - static_cast<int64_t>(kept());
        int64_t row = 0;
        for (const Request& q : b.requests) {
            if (room <= 0) break;
            const int64_t n = q.n < room ? q.n : room;
            const size_t values = static_cast<size_t>(n * d);
            if (b.f32) {
                const size_t at = rows32.size();
                rows32.resize(at + values);
                std::memcpy(rows32.data() + at, q.data, values * sizeof(float));  // q.data may be misaligned
                scores32.insert(scores32.end(), b.scores.begin() + row, b.scores.begin() + row + n);
            } else {
                const size_t at = rows.size();
                rows.resize(at + values);
                std::memcpy(rows.data() + at, q.data, values * sizeof(double));
                scores.insert(scores.end(), b.scores.begin() + row, b.scores.begin() + row + n);
            }
            room -= n;
            row += q.n;
        }
    }
};

// The anomalous rows an alert says why of (issue 22): the first of them scored since the host
// last took them, at most this many per served model (pynomaly.service.explaining.ALERT_ROWS),
// copied next to the tally and only for a batch that had an anomaly.
constexpr int64_t kAlertRows = 5;

// Keeps b's anomalous rows (scores above threshold) in `why` while it holds fewer than cap, as
// Sample keeps rows for drift (float32 rows as float32); `served` counts the rows kept, so the
// host sees None when there were none.
inline void keep_flagged(Sample& why, const Batch& b, int64_t d, int64_t cap, double threshold) {
    int64_t room = cap - static_cast<int64_t>(why.kept());
    int64_t row = 0;
    const size_t item = b.f32 ? sizeof(float) : sizeof(double);
    for (const Request& q : b.requests) {
        for (int64_t i = 0; i < q.n && room > 0; ++i) {
            const double score = b.scores[static_cast<size_t>(row + i)];
            if (!is_anomaly(score, threshold)) continue;
            const auto* from = static_cast<const unsigned char*>(q.data) + static_cast<size_t>(i * d) * item;
            const size_t values = static_cast<size_t>(d);
            if (b.f32) {
                const size_t at = why.rows32.size();
                why.rows32.resize(at + values);
                std::memcpy(why.rows32.data() + at, from, values * item);  // q.data may be misaligned
                why.scores32.push_back(score);
            } else {
                const size_t at = why.rows.size();
                why.rows.resize(at + values);
                std::memcpy(why.rows.data() + at, from, values * item);
                why.scores.push_back(score);
            }
            ++why.served;
            --room;
        }
        if (room <= 0) break;
        row += q.n;
    }
}

// Whether q may join batch b (same dtype, within max_rows); an empty batch takes anything.
inline bool fits(const Batch& b, const Request& q, int64_t max_rows) {
    return b.requests.empty() || (q.f32 == b.f32 && b.n_rows + q.n <= max_rows);
}

inline void add(Batch& b, const Request& q) {
    if (b.requests.empty()) b.f32 = q.f32;
    b.requests.push_back(q);
    b.n_rows += q.n;
}

// Scores a batch with one native call and appends one reply frame per request. False when the
// core refuses the rows (nothing appended): the Python path then scores them one by one and
// names the bad row. The requests' data must still be readable (they point into a buffer).
inline bool score_batch(Batch& b, const Served& s, std::string& out) {
    const int64_t item = b.f32 ? 4 : 8;
    const void* rows = b.requests.size() == 1 ? b.requests[0].data : nullptr;
    if (rows == nullptr || reinterpret_cast<uintptr_t>(rows) % static_cast<uintptr_t>(item) != 0) {
        // Several requests, or values the core may not read in place (misaligned): one copy,
        // aligned for the element type (a vector's storage is aligned for any scalar).
        b.rows.resize(static_cast<size_t>(b.n_rows * s.n_features * item) + 8);
        unsigned char* at = b.rows.data();
        for (const Request& q : b.requests) {
            const size_t bytes = static_cast<size_t>(q.n * q.d * item);
            std::memcpy(at, q.data, bytes);
            at += bytes;
        }
        rows = b.rows.data();
    }
    MatrixView v;
    v.data = rows;
    v.rows = b.n_rows;
    v.cols = s.n_features;
    v.row_stride = s.n_features;
    v.col_stride = 1;
    v.is_float32 = b.f32;
    b.scores.resize(static_cast<size_t>(b.n_rows));
    try {
        s.forest->score(v, b.scores.data(), 1, CancelCheck{});
    } catch (const InvalidInput&) {
        return false;
    }
    bool explain = false;
    for (const Request& q : b.requests) explain |= q.attributions;
    if (explain && (s.explainer == nullptr || !explain_requests(b.requests, b.n_rows, b.f32, rows, s.n_features, *s.explainer,
                                                                b.x32, b.phi)))
        return false;
    int64_t row = 0;
    for (const Request& q : b.requests) {
        Explained e;
        if (q.attributions) e = explained_of(q, b.phi.data() + row * s.n_features, s.n_features);
        put_reply(out, q, s.name, s.version, s.threshold, b.scores.data() + row, q.attributions ? &e : nullptr);
        row += q.n;
    }
    return true;
}

}  // namespace pynomaly::fastwire
