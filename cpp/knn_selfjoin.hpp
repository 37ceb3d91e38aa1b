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

// The self-join's state and its steps: seeds, the band-pair scan, exact verification.
class SelfJoin {
public:
    SelfJoin(const MatrixView& data, int64_t k, const Screen& sc, const ExactMetric& em, const Packed& pk, double* dist,
             int64_t* idx)
        : data_(data), k_(k), sc_(sc), em_(em), pk_(pk), dist_(dist), idx_(idx), n_(pk.n), d_(pk.d),
          n_panels_(pk.n_panels), bound_(sc, pk.d), band_panels_(pk.block_panels), band_rows_(band_panels_ * kPanel),
          n_bands_((n_panels_ + band_panels_ - 1) / band_panels_), cosine_(em.metric == Metric::cosine),
          in_place_(!data.is_float32 && data.col_stride == 1) {
        if (n_ > std::numeric_limits<int32_t>::max())
            throw InvalidInput("the brute-force self-join supports at most 2^31 - 1 rows, got " + std::to_string(n_));
        sym_kernel_ = select_sym_screen_kernel(active_simd(), sc.kind);
        heap_.assign(static_cast<size_t>(n_ * k_), Entry{kInf, kInf, -1});
        extra_.resize(n_);
        // Per packed row, the heap's top: contiguous for the kernel (-inf for padding rows).
        thr_.assign(static_cast<size_t>(n_panels_ * kPanel), -kInf);
        std::fill_n(thr_.begin(), n_, kInf);
        exact_.assign(n_, 0);
    }

    void run(int n_threads, const CancelCheck& cancel) {
        seed(n_threads, cancel);
        scan(n_threads, cancel);
        verify(n_threads, cancel);
    }

private:
    static constexpr float kInf = std::numeric_limits<float>::infinity();
    struct Entry {
        float su, s;
        int32_t pos;
    };

    const MatrixView& data_;
    const int64_t k_;
    const Screen& sc_;
    const ExactMetric& em_;
    const Packed& pk_;
    double* const dist_;
    int64_t* const idx_;
    const int64_t n_, d_, n_panels_;
    SymScreenKernel sym_kernel_ = nullptr;
    const TileBound bound_;
    const int64_t band_panels_, band_rows_, n_bands_;
    // float64 rows with unit column stride are read in place, others through a scratch buffer.
    const bool cosine_, in_place_;
    // Per row: the k smallest upper bounds in a max-heap, the extras, the threshold, and
    // whether it is in exact mode (its exact keys go straight into its output heap).
    std::vector<Entry> heap_;
    std::vector<std::vector<SelfCand>> extra_;
    std::vector<float> thr_;
    std::vector<char> exact_;

    // Ties (duplicate rows: one row of mammography has 3329 copies) keep up to m extras per
    // row, and every row of a tie group has them at once: m^2 entries. A row whose extras
    // reach kExtraLimit after compaction switches to exact mode: its candidates so far are
    // verified into its output heap, and from then on each candidate is verified as it comes,
    // so memory stays O(n (k + kExtraLimit)) and the work is that of verifying at the end.
    static constexpr size_t kExtraLimit = 32;

    TopK output(int64_t y) const {
        const int64_t ry = pk_.order[y];
        return TopK{dist_ + ry * k_, idx_ + ry * k_, k_};
    }

    // The exact key of rows y and x (packed positions) offered to top; buf: the caller's
    // scratch (two rows of d) for rows not read in place.
    void offer_exact(int64_t y, int64_t x, TopK& top, std::vector<double>& buf) const {
        const int64_t ry = pk_.order[y], rx = pk_.order[x];
        const double *a, *b;
        if (in_place_) {
            a = data_.ptr<double>() + ry * data_.row_stride, b = data_.ptr<double>() + rx * data_.row_stride;
        } else {
            buf.resize(2 * d_);
            read_row(data_, ry, buf.data()), read_row(data_, rx, buf.data() + d_);
            a = buf.data(), b = buf.data() + d_;
        }
        top.offer(em_.key(a, b, cosine_ ? pk_.dnorm[ry] : 0.0, cosine_ ? pk_.dnorm[rx] : 0.0), rx);
    }

    void to_exact(int64_t y, std::vector<double>& buf) {
        exact_[y] = 1;
        TopK top = output(y);
        const Entry* h = heap_.data() + y * k_;
        for (int64_t i = 0; i < k_; ++i) offer_exact(y, h[i].pos, top, buf);  // full: seeded with >= k
        for (const SelfCand& e : extra_[y])
            if (e.s <= thr_[y]) offer_exact(y, e.pos, top, buf);
        std::vector<SelfCand>().swap(extra_[y]);
    }

