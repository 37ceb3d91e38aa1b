// The native connection loop (see netloop.hpp for what it owns and why). Each thread has its own
// epoll set, its connections, and a command queue the host fills (reply bytes, counts); the
// listening socket is in every set with EPOLLEXCLUSIVE, so the kernel spreads new connections.
// A loop iteration reads every ready connection once, parses the frames, scores the fast ones
// of one connection in one native call per batch, and writes each touched connection once at
// the end of the iteration (Redis's order: a client wakes once for all its replies).
#include "netloop.hpp"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace pynomaly::netloop {

using fastwire::Batch;
using fastwire::Request;

namespace {

// Receive buffer per connection; larger frames get a Block. 128 KiB holds a 1k-row request of up
// to 16 float64 features, which is then parsed and scored from here, read by one recvmsg. Pages
// of it are touched only as far as a connection's frames reach (compaction moves data to the front).
constexpr size_t kBuf = 128 * 1024;
constexpr size_t kMinFree = 16 * 1024;     // compact the buffer below this much free room
constexpr size_t kReserveFrom = 256 * 1024;  // frames from this size count against max_rx_bytes
constexpr size_t kHighWater = 64 * 1024;   // unsent replies above this: stop reading (asyncio's default)
constexpr size_t kLowWater = 16 * 1024;    // ... until they fall to this
constexpr uint64_t kListen = 0, kWake = 1;  // epoll tags that are not connections
constexpr int kLogInfo = 20, kLogWarning = 30;

double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

std::string fmt_g(double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
}

uint32_t be32(const unsigned char* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t r = ::write(fd, &one, 8);
    (void)r;  // EAGAIN: the counter is already non-zero, the reader wakes anyway
}

struct Conn {
    uint64_t id = 0;
    int fd = -1;
    std::string peer;
    int64_t uid = -1, gid = -1;  // SO_PEERCRED (-1: unknown)
    bool may_fast = true;         // the loop may answer this peer's detects (its role allows them)
    std::unique_ptr<unsigned char[]> in;  // kBuf bytes
    size_t start = 0, end = 0;            // unparsed bytes in[start, end)
    std::unique_ptr<Block> big;           // a large frame being received into its own memory
    Fds fds;                              // descriptors received, not yet handed over with a frame
    size_t big_have = 0, reserved = 0;
    std::string out;
    size_t out_off = 0;
    double last_rx = 0, partial_since = -1, blocked_since = -1, closing_since = -1;
    int64_t queued = 0, host_in_flight = 0;  // frames handed over and not taken; taken, not answered
    bool eof = false, closing = false, write_blocked = false, dirty = false;
    uint32_t events = 0;  // registered epoll events

