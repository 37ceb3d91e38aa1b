// The native loop's replies and closing: each connection touched in a loop iteration is written
// once at its end (replies coalesced), reading stops while a client leaves too much unread
// (backpressure), and a connection ends with a final error, after its last reply, or at once.
// Part of netloop.cpp's one translation unit (netloop_worker.hpp).
#pragma once

#include "netloop_worker.hpp"

namespace pynomaly::netloop {
namespace {

// c has replies to write at the end of this loop iteration.
inline void Worker::mark_dirty(Conn& c) {
    if (!c.dirty) {
        c.dirty = true;
        dirty.push_back(c.id);
    }
}

// Reading is on unless the client is done sending, is being closed, leaves its replies
// unread, or has as many requests with the host as a connection may.
inline void Worker::update_events(Conn& c) {
    const bool read = !c.eof && !c.closing && !c.write_blocked && c.queued + c.host_in_flight < cfg.conn_max_in_flight;
    const uint32_t want = (read ? EPOLLIN : 0u) | (c.pending() ? EPOLLOUT : 0u);
    if (want != c.events) {
        epoll_event ev{};
        ev.events = want;
        ev.data.u64 = c.id;
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
        c.events = want;
    }
}

inline void Worker::flush_dirty() {
    std::vector<uint64_t> ids;
    ids.swap(dirty);
    for (uint64_t id : ids) {
        Conn* c = find(id);
        if (c == nullptr) continue;
        c->dirty = false;
        write_out(*c);
    }
}

inline void Worker::write_out(Conn& c) {
    while (c.pending()) {
        const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            close_conn(c, true, false);  // the client went away
            return;
        }
        c.out_off += static_cast<size_t>(n);
    }
    if (!c.pending()) {
        c.out.clear();
        c.out_off = 0;
    } else if (c.out_off > (1u << 20)) {
        c.out.erase(0, c.out_off);
        c.out_off = 0;
    }
    const size_t left = c.pending();
    if (!c.write_blocked && left > kHighWater) {
        c.write_blocked = true;
        c.blocked_since = now;
    } else if (c.write_blocked && left <= kLowWater) {
        c.write_blocked = false;
        c.blocked_since = -1;
    }
    update_events(c);
    maybe_done(c);
}

// Close a connection that has nothing left to do: after its final error, or after EOF.
inline void Worker::maybe_done(Conn& c) {
    if (c.pending()) return;
    if (c.closing || (c.eof && !c.busy())) close_conn(c, false, false);
}

// A final error reply, then the close: the stream cannot be resynchronised.
inline void Worker::fail(Conn& c, const std::string& code, const std::string& message) {
    if (c.closing) return;
    L.log(c.id, c.peer, kLogWarning, code, message, c.uid, c.gid);
    fastwire::put_error(c.out, 0, code, message);
    shut(c);
}

// No more reading: close once the replies already queued are written.
inline void Worker::shut(Conn& c) {
    if (c.closing) return;
    c.closing = true;
    c.closing_since = now;
    c.partial_since = -1;
    c.start = c.end = 0;
    c.big.reset();
    c.fds.close_all();
    release_reserve(c);
    update_events(c);
    mark_dirty(c);
}

// Gives back what a large frame being received held of max_rx_bytes.
inline void Worker::release_reserve(Conn& c) {
    if (c.reserved) {
        L.rx_reserved.fetch_sub(static_cast<int64_t>(c.reserved));
        c.reserved = 0;
    }
}

inline void Worker::close_conn(Conn& c, bool lost, bool quiet) {
    if (c.partial() && !c.closing && !draining && !quiet) {
        const size_t have = c.big ? c.big_have + 4 : c.end - c.start;
        L.log(c.id, c.peer, kLogInfo, "",
              "connection closed in the middle of a frame (" + std::to_string(have) + " bytes)");
    }
    (void)lost;
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
    c.fds.close_all();
    release_reserve(c);
    L.counters.connections.fetch_sub(1, std::memory_order_relaxed);
    L.count_uid(c.uid, -1);
    Event e;
    e.kind = Event::Closed;
    e.conn = c.id;
    L.emit(std::move(e));
    if (!stopping) conns.erase(c.id);  // while stopping, run() clears the map itself
}

}  // namespace
}  // namespace pynomaly::netloop
