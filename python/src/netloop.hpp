// The daemon's native connection loop: epoll threads that own the daemon's client connections,
// answer the small raw-row `detect` frames of a loaded isolation forest themselves (the fast
// path, fastpath_serve.hpp) and hand every other frame to a host (the Python daemon), whose
// replies they write back on the same connection. No Python here: the glue that makes a host
// of the Python daemon is netloop_binding.cpp.
//
// Why a loop of its own: under the uvloop daemon each request costs a read callback, a write
// and the interpreter around them, 15-22 us of CPU against Redis's 6-8 us (bench/RESULTS.md);
// the scoring itself is ~1 us. Here a request costs a share of one epoll_wait, one read, the
// parse and score, and one write per connection per loop iteration (replies coalesced).
//
// What the loop enforces itself, as the Python path does (PROTOCOL.md): the maximum frame size,
// the receive-memory bound for large frames, the frame, idle and write timeouts, backpressure
// (no reading from a client with too much queued or unread), the connection limits (in all, per
// uid, and the connections kept for admins) and the peer-uid allow-list, and a graceful drain. With roles (check_fast), it answers detects itself
// only for peers whose uid or gid may detect; every frame of another peer goes to the host,
// which applies the roles (PROTOCOL.md). Everything it logs or counts as an error goes to
// the host as an event, so the daemon keeps one log and one set of counters.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastpath_serve.hpp"

namespace pynomaly::netloop {

// One served detector version; `hits` counts the requests the loop served with it since the
// host last asked (the host's cache keeps its LRU order and freshness checks from them).
// `rows` and `flagged` (the anomalies, issue 12's alerts and metrics) likewise: rows by an atomic
// add per batch, the tally under `mu` only for a batch that had an anomaly.
// Most bucket bounds of the requests' latency histogram (Config::duration_bounds).
constexpr size_t kMaxDurationBounds = 31;

struct Model {
    fastwire::Served s;
    std::atomic<uint64_t> hits{0};
    std::atomic<uint64_t> rows{0};
    // Latencies of the requests served (issue 26): how many fell in each bucket of
    // Config::duration_bounds (the last: above them all), and their sum in nanoseconds.
    std::array<std::atomic<uint64_t>, kMaxDurationBounds + 1> durations{};
    std::atomic<uint64_t> duration_ns{0};
    std::mutex mu;
    fastwire::Tally flagged;
    fastwire::Sample sample;  // rows kept for drift (Config::drift_rows), under `mu`
    // Whether `sample` holds Config::drift_rows rows already: read without the lock, so a batch
    // served after the cap costs one relaxed load for drift instead of taking `mu` (every
    // request of a busy detector, from every worker thread). The host's take_hits clears it.
    std::atomic<bool> sample_full{false};
    fastwire::Sample why;     // anomalous rows kept for alerts (fastwire::kAlertRows), under `mu`
};
using ModelPtr = std::shared_ptr<Model>;

struct Config {
    int listen_fd = -1;  // a listening, non-blocking Unix stream socket; the host keeps it open
    int threads = 1;
    int64_t max_frame = 64 << 20;
    int64_t fast_rows = 64;  // largest request and batch the loop scores itself (0: hand all over)
    // Larger raw-row requests up to this many rows are scored by the loop thread too, alone and
    // in place: a 1k-row request then costs no hop to the host and back (0: hand them over).
    int64_t alone_rows = 0;
    // Rows per served model kept for drift monitoring between the host's take_hits (0: none).
    int64_t drift_rows = 0;
    int64_t max_connections = 1024;
    // A peer without the admin role holds at most max_per_uid connections, and only the first
    // max_connections - admin_reserve of all (the rule of pynomaly_daemon.admission.ConnectionLimits).
    int64_t max_per_uid = 256;
    int64_t admin_reserve = 16;
    std::vector<uint32_t> admin_uids, admin_gids;
    int64_t conn_max_in_flight = 256;  // frames handed over and not answered, per connection
    int64_t max_rx_bytes = 1 << 30;
    double idle_timeout = 300, frame_timeout = 10, write_timeout = 30;  // seconds
    bool check_uids = false;
    std::vector<uint32_t> allowed_uids;
    bool check_fast = false;  // roles: only peers in fast_uids or fast_gids are served by the loop
    std::vector<uint32_t> fast_uids, fast_gids;
    // Upper bounds (seconds, ascending, at most kMaxDurationBounds) of the latency histogram's
    // buckets: the host's (pynomaly.service.metrics.DURATION_BUCKETS), so counts merge as they are.
    std::vector<double> duration_bounds;
};

// A frame body handed to the host, in memory of its own placed so that the body ends on an
// 8-byte boundary: raw rows put last in the frame (PROTOCOL.md) are then aligned in place.
struct Block {
    std::unique_ptr<unsigned char[]> mem;
    unsigned char* data = nullptr;
    size_t size = 0;
    static std::unique_ptr<Block> make(size_t n);
};

// File descriptors a client passed with SCM_RIGHTS (a memfd of rows, PROTOCOL.md "Shared
// memory"), owned: closed when dropped, unless released to their next owner.
struct Fds {
    std::vector<int> fds;
    Fds() = default;
    Fds(Fds&& o) noexcept : fds(std::move(o.fds)) { o.fds.clear(); }
    Fds& operator=(Fds&& o) noexcept;
    Fds(const Fds&) = delete;
    Fds& operator=(const Fds&) = delete;
    ~Fds() { close_all(); }
    void close_all();
    std::vector<int> release() {
        std::vector<int> out;
        out.swap(fds);
        return out;
    }
};

// Most descriptors a connection may have received and not yet handed over with a frame; a
// client that sends more, or more in one message, is refused and closed.
constexpr size_t kMaxFds = 8;

struct Event {
    enum Kind : int { Frame = 0, Closed = 1, Log = 2 };
    Kind kind = Frame;
    uint64_t conn = 0;
    std::unique_ptr<Block> body;  // Frame
    Fds fds;                      // Frame: the descriptors received since the last frame handed over
    int level = 0;                // Log: Python logging levels (20 info, 30 warning)
    std::string code;             // Log: the wire error code it counts as, or empty
    std::string message;          // Log
    std::string peer;             // Frame and Log: "pid=... uid=..."
    int64_t uid = -1, gid = -1;   // Frame and Log: the peer's credentials (-1: unknown)
};

struct Counters {
    std::atomic<int64_t> connections{0};
    std::atomic<uint64_t> connections_total{0}, requests{0}, rows{0}, calls{0}, coalesced{0};
};

class Loop {
public:
    explicit Loop(const Config& cfg);
    ~Loop();
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;