    void keep_extra(int64_t y, float s, int32_t pos, std::vector<double>& buf) {
        auto& c = extra_[y];
        c.push_back({s, pos});
        if (c.size() < kExtraLimit) return;
        const float t = thr_[y];  // drop what the threshold has passed
        c.erase(std::remove_if(c.begin(), c.end(), [t](const SelfCand& e) { return e.s > t; }), c.end());
        if (c.size() >= kExtraLimit / 2) to_exact(y, buf);
    }

    // Row y meets row x with screened value sv <= thr_[y]; buf: the caller's scratch.
    void push(int64_t y, float sv, int64_t x, std::vector<double>& buf) {
        const float su = sc_.upper(sv, pk_.nyv[y], pk_.nyv[x]);
        Entry* h = heap_.data() + y * k_;
        if (exact_[y]) {
            const int64_t ry = pk_.order[y];
            TopK top{dist_ + ry * k_, idx_ + ry * k_, k_, k_};
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
            if (l >= k_) break;
            if (l + 1 < k_ && h[l + 1].su > h[l].su) ++l;
            if (!(h[l].su > su)) break;
            h[c] = h[l], c = l;
        }
        h[c] = Entry{su, sv, static_cast<int32_t>(x)};
        thr_[y] = h[0].su;
        if (!exact_[y] && out.pos >= 0 && out.s <= thr_[y]) keep_extra(y, out.s, out.pos, buf);
    }

    // Seeds: a row's neighbours in the spatial order are near it, so its heap starts with the
    // 2k rows around it (computed here in scalar float32, covered by the same error bound) and
    // its threshold is close to the final one before the scan starts. The scan skips these
    // pairs (in_window), so that no row is counted twice in a heap.
    bool in_window(int64_t pos, int64_t j) const {
        const int64_t lo = seed_window_lo(pos, n_, k_);
        return j >= lo && j < lo + 2 * k_ + 1;
    }

    void seed(int n_threads, const CancelCheck& cancel) {
        constexpr int64_t kSeedChunk = 1024;
        parallel_chunks((n_ + kSeedChunk - 1) / kSeedChunk, n_threads, cancel, [&](int64_t c) {
            std::vector<float> x(d_);
            std::vector<double> buf;
            for (int64_t pos = c * kSeedChunk; pos < std::min(n_, (c + 1) * kSeedChunk); ++pos) {
                for (int64_t f = 0; f < d_; ++f) x[f] = pk_.coord(pos, f);
                const int64_t lo = seed_window_lo(pos, n_, k_), hi = std::min(n_, lo + 2 * k_ + 1);
                for (int64_t j = lo; j < hi; ++j) {
                    if (j == pos) continue;
                    const float sv = screened_pair(sc_, pk_, x.data(), j);
                    if (sv <= thr_[pos]) push(pos, sv, j, buf);
                }
            }
        });
    }

    // The box test state of the scan. Whether the panel-box test pays is decided per band as
    // in the query scan (it is switched off for data whose boxes overlap everywhere); only the
    // task owning band I as its row side touches tests[I], pruned[I] and use_bounds[I].
    struct Boxes {
        std::vector<int64_t> tests, pruned;
        std::vector<char> use_bounds;
        GroupBoxes gb;
        std::vector<float> blo, bhi;  // each band's box and largest norm, from its panels'
        std::vector<double> bny;
    };

    Boxes boxes() const {
        Boxes b{std::vector<int64_t>(n_bands_, 0), std::vector<int64_t>(n_bands_, 0), std::vector<char>(n_bands_, 1),
                GroupBoxes([&](int64_t i, int64_t f) { return pk_.coord(i, f); }, pk_.nyv.data(), n_, d_),
                std::vector<float>(static_cast<size_t>(n_bands_ * d_), kInf),
                std::vector<float>(static_cast<size_t>(n_bands_ * d_), -kInf), std::vector<double>(n_bands_, 0.0)};
        for (int64_t p = 0; p < n_panels_; ++p) {
            const int64_t w = p / band_panels_;
            for (int64_t f = 0; f < d_; ++f)
                b.blo[w * d_ + f] = std::min(b.blo[w * d_ + f], pk_.plo[p * d_ + f]),
                b.bhi[w * d_ + f] = std::max(b.bhi[w * d_ + f], pk_.phi[p * d_ + f]);
            b.bny[w] = std::max(b.bny[w], static_cast<double>(pk_.pny[p]));
        }
        return b;
    }

