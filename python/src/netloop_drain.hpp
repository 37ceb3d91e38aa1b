// The native loop's timeouts and draining: a sweep a few times per shortest timeout (rather
// than timers per request) ends connections that are idle, stuck mid-frame, not reading their
// replies, or quiet while the daemon drains. Part of netloop.cpp's one translation unit
// (netloop_worker.hpp).
#pragma once

#include "netloop_worker.hpp"

namespace pynomaly::netloop {
namespace {

inline void Worker::sweep() {
    std::vector<uint64_t> ids;
    ids.reserve(conns.size());
    for (auto& kv : conns) ids.push_back(kv.first);
    for (uint64_t id : ids) {
        Conn* c = find(id);
        if (c != nullptr) expire(*c);
    }
    flush_dirty();
}

// Ends c if one of its timeouts has passed, or if it is quiet while the loop drains.
inline void Worker::expire(Conn& c) {
    const bool quiet = !c.busy() && !c.partial() && !c.pending();
    if (c.closing) {
        if (now - c.closing_since > cfg.write_timeout) close_conn(c, false, true);
    } else if (c.partial_since >= 0 && now - c.partial_since > cfg.frame_timeout) {
        fail(c, "timeout", "frame not completed within " + fmt_g(cfg.frame_timeout) + " s");
    } else if (c.write_blocked && now - c.blocked_since > cfg.write_timeout) {
        L.log(c.id, c.peer, kLogWarning, "timeout",
              "replies not read for " + fmt_g(cfg.write_timeout) + " s; dropping the client");
        close_conn(c, false, true);
    } else if (quiet && now - c.last_rx > cfg.idle_timeout) {
        L.log(c.id, c.peer, kLogInfo, "", "idle for " + fmt_g(cfg.idle_timeout) + " s; closing");
        close_conn(c, false, true);
    } else if (draining && quiet && now - c.last_rx > 0.05) {
        close_conn(c, false, true);
    }
}

}  // namespace
}  // namespace pynomaly::netloop