    void start();
    // Readable (an eventfd) whenever take() has something.
    int notify_fd() const;
    std::vector<Event> take();

    // From the host, any thread: reply bytes for a connection (dropped once it is closing), and
    // how many of its handed-over frames the host has taken and how many it still answers.
    void send(uint64_t conn, std::string bytes);
    void update(uint64_t conn, int64_t taken, int64_t in_flight);
    // Close a connection once the replies already sent for it are written (the host's final
    // error, e.g. for descriptors it refuses).
    void close(uint64_t conn);

    // Served detectors by request key (model_key); the loop hands over frames of other keys.
    static std::string model_key(const uint8_t* name, size_t len, bool has_version, bool neg, uint64_t version);
    void set_model(const std::string& key, ModelPtr m);
    void clear_models();
    // Each served model with the requests served since the last call (non-zero only), with
    // their rows, the tally of their anomalies and the rows kept for drift.
    struct Hits {
        ModelPtr model;
        uint64_t requests = 0, rows = 0;
        fastwire::Tally flagged;
        std::array<uint64_t, kMaxDurationBounds + 1> durations{};
        uint64_t duration_ns = 0;
        fastwire::Sample sample;
        fastwire::Sample why;
    };
    std::vector<Hits> take_hits();

    void drain();  // stop accepting; close each connection once it is quiet
    void stop();   // close every connection now and join the threads (idempotent)
    const Counters& counters() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace pynomaly::netloop