    // Every band pair once, nearest offsets first; each chunk of the threaded loop claims the
    // first unclaimed pair whose two bands no running task holds (waiting only when every pair
    // left conflicts), so there is no barrier to stall on a descheduled thread.
    void scan(int n_threads, const CancelCheck& cancel) {
        Boxes b = boxes();
        BandPairs bp(n_bands_);
        parallel_chunks(bp.size(), n_threads, cancel, [&](int64_t) {
            const BandPairs::Claim claim(bp);
            scan_pair(b, claim.I, claim.J);
        });
    }

    // Bands I and J (I <= J): every tile of I's row groups against J's panels, both ways.
    void scan_pair(Boxes& b, int64_t I, int64_t J) {
        const bool diag = I == J;  // within one band each pair is met twice: screen one way only
        const int64_t r0 = I * band_rows_, groups = (std::min(n_, r0 + band_rows_) - r0 + kRows - 1) / kRows;
        const int64_t p0 = J * band_panels_, p1 = std::min(n_panels_, p0 + band_panels_);
        uint32_t masks[kRows], tmasks[kRows];
        alignas(64) float tile[kRows * kPanel], ttile[kRows * kPanel];
        float never[kPanel];
        std::fill_n(never, kPanel, -kInf);
        std::vector<double> buf;
        // The largest threshold of each panel of band J (and of each group of kGroupPanels),
        // taken once: thresholds only fall, so these stay upper bounds for the box tests.
        std::vector<float> pmax, smax;
        if (b.use_bounds[I] && !diag) {
            pmax.assign(p1 - p0, -kInf), smax.assign((p1 - p0 + kGroupPanels - 1) / kGroupPanels, -kInf);
            for (int64_t p = p0; p < p1; ++p) {
                for (int l = 0; l < kPanel; ++l) pmax[p - p0] = std::max(pmax[p - p0], thr_[p * kPanel + l]);
                smax[(p - p0) / kGroupPanels] = std::max(smax[(p - p0) / kGroupPanels], pmax[p - p0]);
            }
            if (pair_is_far(b, I, J, r0, smax)) return;
        }
        for (int64_t g = r0 / kRows; g < r0 / kRows + groups; ++g) {
            const int64_t x0 = g * kRows;  // packed position of the group's first row
            const float* xg = pk_.panel(x0 / kPanel) + x0 % kPanel;
            float* tg = thr_.data() + x0;
            for (int64_t p = p0; p < p1; ++p) {
                if (b.use_bounds[I]) {
                    const int64_t skip = tile_skip(b, I, g, p, p0, diag, pmax, smax);
                    if (skip) {
                        p += skip - 1;
                        continue;
                    }
                }
                // On the diagonal the transposed compare runs against -inf: it never passes.
                if (!sym_kernel_(xg, d_, pk_.panel(p), pk_.off.data() + p * kPanel, pk_.off.data() + x0, sc_.alpha,
                                 tg, diag ? never : thr_.data() + p * kPanel, masks, tmasks, tile, ttile))
                    continue;
                take_tile(x0, p, masks, tmasks, tile, ttile, buf);
            }
        }
    }

    // The whole pair at once: bands are compact in the spatial order, so on data with structure
    // most far pairs end here. smax: the largest threshold of each panel group of band J.
    bool pair_is_far(const Boxes& b, int64_t I, int64_t J, int64_t r0, const std::vector<float>& smax) const {
        float imax = -kInf, jmax = -kInf;
        for (int64_t i = r0; i < std::min(n_, r0 + band_rows_); ++i) imax = std::max(imax, thr_[i]);
        for (float t : smax) jmax = std::max(jmax, t);
        const double lb = bound_.box(b.blo.data() + I * d_, b.bhi.data() + I * d_, b.blo.data() + J * d_,
                                     b.bhi.data() + J * d_);
        return bound_.lower(lb, b.bny[I], b.bny[J]) > static_cast<double>(imax) &&
               bound_.lower(lb, b.bny[J], b.bny[I]) > static_cast<double>(jmax);
    }

