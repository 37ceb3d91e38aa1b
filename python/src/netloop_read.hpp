// The native loop's accepting and reading: new connections and their admission (the peer-uid
// allow-list, the connection limits), readiness events, and reads into a connection's buffer or
// large-frame block, with the descriptors a client passes. Private to netloop.cpp
// (netloop_worker.hpp says why).
#pragma once

#include "netloop_worker.hpp"

namespace pynomaly::netloop {
namespace {

// Why a new connection is refused (too_many_connections), or "": the rule and the messages of
// pynomaly_daemon.admission.ConnectionLimits.refusal. open_total and open_uid count it.
inline std::string connection_refusal(const Config& cfg, bool have_cred, uint32_t uid, uint32_t gid,
                                      int64_t open_total, int64_t open_uid) {
    if (have_cred && (contains(cfg.admin_uids, uid) || contains(cfg.admin_gids, gid))) {
        if (open_total > cfg.max_connections)
            return "the daemon serves at most " + std::to_string(cfg.max_connections) + " connections";
        return "";
    }
    if (open_uid > cfg.max_per_uid)
        return "uid " + (have_cred ? std::to_string(uid) : std::string("None")) + " holds " +
               std::to_string(cfg.max_per_uid) +
               " connections, the most a uid without the admin role may (--max-connections-per-uid)";
    const int64_t others = std::max<int64_t>(0, cfg.max_connections - cfg.admin_reserve);
    if (open_total > others)
        return "the daemon serves at most " + std::to_string(others) +
               " connections to peers without the admin role (of " + std::to_string(cfg.max_connections) + ", " +
               std::to_string(cfg.admin_reserve) + " are kept for admins: --admin-connections)";
    return "";
}

inline void Worker::accept_all() {
    for (int i = 0; i < 64 && !draining; ++i) {
        const int fd = accept4(cfg.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;  // EAGAIN (another thread took it), or a transient error
        auto c = std::make_unique<Conn>();
        // Routed by id: id % threads is this worker (see Loop::Impl::owner).
        c->id = L.next_seq.fetch_add(1) * static_cast<uint64_t>(cfg.threads) + index;
        c->fd = fd;
        c->in.reset(new unsigned char[kBuf]);
        c->last_rx = now;
        ucred cred{};
        socklen_t len = sizeof cred;
        const bool have_cred = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
        c->peer = have_cred ? "pid=" + std::to_string(cred.pid) + " uid=" + std::to_string(cred.uid) : "client";
        if (have_cred) {
            c->uid = cred.uid;
            c->gid = cred.gid;
        }
        if (cfg.check_fast) c->may_fast = have_cred && (contains(cfg.fast_uids, cred.uid) || contains(cfg.fast_gids, cred.gid));
        L.counters.connections_total.fetch_add(1, std::memory_order_relaxed);
        const int64_t open = L.counters.connections.fetch_add(1, std::memory_order_relaxed) + 1;
        const int64_t open_uid = L.count_uid(c->uid, 1);
        Conn& k = *c;
        conns.emplace(k.id, std::move(c));
        k.events = EPOLLIN;
        epoll_event ev{};
        ev.events = k.events;
        ev.data.u64 = k.id;
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        admit(k, have_cred, cred, open, open_uid);
    }
}

// Refuses a connection just accepted (a final error, then the close) unless its peer may use
// the daemon and the connection limits leave room for it.
inline void Worker::admit(Conn& k, bool have_cred, const ucred& cred, int64_t open, int64_t open_uid) {
    if (cfg.check_uids && (!have_cred || !contains(cfg.allowed_uids, cred.uid))) {
        fail(k, "forbidden", "uid " + (have_cred ? std::to_string(cred.uid) : std::string("None")) +
                                 " is not allowed to use this daemon");
        return;
    }
    const std::string why = connection_refusal(cfg, have_cred, cred.uid, cred.gid, open, open_uid);
    if (!why.empty()) fail(k, "too_many_connections", why);
}

inline void Worker::on_event(uint64_t id, uint32_t events) {
    Conn* c = find(id);
    if (c == nullptr) return;
    try {
        if (events & EPOLLOUT) write_out(*c);
        if ((c = find(id)) == nullptr) return;
        if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            if (c->events & EPOLLIN) {
                on_readable(*c);
            } else if ((events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN)) {
                close_conn(*c, true, false);  // gone while we were not reading from it
            }
        }
    } catch (const std::exception& e) {
        if ((c = find(id)) != nullptr) {
            L.log(id, c->peer, kLogWarning, "internal", std::string("connection dropped: ") + e.what());
            close_conn(*c, false, true);
        }
    }
}

inline void Worker::on_readable(Conn& c) {
    if (!c.big) {
        if (kBuf - c.end < kMinFree) c.compact();
        const ssize_t n = receive(c, c.in.get() + c.end, kBuf - c.end);
        if (!after_read(c, n)) return;
        c.end += static_cast<size_t>(n);
        parse(c);
        // A large frame just moved to memory of its own: the rest of it has usually
        // arrived too, so read it now rather than after another epoll_wait.
        if (!c.big || c.closing) return;
    }
    const ssize_t n = receive(c, c.big->data + c.big_have, c.big->size - c.big_have);
    if (!after_read(c, n)) return;
    c.big_have += static_cast<size_t>(n);
    if (c.big_have == c.big->size) {
        serve_alone(c, std::move(c.big));
        release_reserve(c);
        c.big_have = 0;
        c.partial_since = -1;
        update_events(c);
    }
}

// read(2) that keeps the descriptors a client passes with SCM_RIGHTS (PROTOCOL.md, "Shared
// memory") in c.fds, in the order they came, for the host. A plain read would make the
// kernel close them; more than kMaxFds held, or more than fit the control buffer (the
// kernel closes those), refuse the client: -2, after fail().
inline ssize_t Worker::receive(Conn& c, unsigned char* to, size_t n) {
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * kMaxFds)];
    iovec iov{to, n};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl;
    m.msg_controllen = sizeof ctl;
    const ssize_t r = ::recvmsg(c.fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (r < 0 || m.msg_controllen == 0) return r;
    bool other = false;
    for (cmsghdr* h = CMSG_FIRSTHDR(&m); h != nullptr; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
            const size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            const unsigned char* p = CMSG_DATA(h);
            for (size_t i = 0; i < k; ++i) {
                int fd;
                std::memcpy(&fd, p + i * sizeof(int), sizeof fd);
                c.fds.fds.push_back(fd);
            }
        } else {
            other = true;  // no other kind is asked for (no SO_PASSCRED): not expected
        }
    }
    if ((m.msg_flags & MSG_CTRUNC) || c.fds.fds.size() > kMaxFds || other) {
        fail(c, "bad_request", "too many file descriptors: at most " + std::to_string(kMaxFds) +
                                   " may wait for the frames that name them (one per shared-memory detect)");
        return -2;
    }
    return r;
}

// Handles EOF and errors of a read; true when n bytes arrived.
inline bool Worker::after_read(Conn& c, ssize_t n) {
    if (n == -2) return false;  // refused by receive()
    if (n > 0) {
        c.last_rx = now;
        return true;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    if (n < 0) {
        close_conn(c, true, false);
        return false;
    }
    // The client shut down its writing side: answer what it sent, then close.
    c.eof = true;
    update_events(c);
    maybe_done(c);
    return false;
}

}  // namespace
}  // namespace pynomaly::netloop