    size_t pending() const { return out.size() - out_off; }
    bool busy() const { return queued > 0 || host_in_flight > 0; }
    bool partial() const { return end > start || big != nullptr; }
};

struct Command {
    enum Kind { Send, Update, Close, Drain, Stop } kind;
    explicit Command(Kind k) : kind(k) {}
    uint64_t conn = 0;
    std::string bytes;
    int64_t taken = 0, in_flight = 0;
};

using Table = std::unordered_map<std::string, ModelPtr>;

bool contains(const std::vector<uint32_t>& v, uint32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// Why a new connection is refused (too_many_connections), or "": the rule and the messages of
// pynomaly_daemon.admission.ConnectionLimits.refusal. open_total and open_uid count it.
std::string connection_refusal(const Config& cfg, bool have_cred, uint32_t uid, uint32_t gid, int64_t open_total,
                               int64_t open_uid) {
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

}  // namespace

Fds& Fds::operator=(Fds&& o) noexcept {
    if (this != &o) {
        close_all();
        fds.swap(o.fds);
    }
    return *this;
}

void Fds::close_all() {
    for (int fd : fds) ::close(fd);
    fds.clear();
}

std::unique_ptr<Block> Block::make(size_t n) {
    auto b = std::make_unique<Block>();
    b->mem.reset(new unsigned char[n + 16]);  // new[] storage is 16-byte aligned
    const size_t pad = (8 - n % 8) % 8;
    b->data = b->mem.get() + pad;
    b->size = n;
    return b;
}

struct Worker;

struct Loop::Impl {
    Config cfg;
    std::vector<std::unique_ptr<Worker>> workers;
    int host_fd = -1;
    std::mutex ev_mu;
    std::vector<Event> events;
    std::mutex table_mu;
    std::shared_ptr<const Table> table = std::make_shared<Table>();
    std::atomic<uint64_t> table_gen{1};
    std::atomic<int64_t> rx_reserved{0};
    std::atomic<uint64_t> next_seq{2};  // ids 0 and 1 are kListen and kWake
    std::mutex uid_mu;
    std::unordered_map<int64_t, int64_t> uid_conns;  // open connections per peer uid (-1: unknown), all threads

    // Count a connection of `uid` in (delta 1) or out (-1); its uid's open connections after.
    int64_t count_uid(int64_t uid, int64_t delta) {
        std::lock_guard<std::mutex> g(uid_mu);
        const int64_t n = uid_conns[uid] += delta;
        if (n == 0) uid_conns.erase(uid);
        return n;
    }
    Counters counters;
    bool started = false, stopped = false;

    void emit(Event e) {
        bool was_empty;
        {
            std::lock_guard<std::mutex> g(ev_mu);
            was_empty = events.empty();
            events.push_back(std::move(e));
        }
        if (was_empty) signal_fd(host_fd);
    }
    void log(uint64_t conn, const std::string& peer, int level, std::string code, std::string message,
             int64_t uid = -1, int64_t gid = -1) {
        Event e;
        e.kind = Event::Log;
        e.conn = conn;
        e.level = level;
        e.code = std::move(code);
        e.message = std::move(message);
        e.peer = peer;
        e.uid = uid;
        e.gid = gid;
        emit(std::move(e));
    }
    Worker& owner(uint64_t conn) { return *workers[conn % workers.size()]; }
};

struct Worker {
    Loop::Impl& L;
    const Config& cfg;
    uint64_t index;
    int ep = -1, wake = -1;
    std::thread thread;
    std::mutex mu;
    std::vector<Command> cmds;
    std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
    std::vector<uint64_t> dirty;
    std::shared_ptr<const Table> table;
    uint64_t table_gen = 0;
    Batch batch;
    std::vector<std::pair<size_t, uint32_t>> batch_frames;  // (offset, length) of each batched frame
    const Model* batch_model = nullptr;
    bool draining = false, stopping = false;
    double now = 0, last_sweep = 0;

    Worker(Loop::Impl& l, uint64_t i) : L(l), cfg(l.cfg), index(i) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (ep < 0 || wake < 0) throw std::runtime_error("netloop: cannot create epoll or eventfd");
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = kWake;
        epoll_ctl(ep, EPOLL_CTL_ADD, wake, &ev);
        ev.events = EPOLLIN | EPOLLEXCLUSIVE;
        ev.data.u64 = kListen;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cfg.listen_fd, &ev) != 0)
            throw std::runtime_error("netloop: cannot watch the listening socket");
    }
    ~Worker() {
        for (auto& kv : conns) ::close(kv.second->fd);
        if (ep >= 0) ::close(ep);
        if (wake >= 0) ::close(wake);
    }

    void post(Command c) {
        bool was_empty;
        {
            std::lock_guard<std::mutex> g(mu);
            was_empty = cmds.empty();
            cmds.push_back(std::move(c));
        }
        if (was_empty) signal_fd(wake);
    }

    // ---- the thread ----------------------------------------------------------------------
    void run() {
        // No exception leaves the thread: a failure on one connection closes that connection;
        // one outside any connection is logged and the loop goes on.
        std::vector<epoll_event> evs(256);
        const double tick = std::clamp(std::min({cfg.idle_timeout, cfg.frame_timeout, cfg.write_timeout}) / 4, 0.01, 1.0);
        while (!stopping) {
            const int timeout_ms = static_cast<int>((draining ? 0.01 : tick) * 1000);
            const int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), timeout_ms);
            now = now_s();
            try {
                refresh_table();
                for (int i = 0; i < n; ++i) {
                    const uint64_t tag = evs[i].data.u64;
                    if (tag == kWake) {
                        commands();
                    } else if (tag == kListen) {
                        accept_all();
                    } else {
                        on_event(tag, evs[i].events);
                    }
                }
                flush_dirty();
                if (now - last_sweep >= (draining ? 0.01 : tick)) {
                    last_sweep = now;
                    sweep();
                }
            } catch (const std::exception& e) {
                L.log(0, "netloop", kLogWarning, "internal", std::string("connection loop: ") + e.what());
            }
        }
        for (auto& kv : conns) close_conn(*kv.second, false, false);
        conns.clear();
    }

    void refresh_table() {
        const uint64_t g = L.table_gen.load(std::memory_order_acquire);
        if (g != table_gen) {
            std::lock_guard<std::mutex> lk(L.table_mu);
            table = L.table;
            table_gen = g;
        }
    }

    const Model* lookup(const Request& q) const {
        const std::string key = Loop::model_key(q.name, q.name_len, q.has_version, q.version_neg, q.version);
        auto it = table->find(key);
        return it == table->end() ? nullptr : it->second.get();
    }

    void commands() {
        uint64_t drained;
        ssize_t r = ::read(wake, &drained, 8);
        (void)r;
        std::vector<Command> todo;
        {
            std::lock_guard<std::mutex> g(mu);
            todo.swap(cmds);
        }
        std::vector<Conn*> touched;
        for (Command& c : todo) {
            switch (c.kind) {
                case Command::Stop:
                    stopping = true;
                    break;
                case Command::Drain:
                    if (!draining) {
                        draining = true;
                        epoll_ctl(ep, EPOLL_CTL_DEL, cfg.listen_fd, nullptr);
                    }
                    break;
                case Command::Send: {
                    Conn* k = find(c.conn);
                    if (k == nullptr || k->closing) break;
                    k->out.append(c.bytes);
                    mark_dirty(*k);
                    break;
                }
                case Command::Close: {
                    Conn* k = find(c.conn);
                    if (k != nullptr) shut(*k);
                    break;
                }
                case Command::Update: {
                    Conn* k = find(c.conn);
                    if (k == nullptr) break;
                    k->queued -= c.taken;
                    k->host_in_flight = c.in_flight;
                    touched.push_back(k);
                    break;
                }
            }
        }
        // After every command of the batch: a reply sent with its count is written before the
        // connection may close for being done.
        for (Conn* k : touched) {
            update_events(*k);
            mark_dirty(*k);
        }
    }

    Conn* find(uint64_t id) {
        auto it = conns.find(id);
        return it == conns.end() ? nullptr : it->second.get();
    }

    void mark_dirty(Conn& c) {
        if (!c.dirty) {
            c.dirty = true;
            dirty.push_back(c.id);
        }
    }

    // ---- connections ---------------------------------------------------------------------
    void accept_all() {
        for (int i = 0; i < 64 && !draining; ++i) {
            const int fd = accept4(cfg.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) return;  // EAGAIN (another thread took it), or a transient error
            auto c = std::make_unique<Conn>();
            // Routed by id: id % threads is this worker (see Impl::owner).
            c->id = L.next_seq.fetch_add(1) * L.workers.size() + index;
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
            if (cfg.check_uids &&
                (!have_cred || std::find(cfg.allowed_uids.begin(), cfg.allowed_uids.end(), cred.uid) == cfg.allowed_uids.end())) {
                fail(k, "forbidden", "uid " + (have_cred ? std::to_string(cred.uid) : std::string("None")) +
                                         " is not allowed to use this daemon");
            } else {
                const std::string why = connection_refusal(cfg, have_cred, cred.uid, cred.gid, open, open_uid);
                if (!why.empty()) fail(k, "too_many_connections", why);
            }
        }
    }

    void on_event(uint64_t id, uint32_t events) {
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

    void on_readable(Conn& c) {
        if (!c.big) {
            if (kBuf - c.end < kMinFree) compact(c);
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
    ssize_t receive(Conn& c, unsigned char* to, size_t n) {
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
    bool after_read(Conn& c, ssize_t n) {
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

    void compact(Conn& c) {
        if (c.start == 0) return;
        std::memmove(c.in.get(), c.in.get() + c.start, c.end - c.start);
        c.end -= c.start;
        c.start = 0;
    }

    void parse(Conn& c) {
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
                if (batch_model != nullptr && (m != batch_model || !fastwire::fits(batch, q, cfg.fast_rows)))
                    flush_batch(c);
                batch_model = m;
                fastwire::add(batch, q);
                batch_frames.emplace_back(p + 4, len);
            } else if (m != nullptr) {
                // Scored alone, where it lies in the receive buffer: no copy of the frame
                // (score_batch copies the rows only if they are misaligned for their type).
                flush_batch(c);
                batch_model = m;
                fastwire::add(batch, q);
                batch_frames.emplace_back(p + 4, len);
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
        if (c.start == c.end) {
            c.start = c.end = 0;
            c.partial_since = -1;
            return;
        }
        if (c.partial_since < 0) c.partial_since = now;
        if (c.end - c.start < 4) return;
        const size_t need = 4 + static_cast<size_t>(be32(buf + c.start));
        if (need <= kBuf - c.start) return;
        if (need <= kBuf) {
            compact(c);
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
        std::memcpy(c.big->data, buf + c.start + 4, c.big_have);
        c.start = c.end = 0;
    }

    // The model that answers a frame the loop may score itself, with the frame parsed into q;
    // nullptr for any other frame (the host's).
    const Model* servable(const unsigned char* body, uint32_t len, Request& q) const {
        if (cfg.fast_rows <= 0 || !fastwire::parse_detect(body, len, q, std::max(cfg.fast_rows, cfg.alone_rows)))
            return nullptr;
        const Model* m = lookup(q);
        if (m == nullptr || q.d != m->s.n_features || !fastwire::all_finite(q)) return nullptr;
        return m;
    }

    // A whole frame in a block of its own: scored here when the loop may (one native call, the
    // rows read in place), else handed over without a copy.
    void serve_alone(Conn& c, std::unique_ptr<Block> b) {
        Request q;
        const Model* m = c.may_fast ? servable(b->data, static_cast<uint32_t>(b->size), q) : nullptr;
        if (m == nullptr) {
            handoff(c, std::move(b));
            return;
        }
        batch_model = m;
        fastwire::add(batch, q);
        if (!score(c)) handoff(c, std::move(b));
        batch.clear();
        batch_frames.clear();
        batch_model = nullptr;
    }

    // Scores the batch into c's replies, with the counts; false when the core refuses the rows.
    bool score(Conn& c) {
        const Model* m = batch_model;
        const size_t k = batch.requests.size();
        if (!fastwire::score_batch(batch, m->s, c.out)) return false;
        Counters& n = L.counters;
        n.requests.fetch_add(k, std::memory_order_relaxed);
        n.rows.fetch_add(static_cast<uint64_t>(batch.n_rows), std::memory_order_relaxed);
        n.calls.fetch_add(1, std::memory_order_relaxed);
        if (k > 1) n.coalesced.fetch_add(k, std::memory_order_relaxed);
        Model* mm = const_cast<Model*>(m);
        mm->hits.fetch_add(k, std::memory_order_relaxed);
        mm->rows.fetch_add(static_cast<uint64_t>(batch.n_rows), std::memory_order_relaxed);
        fastwire::Tally t;
        if (t.add(batch, m->s.threshold)) {
            std::lock_guard<std::mutex> g(mm->mu);
            mm->flagged.merge(t);
        }
        mark_dirty(c);
        return true;
    }

    void release_reserve(Conn& c) {
        if (c.reserved) {
            L.rx_reserved.fetch_sub(static_cast<int64_t>(c.reserved));
            c.reserved = 0;
        }
    }

    // Scores the batched fast frames of c, or hands them over if the core refuses them.
    void flush_batch(Conn& c) {
        if (batch.requests.empty()) return;
        if (!score(c)) {
            for (const auto& f : batch_frames) {
                auto b = Block::make(f.second);
                std::memcpy(b->data, c.in.get() + f.first, f.second);
                handoff(c, std::move(b));
            }
        }
        batch.clear();
        batch_frames.clear();
        batch_model = nullptr;
    }

    void handoff(Conn& c, std::unique_ptr<Block> body) {
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

    // Reading is on unless the client is done sending, is being closed, leaves its replies
    // unread, or has as many requests with the host as a connection may.
    void update_events(Conn& c) {
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

    void flush_dirty() {
        std::vector<uint64_t> ids;
        ids.swap(dirty);
        for (uint64_t id : ids) {
            Conn* c = find(id);
            if (c == nullptr) continue;
            c->dirty = false;
            write_out(*c);
        }
    }

    void write_out(Conn& c) {
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
    void maybe_done(Conn& c) {
        if (c.pending()) return;
        if (c.closing || (c.eof && !c.busy())) close_conn(c, false, false);
    }

    // A final error reply, then the close: the stream cannot be resynchronised.
    void fail(Conn& c, const std::string& code, const std::string& message) {
        if (c.closing) return;
        L.log(c.id, c.peer, kLogWarning, code, message, c.uid, c.gid);
        fastwire::put_error(c.out, 0, code, message);
        shut(c);
    }

    // No more reading: close once the replies already queued are written.
    void shut(Conn& c) {
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

    void close_conn(Conn& c, bool lost, bool quiet) {
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

    // Timeouts, checked a few times per shortest timeout rather than with timers per request.
    void sweep() {
        std::vector<uint64_t> ids;
        ids.reserve(conns.size());
        for (auto& kv : conns) ids.push_back(kv.first);
        for (uint64_t id : ids) {
            Conn* c = find(id);
            if (c == nullptr) continue;
            if (c->closing) {
                if (now - c->closing_since > cfg.write_timeout) close_conn(*c, false, true);
            } else if (c->partial_since >= 0 && now - c->partial_since > cfg.frame_timeout) {
                fail(*c, "timeout", "frame not completed within " + fmt_g(cfg.frame_timeout) + " s");
            } else if (c->write_blocked && now - c->blocked_since > cfg.write_timeout) {
                L.log(id, c->peer, kLogWarning, "timeout",
                      "replies not read for " + fmt_g(cfg.write_timeout) + " s; dropping the client");
                close_conn(*c, false, true);
            } else if (!c->busy() && !c->partial() && !c->pending() && now - c->last_rx > cfg.idle_timeout) {
                L.log(id, c->peer, kLogInfo, "", "idle for " + fmt_g(cfg.idle_timeout) + " s; closing");
                close_conn(*c, false, true);
            } else if (draining && !c->busy() && !c->partial() && !c->pending() && now - c->last_rx > 0.05) {
                close_conn(*c, false, true);
            }
        }
        flush_dirty();
    }
};

// ---- Loop ----------------------------------------------------------------------------------
Loop::Loop(const Config& cfg) : impl_(std::make_unique<Impl>()) {
    Impl& L = *impl_;
    L.cfg = cfg;
    if (L.cfg.threads < 1) L.cfg.threads = 1;
    L.host_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (L.host_fd < 0) throw std::runtime_error("netloop: cannot create an eventfd");
    for (int i = 0; i < L.cfg.threads; ++i) L.workers.push_back(std::make_unique<Worker>(L, static_cast<uint64_t>(i)));
}

Loop::~Loop() {
    stop();
    impl_->workers.clear();
    ::close(impl_->host_fd);
}

void Loop::start() {
    Impl& L = *impl_;
    if (L.started) return;
    L.started = true;
    for (auto& w : L.workers) w->thread = std::thread([p = w.get()] { p->run(); });
}

int Loop::notify_fd() const { return impl_->host_fd; }

std::vector<Event> Loop::take() {
    Impl& L = *impl_;
    uint64_t drained;
    ssize_t r = ::read(L.host_fd, &drained, 8);
    (void)r;
    std::vector<Event> out;
    std::lock_guard<std::mutex> g(L.ev_mu);
    out.swap(L.events);
    return out;
}

void Loop::send(uint64_t conn, std::string bytes) {
    Command c(Command::Send);
    c.conn = conn;
    c.bytes = std::move(bytes);
    impl_->owner(conn).post(std::move(c));
}

void Loop::close(uint64_t conn) {
    Command c(Command::Close);
    c.conn = conn;
    impl_->owner(conn).post(std::move(c));
}

void Loop::update(uint64_t conn, int64_t taken, int64_t in_flight) {
    Command c(Command::Update);
    c.conn = conn;
    c.taken = taken;
    c.in_flight = in_flight;
    impl_->owner(conn).post(std::move(c));
}

std::string Loop::model_key(const uint8_t* name, size_t len, bool has_version, bool neg, uint64_t version) {
    std::string k(reinterpret_cast<const char*>(name), len);
    k.push_back('\0');
    if (!has_version) {
        k.push_back('n');
    } else {
        k.push_back(neg ? '-' : '+');
        k.append(reinterpret_cast<const char*>(&version), 8);
    }
    return k;
}

void Loop::set_model(const std::string& key, ModelPtr m) {
    Impl& L = *impl_;
    std::lock_guard<std::mutex> g(L.table_mu);
    auto t = std::make_shared<Table>(*L.table);
    (*t)[key] = std::move(m);
    L.table = std::move(t);
    L.table_gen.fetch_add(1, std::memory_order_release);
}

void Loop::clear_models() {
    Impl& L = *impl_;
    std::lock_guard<std::mutex> g(L.table_mu);
    L.table = std::make_shared<Table>();
    L.table_gen.fetch_add(1, std::memory_order_release);
}

std::vector<Loop::Hits> Loop::take_hits() {
    Impl& L = *impl_;
    std::shared_ptr<const Table> t;
    {
        std::lock_guard<std::mutex> g(L.table_mu);
        t = L.table;
    }
    std::vector<Hits> out;
    for (const auto& kv : *t) {
        Model& m = *kv.second;
        const uint64_t n = m.hits.exchange(0, std::memory_order_relaxed);
        if (!n) continue;
        Hits h;
        h.model = kv.second;
        h.requests = n;
        h.rows = m.rows.exchange(0, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> g(m.mu);
            h.flagged = m.flagged;
            m.flagged = fastwire::Tally{};
        }
        out.push_back(std::move(h));
    }
    return out;
}

void Loop::drain() {
    for (auto& w : impl_->workers) w->post(Command(Command::Drain));
}

void Loop::stop() {
    Impl& L = *impl_;
    if (L.stopped) return;
    L.stopped = true;
    for (auto& w : L.workers) w->post(Command(Command::Stop));
    for (auto& w : L.workers)
        if (w->thread.joinable()) w->thread.join();
}

const Counters& Loop::counters() const { return impl_->counters; }

}  // namespace pynomaly::netloop