    // How many panels from p the box tests skip for row group g of band I (0: screen panel p):
    // a whole panel group, one panel, or none. Skipped only when neither way can pass: the
    // rows' thresholds against the tile's bound, and (off the diagonal) the panel rows'
    // against the swapped one. pmax and smax: band J's largest thresholds, from panel p0 on.
    int64_t tile_skip(Boxes& b, int64_t I, int64_t g, int64_t p, int64_t p0, bool diag, const std::vector<float>& pmax,
                      const std::vector<float>& smax) {
        const float* ga = b.gb.lo.data() + g * d_;
        const float* gh = b.gb.hi.data() + g * d_;
        const float* tg = thr_.data() + g * kRows;
        float tmax = tg[0];
        for (int r = 1; r < kRows; ++r) tmax = std::max(tmax, tg[r]);
        auto skip = [&](double lb, double ny, float tpmax) {
            if (bound_.lower(lb, b.gb.nx[g], ny) <= static_cast<double>(tmax)) return false;
            return diag || bound_.lower(lb, ny, b.gb.nx[g]) > static_cast<double>(tpmax);
        };
        // Band J starts on a panel group (band_panels is a multiple of kGroupPanels).
        if (p % kGroupPanels == 0) {
            const int64_t sp = p / kGroupPanels;
            const double lb = bound_.box(ga, gh, pk_.slo.data() + sp * d_, pk_.shi.data() + sp * d_);
            if (skip(lb, pk_.sny[sp], diag ? -kInf : smax[(p - p0) / kGroupPanels])) return kGroupPanels;
        }
        ++b.tests[I];
        const double lb = bound_.box(ga, gh, pk_.plo.data() + p * d_, pk_.phi.data() + p * d_);
        if (skip(lb, pk_.pny[p], diag ? -kInf : pmax[p - p0])) {
            ++b.pruned[I];
            return 1;
        }
        if (b.tests[I] == 4096 && b.pruned[I] * 64 < b.tests[I]) b.use_bounds[I] = 0;
        return 0;
    }

    // The pairs a screened tile passed, both ways: rows x0.. against panel p's rows (masks,
    // tile) and panel p's rows against them (tmasks, ttile).
    void take_tile(int64_t x0, int64_t p, const uint32_t* masks, const uint32_t* tmasks, const float* tile,
                   const float* ttile, std::vector<double>& buf) {
        for (int r = 0; r < kRows; ++r) {
            const int64_t x = x0 + r;
            if (x >= n_) break;
            for (uint32_t m = masks[r]; m; m &= m - 1) {
                const int l = __builtin_ctz(m);
                const int64_t y = p * kPanel + l;
                if (y >= n_ || y == x || in_window(x, y)) continue;
                const float sv = tile[r * kPanel + l];
                if (sv <= thr_[x]) push(x, sv, y, buf);  // else the threshold fell in this tile
            }
            for (uint32_t m = tmasks[r]; m; m &= m - 1) {
                const int l = __builtin_ctz(m);
                const int64_t y = p * kPanel + l;
                if (y >= n_ || in_window(y, x)) continue;
                const float sv = ttile[r * kPanel + l];
                if (sv <= thr_[y]) push(y, sv, x, buf);
            }
        }
    }

    // Exact verification, row by row in the packed order: the heap and the extras still within
    // the threshold.
    void verify(int n_threads, const CancelCheck& cancel) {
        const int64_t n_chunks = (n_ + kQueryBlock - 1) / kQueryBlock;
        parallel_chunks(n_chunks, n_threads, cancel, [&](int64_t chunk) {
            const int64_t q0 = chunk * kQueryBlock, q1 = std::min(n_, q0 + kQueryBlock);
            std::vector<std::vector<SelfCand>> cand(q1 - q0);
            for (int64_t pos = q0; pos < q1; ++pos) {
                if (exact_[pos]) continue;
                auto& c = cand[pos - q0];
                const Entry* h = heap_.data() + pos * k_;
                for (int64_t i = 0; i < k_; ++i) c.push_back({h[i].s, h[i].pos});  // full: 2k >= k seeds
                for (const SelfCand& e : extra_[pos])
                    if (e.s <= thr_[pos]) c.push_back(e);
                std::vector<SelfCand>().swap(extra_[pos]);
            }
            std::vector<double> x(d_), yrow(d_);
            prefetch_rows(data_, pk_, cand[0]);
            for (int64_t pos = q0; pos < q1; ++pos) {
                if (pos + 1 < q1) prefetch_rows(data_, pk_, cand[pos + 1 - q0]);
                const int64_t row = pk_.order[pos];
                if (exact_[pos]) {
                    TopK{dist_ + row * k_, idx_ + row * k_, k_, k_}.finish(em_);
                    continue;
                }
                read_row(data_, row, x.data());
                TopK top = output(pos);
                verify_candidates(data_, pk_, em_, x.data(), cosine_ ? pk_.dnorm[row] : 0.0,
                                  cand[pos - q0], top, yrow);
            }
        });
    }
};

void self_join_scan(const MatrixView& data, int64_t k, const Screen& sc, const ExactMetric& em, const Packed& pk,
                    int n_threads, const CancelCheck& cancel, double* dist, int64_t* idx) {
    SelfJoin(data, k, sc, em, pk, dist, idx).run(n_threads, cancel);
}

}  // namespace
}  // namespace pynomaly
