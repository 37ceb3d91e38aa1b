// The native loop's frames: cutting a connection's bytes into length-prefixed frames, scoring
// the small detects of a served model here (batched per connection, one native call per batch)
// and handing every other frame to the host; a frame larger than the receive buffer goes to
// memory of its own. Part of netloop.cpp's one translation unit (netloop_worker.hpp).
#pragma once

#include "netloop_worker.hpp"

namespace pynomaly::netloop {
namespace {

inline void Worker::parse(Conn& c) {
    unsigned char* buf = c.in.get();
    size_t p = c.start;
    const size_t first = p;
    while (c.end - p >= 4 && !c.closing) {
        const uint32_t len = be32(buf + p);
        if (len > static_cast<uint64_t>(cfg.max_frame)) {
            flush_batch(c);
            c.start = p;
            fail(c, "frame_too_large",
                 "frame of " + std::to_string(len) + " bytes exceeds the maximum of " + std::to_string(cfg.max_frame));
            return;
        }
        if (c.end - p - 4 < len) break;
        const unsigned char* body = buf + p + 4;
        Request q;
        const Model* m = c.may_fast ? servable(body, len, q) : nullptr;
        if (m != nullptr && q.n <= cfg.fast_rows) {
            if (fast.model != nullptr && (m != fast.model || !fastwire::fits(fast.batch, q, cfg.fast_rows)))
                flush_batch(c);
            fast.add(m, q, p + 4, len);
        } else if (m != nullptr) {
            // Scored alone, where it lies in the receive buffer: no copy of the frame
            // (score_batch copies the rows only if they are misaligned for their type).
            flush_batch(c);
            fast.add(m, q, p + 4, len);
            flush_batch(c);
        } else {
            flush_batch(c);  // its replies first: the frames before this one were read first
            auto b = Block::make(len);
            std::memcpy(b->data, body, len);
            handoff(c, std::move(b));
        }
        p += 4 + static_cast<size_t>(len);
    }
    flush_batch(c);
    if (c.closing) return;
    c.start = p;
    if (p != first) c.partial_since = -1;  // a frame completed: the frame timeout starts again
    hold_partial(c);
}

// After the whole frames of a read: the start of the next one stays in the buffer (moved to its
// front if it would not fit), or goes to a block of its own if it is larger than the buffer.
inline void Worker::hold_partial(Conn& c) {
    if (c.start == c.end) {
        c.start = c.end = 0;
        c.partial_since = -1;
        return;
    }
    if (c.partial_since < 0) c.partial_since = now;
    if (c.end - c.start < 4) return;
    const size_t need = 4 + static_cast<size_t>(be32(c.in.get() + c.start));
    if (need <= kBuf - c.start) return;
    if (need <= kBuf) {
        c.compact();
        return;
    }
    // A frame larger than the buffer: into memory of its own, the rest read straight there.
    if (need >= kReserveFrom) {
        const int64_t held = L.rx_reserved.load();
        if (held + static_cast<int64_t>(need) > cfg.max_rx_bytes) {
            fail(c, "overloaded", "cannot buffer a " + std::to_string(need) + "-byte frame now: " +
                                      std::to_string(held) + " bytes of partial frames are held (limit " +
                                      std::to_string(cfg.max_rx_bytes) + "); retry later");
            return;
        }
        L.rx_reserved.fetch_add(static_cast<int64_t>(need));
        c.reserved = need;
    }
    c.big = Block::make(need - 4);
    c.big_have = c.end - c.start - 4;
    std::memcpy(c.big->data, c.in.get() + c.start + 4, c.big_have);
    c.start = c.end = 0;
}

inline const Model* Worker::lookup(const Request& q) const {
    const std::string key = Loop::model_key(q.name, q.name_len, q.has_version, q.version_neg, q.version);
    auto it = table->find(key);
    return it == table->end() ? nullptr : it->second.get();
}

// The model that answers a frame the loop may score itself, with the frame parsed into q;
// nullptr for any other frame (the host's).
inline const Model* Worker::servable(const unsigned char* body, uint32_t len, Request& q) const {
    if (cfg.fast_rows <= 0 || !fastwire::parse_detect(body, len, q, std::max(cfg.fast_rows, cfg.alone_rows)))
        return nullptr;
    const Model* m = lookup(q);
    if (m == nullptr || q.d != m->s.n_features || !fastwire::all_finite(q)) return nullptr;
    return m;
}

// A whole frame in a block of its own: scored here when the loop may (one native call, the
// rows read in place), else handed over without a copy.
inline void Worker::serve_alone(Conn& c, std::unique_ptr<Block> b) {
    Request q;
    const Model* m = c.may_fast ? servable(b->data, static_cast<uint32_t>(b->size), q) : nullptr;
    if (m == nullptr) {
        handoff(c, std::move(b));
        return;
    }
    fast.model = m;
    fastwire::add(fast.batch, q);
    if (!score(c)) handoff(c, std::move(b));
    fast.clear();
}

// Scores the batch into c's replies, with the counts; false when the core refuses the rows.
inline bool Worker::score(Conn& c) {
    const Model* m = fast.model;
    const Batch& batch = fast.batch;
    const size_t k = batch.requests.size();
    if (!fastwire::score_batch(fast.batch, m->s, c.out)) return false;
    Counters& n = L.counters;
    n.requests.fetch_add(k, std::memory_order_relaxed);
    n.rows.fetch_add(static_cast<uint64_t>(batch.n_rows), std::memory_order_relaxed);
    n.calls.fetch_add(1, std::memory_order_relaxed);
    if (k > 1) n.coalesced.fetch_add(k, std::memory_order_relaxed);
    Model* mm = const_cast<Model*>(m);
    mm->hits.fetch_add(k, std::memory_order_relaxed);
    mm->rows.fetch_add(static_cast<uint64_t>(batch.n_rows), std::memory_order_relaxed);
    // Each request's latency: from the read that completed it to its reply, queued now.
    const double took = now_s() - c.last_rx;
    size_t b = 0;
    while (b < cfg.duration_bounds.size() && took > cfg.duration_bounds[b]) ++b;
    mm->durations[b].fetch_add(k, std::memory_order_relaxed);
    mm->duration_ns.fetch_add(static_cast<uint64_t>(took * 1e9) * k, std::memory_order_relaxed);
    fastwire::Tally t;
    const bool flagged = t.add(batch, m->s.threshold);
    const bool keep = cfg.drift_rows > 0 && !mm->sample_full.load(std::memory_order_relaxed);
    if (flagged || keep) {
        std::lock_guard<std::mutex> g(mm->mu);
        if (flagged) {
            mm->flagged.merge(t);
            fastwire::keep_flagged(mm->why, batch, m->s.n_features, fastwire::kAlertRows, m->s.threshold);
        }
        if (keep) {
            mm->sample.add(batch, m->s.n_features, cfg.drift_rows);
            if (static_cast<int64_t>(mm->sample.kept()) >= cfg.drift_rows)
                mm->sample_full.store(true, std::memory_order_relaxed);
        }
    }
    mark_dirty(c);
    return true;
}

// Scores the batched fast frames of c, or hands them over if the core refuses them.
inline void Worker::flush_batch(Conn& c) {
    if (fast.empty()) return;
    if (!score(c)) {
        for (const auto& f : fast.frames) {
            auto b = Block::make(f.second);
            std::memcpy(b->data, c.in.get() + f.first, f.second);
            handoff(c, std::move(b));
        }
    }
    fast.clear();
}

inline void Worker::handoff(Conn& c, std::unique_ptr<Block> body) {
    Event e;
    e.kind = Event::Frame;
    e.conn = c.id;
    e.body = std::move(body);
    e.fds = std::move(c.fds);  // the host pairs them with the frames that name them, in order
    e.peer = c.peer;
    e.uid = c.uid;
    e.gid = c.gid;
    L.emit(std::move(e));
    ++c.queued;
    update_events(c);
}

}  // namespace
}  // namespace pynomaly::netloop
