// The native connection loop (see netloop.hpp for what it owns and why). Each thread has its own
// epoll set, its connections, and a command queue the host fills (reply bytes, counts); the
// listening socket is in every set with EPOLLEXCLUSIVE, so the kernel spreads new connections.
// A loop iteration reads every ready connection once, parses the frames, scores the fast ones
// of one connection in one native call per batch, and writes each touched connection once at
// the end of the iteration (Redis's order: a client wakes once for all its replies).
//
// This file holds the thread, the host's commands to it and the Loop the host holds; a
// Worker's other parts are in the headers below, one concern each, private to this file
// (netloop_worker.hpp says why).
#include "netloop.hpp"

#include <exception>

#include "netloop_drain.hpp"
#include "netloop_frame.hpp"
#include "netloop_read.hpp"
#include "netloop_reply.hpp"
#include "netloop_worker.hpp"

namespace pynomaly::netloop {

struct Loop::Impl : Shared {
    std::vector<std::unique_ptr<Worker>> workers;
    bool started = false, stopped = false;

    Worker& owner(uint64_t conn) { return *workers[conn % workers.size()]; }
};

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

// ---- Worker: the thread and its commands ----------------------------------------------------
inline Worker::Worker(Shared& l, uint64_t i) : L(l), cfg(l.cfg), index(i) {
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

inline Worker::~Worker() {
    for (auto& kv : conns) ::close(kv.second->fd);
    if (ep >= 0) ::close(ep);
    if (wake >= 0) ::close(wake);
}

inline void Worker::post(Command c) {
    bool was_empty;
    {
        std::lock_guard<std::mutex> g(mu);
        was_empty = cmds.empty();
        cmds.push_back(std::move(c));
    }
    if (was_empty) signal_fd(wake);
}

inline void Worker::run() {
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

inline void Worker::refresh_table() {
    const uint64_t g = L.table_gen.load(std::memory_order_acquire);
    if (g != table_gen) {
        std::lock_guard<std::mutex> lk(L.table_mu);
        table = L.table;
        table_gen = g;
    }
}

inline void Worker::commands() {
    uint64_t drained;
    ssize_t r = ::read(wake, &drained, 8);
    (void)r;
    std::vector<Command> todo;
    {
        std::lock_guard<std::mutex> g(mu);
        todo.swap(cmds);
    }
    std::vector<Conn*> touched;
    for (Command& c : todo) apply(c, touched);
    // After every command of the batch: a reply sent with its count is written before the
    // connection may close for being done.
    for (Conn* k : touched) {
        update_events(*k);
        mark_dirty(*k);
    }
}

inline void Worker::apply(Command& c, std::vector<Conn*>& touched) {
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
        for (size_t i = 0; i < h.durations.size(); ++i)
            h.durations[i] = m.durations[i].exchange(0, std::memory_order_relaxed);
        h.duration_ns = m.duration_ns.exchange(0, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> g(m.mu);
            h.flagged = m.flagged;
            m.flagged = fastwire::Tally{};
            std::swap(h.sample, m.sample);
            m.sample_full.store(false, std::memory_order_relaxed);
            std::swap(h.why, m.why);
        }
        // Batches served after the sample filled did not pass through Sample::add: the rows
        // served meanwhile, kept or not, are the ones counted above.
        if (h.sample.kept() > 0 || h.sample.served > 0) h.sample.served = h.rows;
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
