// The inside of the native connection loop (netloop.hpp says what it owns and why): a loop
// thread (Worker), its connections (Conn), the host's commands to it, and the state the threads
// share with each other and the host (Shared). The Worker's parts are defined by concern in
// netloop_read.hpp (accept, read), netloop_frame.hpp (frames: scored here or handed over),
// netloop_reply.hpp (write, close) and netloop_drain.hpp (timeouts, drain).
//
// Private to netloop.cpp, their one includer, hence the unnamed namespace: the per-request path
// (read, parse, score, write) stays in one translation unit with internal linkage, so GCC inlines
// it as it did when it was one file (functions called once; the build has no LTO).
#pragma once

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "netloop.hpp"

namespace pynomaly::netloop {
namespace {

using fastwire::Batch;
using fastwire::Request;

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

inline double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

inline std::string fmt_g(double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
}

inline uint32_t be32(const unsigned char* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

inline void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t r = ::write(fd, &one, 8);
    (void)r;  // EAGAIN: the counter is already non-zero, the reader wakes anyway
}

inline bool contains(const std::vector<uint32_t>& v, uint32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

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
    // Moves the unparsed bytes to the front of the buffer.
    void compact() {
        if (start == 0) return;
        std::memmove(in.get(), in.get() + start, end - start);
        end -= start;
        start = 0;
    }
};

struct Command {
    enum Kind { Send, Update, Close, Drain, Stop } kind;
    explicit Command(Kind k) : kind(k) {}
    uint64_t conn = 0;
    std::string bytes;
    int64_t taken = 0, in_flight = 0;
};

using Table = std::unordered_map<std::string, ModelPtr>;

// The small detects of one connection for one model, gathered to be scored in one native call;
// frames are (offset, length) in the connection's receive buffer, for handing them over when
// the core refuses the rows.
struct FastBatch {
    Batch batch;
    std::vector<std::pair<size_t, uint32_t>> frames;
    const Model* model = nullptr;

    bool empty() const { return batch.requests.empty(); }
    void add(const Model* m, const Request& q, size_t offset, uint32_t len) {
        model = m;
        fastwire::add(batch, q);
        frames.emplace_back(offset, len);
    }
    void clear() {
        batch.clear();
        frames.clear();
        model = nullptr;
    }
};

// What the loop threads share with each other and the host; Loop::Impl adds the threads.
struct Shared {
    Config cfg;
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
};

// One loop thread: its epoll set, its connections and the host's commands to it.
struct Worker {
    Shared& L;
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
    FastBatch fast;
    bool draining = false, stopping = false;
    double now = 0, last_sweep = 0;

    Worker(Shared& l, uint64_t i);
    ~Worker();

    // The thread and the host's commands (netloop.cpp).
    void post(Command c);
    void run();
    void refresh_table();
    void commands();
    void apply(Command& c, std::vector<Conn*>& touched);
    Conn* find(uint64_t id) {
        auto it = conns.find(id);
        return it == conns.end() ? nullptr : it->second.get();
    }

    // Accepting and reading (netloop_read.hpp).
    void accept_all();
    void admit(Conn& k, bool have_cred, const ucred& cred, int64_t open, int64_t open_uid);
    void on_event(uint64_t id, uint32_t events);
    void on_readable(Conn& c);
    ssize_t receive(Conn& c, unsigned char* to, size_t n);
    bool after_read(Conn& c, ssize_t n);

    // Frames: scored here or handed to the host (netloop_frame.hpp).
    void parse(Conn& c);
    void hold_partial(Conn& c);
    const Model* lookup(const Request& q) const;
    const Model* servable(const unsigned char* body, uint32_t len, Request& q) const;
    void serve_alone(Conn& c, std::unique_ptr<Block> b);
    bool score(Conn& c);
    void flush_batch(Conn& c);
    void handoff(Conn& c, std::unique_ptr<Block> body);

    // Replies and closing (netloop_reply.hpp).
    void mark_dirty(Conn& c);
    void update_events(Conn& c);
    void flush_dirty();
    void write_out(Conn& c);
    void maybe_done(Conn& c);
    void fail(Conn& c, const std::string& code, const std::string& message);
    void shut(Conn& c);
    void release_reserve(Conn& c);
    void close_conn(Conn& c, bool lost, bool quiet);

    // Timeouts and draining (netloop_drain.hpp).
    void sweep();
    void expire(Conn& c);
};

}  // namespace
}  // namespace pynomaly::netloop
