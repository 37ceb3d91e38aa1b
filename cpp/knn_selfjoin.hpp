// The brute-force kNN self-join (queries = data, LOF's fit): each float32 tile screened both ways,
// so about half the FMAs of the query scan. Private to knn.cpp: the search is one translation unit
// (the tests build the core from its .cpp files by name), hence the unnamed namespace.
#pragma once

#include <condition_variable>
#include <mutex>
#include <tuple>

#include "knn_brute.hpp"

namespace pynomaly {
namespace {

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

}  // namespace
}  // namespace pynomaly
