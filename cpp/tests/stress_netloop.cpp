// The daemon's native connection loop (python/src/netloop.hpp) without Python, under the
// sanitizers: a host thread plays the daemon (answers every handed-over frame with a fixed
// reply, reports counts back), while client threads connect, pipeline fast and handed-over
// frames cut at random points, send oversized and half frames, vanish mid-frame, and check
// every reply: fast replies against Forest::score and the encoder, handed-over ones by id.
// The served model is swapped and cleared while clients run. Ends with stop() under load.
// Built and run by tests/test_daemon_netloop.py (AddressSanitizer + UBSan, ThreadSanitizer);
// prints "ok <replies checked> <handed over>".
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "netloop.hpp"

using namespace pynomaly;
using namespace pynomaly::fastwire;

namespace {

std::atomic<bool> failed{false};
void check(bool ok, const char* what) {
    if (!ok && !failed.exchange(true)) std::fprintf(stderr, "FAILED: %s\n", what);
}

constexpr int64_t kD = 5;

// explain: 0 plain, else want: ["attributions"] with explain_method "tree_shap" (1) or "path" (2).
std::string detect_frame(uint64_t id, const std::vector<double>& rows, int64_t n, bool fast_op, int explain = 0) {
    std::string o(4, '\0');
    o.push_back(static_cast<char>(0x84 + (explain ? 2 : 0)));
    put_key(o, "op");
    put_key(o, fast_op ? "detect" : "detekt");  // an unknown op: handed over
    put_key(o, "id");
    put_int(o, false, id);
    put_key(o, "detector");
    put_key(o, "m");
    if (explain) {
        put_key(o, "want");
        o.push_back(static_cast<char>(0x91));
        put_key(o, "attributions");
        put_key(o, "explain_method");
        put_key(o, explain == 1 ? "tree_shap" : "path");
    }
    put_key(o, "rows");
    o.push_back(static_cast<char>(0x83));
    put_key(o, "dtype");
    put_key(o, "f8");
    put_key(o, "shape");
    o.push_back(static_cast<char>(0x92));
    put_int(o, false, static_cast<uint64_t>(n));
    put_int(o, false, kD);
    put_key(o, "data");
    put_bin_header(o, static_cast<size_t>(8 * n * kD));
    o.append(reinterpret_cast<const char*>(rows.data()), static_cast<size_t>(8 * n * kD));
    const uint32_t len = static_cast<uint32_t>(o.size() - 4);
    for (int i = 0; i < 4; ++i) o[i] = static_cast<char>((len >> (8 * (3 - i))) & 0xff);
    return o;
}

// The host's reply to a handed-over frame: an Error with the frame's length as id (the test
// knows each frame's length, not its parsed id; the loop must deliver it on the right socket).
std::string host_reply(uint64_t id) {
    std::string o;
    put_error(o, id, "bad_request", "handed over");
    return o;
}

int connect_to(const std::string& path) {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(fd);
        return -1;
    }
    timeval tv{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

bool read_exact(int fd, std::string& out, size_t n) {
    out.resize(n);
    size_t have = 0;
    while (have < n) {
        const ssize_t k = ::read(fd, &out[have], n - have);
        if (k <= 0) return false;
        have += static_cast<size_t>(k);
    }
    return true;
}

bool read_frame(int fd, std::string& frame) {
    std::string h;
    if (!read_exact(fd, h, 4)) return false;
    const uint32_t len = (uint32_t(uint8_t(h[0])) << 24) | (uint32_t(uint8_t(h[1])) << 16) |
                         (uint32_t(uint8_t(h[2])) << 8) | uint8_t(h[3]);
    std::string body;
    if (!read_exact(fd, body, len)) return false;
    frame = h + body;
    return true;
}

void send_all(int fd, const std::string& s, std::mt19937_64& rng) {
    size_t at = 0;
    while (at < s.size()) {
        const size_t step = std::min(s.size() - at, static_cast<size_t>(1 + rng() % 3000));
        const ssize_t k = ::send(fd, s.data() + at, step, MSG_NOSIGNAL);
        if (k <= 0) return;
        at += static_cast<size_t>(k);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int clients = argc > 1 ? std::atoi(argv[1]) : 24;
    const int frames_per_client = argc > 2 ? std::atoi(argv[2]) : 150;
    // A small forest over 5 features.
    std::vector<double> train(2000 * kD);
    std::mt19937_64 g(7);
    std::normal_distribution<double> normal;
    for (double& v : train) v = normal(g);
    const Forest forest = Forest::train(MatrixView{train.data(), 2000, kD, kD, 1, false}, ForestParams{20, 128, 0, 1}, 1,
                                        CancelCheck{});
    auto model = std::make_shared<netloop::Model>();
    model->s = Served{&forest, kD, 0.55, "m", 3, std::make_shared<const LazyExplainer>(&forest)};
    // What attribution replies must hold: the kernels called directly (fastpath_explain.hpp).
    const ForestExplainer reference(forest);
    const double scale = -1.0 / average_path_length(static_cast<double>(forest.nodes().psi));

    const std::string path = "/tmp/stress_netloop_" + std::to_string(getpid()) + ".sock";
    ::unlink(path.c_str());
    const int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(lfd, 512) != 0) {
        std::perror("bind");
        return 2;
    }
    netloop::Config cfg;
    cfg.listen_fd = lfd;
    cfg.threads = 3;
    cfg.max_frame = 1 << 20;
    cfg.fast_rows = 64;
    cfg.conn_max_in_flight = 8;
    cfg.frame_timeout = 2;
    auto loop = std::make_unique<netloop::Loop>(cfg);
    const std::string key = netloop::Loop::model_key(reinterpret_cast<const uint8_t*>("m"), 1, false, false, 0);
    loop->set_model(key, model);
    loop->start();

    // The host: answers each handed-over frame (id = its body length), then reports it done.
    std::atomic<bool> host_stop{false};
    std::atomic<uint64_t> handed{0}, logs{0};
    std::thread host([&] {
        while (!host_stop) {
            auto evs = loop->take();
            for (auto& e : evs) {
                if (e.kind == netloop::Event::Frame) {
                    handed++;
                    loop->send(e.conn, host_reply(e.body->size));
                    check(reinterpret_cast<uintptr_t>(e.body->data + e.body->size) % 8 == 0, "body end aligned");
                    loop->update(e.conn, 1, 0);
                } else if (e.kind == netloop::Event::Log) {
                    logs++;
                }
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    // Swaps the served model (same forest) and clears it now and then: frames in between are
    // handed over, and the loop must never score with a model it dropped.
    std::atomic<bool> swap_stop{false};
    std::thread swapper([&] {
        int i = 0;
        while (!swap_stop) {
            if (++i % 5 == 0) {
                loop->clear_models();
            } else {
                auto m = std::make_shared<netloop::Model>();
                m->s = model->s;
                loop->set_model(key, m);
            }
            loop->take_hits();
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        loop->set_model(key, model);
    });

    std::atomic<uint64_t> checked{0};
    std::vector<std::thread> ts;
    for (int c = 0; c < clients; ++c) {
        ts.emplace_back([&, c] {
            std::mt19937_64 rng(100 + c);
            std::normal_distribution<double> normal;  // per thread: it keeps state
            const int fd = connect_to(path);
            check(fd >= 0, "connect");
            if (fd < 0) return;
            std::string stream;
            std::map<uint64_t, std::string> expected;  // id -> the reply bytes
            std::map<uint64_t, int> handed_ids;         // body length -> count, for handed-over frames
            for (int i = 0; i < frames_per_client; ++i) {
                const int64_t n = 1 + static_cast<int64_t>(rng() % (rng() % 10 == 0 ? 200 : 8));
                std::vector<double> rows(static_cast<size_t>(n * kD));
                for (double& v : rows) v = normal(rng) * 2;
                const uint64_t id = static_cast<uint64_t>(c) * 100000 + static_cast<uint64_t>(i);
                const bool op_ok = rng() % 6 != 0;
                // Some ask for attributions: the loop threads build the explainer once, together.
                const int explain = rng() % 5 == 0 ? 1 + static_cast<int>(rng() % 2) : 0;
                const std::string f = detect_frame(id, rows, n, op_ok, explain);
                stream += f;
                if (op_ok && n <= 64) {
                    std::vector<double> s(static_cast<size_t>(n));
                    forest.score(MatrixView{rows.data(), n, kD, kD, 1, false}, s.data(), 1, CancelCheck{});
                    Request q;
                    q.id = id;
                    q.n = n;
                    std::vector<float> x32(rows.begin(), rows.end());
                    std::vector<double> phi(static_cast<size_t>(n * kD));
                    if (explain) {
                        q.scores = q.labels = false;
                        q.attributions = true;
                        q.explain = explain == 1 ? kExplainTreeShap : kExplainPath;
                        if (explain == 1) reference.tree_shap(x32.data(), n, phi.data(), 1, CancelCheck{});
                        else reference.path(x32.data(), n, phi.data(), 1, CancelCheck{});
                        for (double& v : phi) v *= scale;
                    }
                    const Explained e = explained_of(q, phi.data(), kD);
                    std::string r;
                    put_reply(r, q, "m", 3, 0.55, s.data(), explain ? &e : nullptr);
                    expected[id] = r;
                }
                handed_ids[f.size() - 4] += 0;  // known lengths
            }
            std::thread sender([&] { send_all(fd, stream, rng); });
            // Every frame gets one reply: scored ones must equal the expected bytes (or be a
            // handed-over answer when the model was cleared at that moment).
            for (int i = 0; i < frames_per_client; ++i) {
                std::string fr;
                if (!read_frame(fd, fr)) {
                    check(false, "reply missing");
                    break;
                }
                Reader r{reinterpret_cast<const uint8_t*>(fr.data()) + 4, reinterpret_cast<const uint8_t*>(fr.data()) + fr.size()};
                uint32_t fields;
                const uint8_t* k;
                uint32_t kl;
                const uint8_t* op;
                uint32_t opl;
                check(r.map(fields) && r.str(k, kl) && r.str(op, opl), "reply is a map with op first");
                bool neg;
                uint64_t id;
                check(r.str(k, kl) && r.integer(neg, id), "reply id");
                if (equals(op, opl, "detect")) {
                    auto it = expected.find(id);
                    check(it != expected.end() && it->second == fr, "fast reply bytes");
                } else {
                    check(equals(op, opl, "error") && handed_ids.count(id) == 1, "handed-over reply");
                }
                checked++;
            }
            sender.join();
            ::close(fd);
        });
    }
    // Misbehaving clients alongside: oversized frames, half frames left behind, a huge one cut.
    std::thread rude([&] {
        std::mt19937_64 rng(9);
        for (int i = 0; i < 40; ++i) {
            const int fd = connect_to(path);
            if (fd < 0) continue;
            std::string f = detect_frame(1, std::vector<double>(kD * 3, 0.5), 3, true);
            if (i % 3 == 0) {
                const std::string big = "\x10\x00\x00\x00";  // 256 MiB > max_frame
                ::send(fd, big.data(), 4, MSG_NOSIGNAL);
                std::string reply;
                check(read_frame(fd, reply) && reply.find("frame_too_large") != std::string::npos, "frame_too_large");
            } else if (i % 3 == 1) {
                ::send(fd, f.data(), 1 + rng() % (f.size() - 1), MSG_NOSIGNAL);
            } else {
                std::vector<double> rows(kD * 20000, 0.25);
                f = detect_frame(2, rows, 20000, true);  // 800 kB: into a block of its own, cut
                ::send(fd, f.data(), f.size() / 2, MSG_NOSIGNAL);
            }
            ::close(fd);
        }
    });
    for (auto& t : ts) t.join();
    rude.join();
    swap_stop = true;
    swapper.join();
    // Stop with connections open and frames half sent.
    std::vector<int> open_fds;
    for (int i = 0; i < 10; ++i) {
        const int fd = connect_to(path);
        if (fd >= 0) {
            ::send(fd, "\0\0\1", 3, MSG_NOSIGNAL);
            open_fds.push_back(fd);
        }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    loop->stop();
    host_stop = true;
    host.join();
    loop.reset();
    for (int fd : open_fds) ::close(fd);
    ::close(lfd);
    ::unlink(path.c_str());
    check(checked.load() == static_cast<uint64_t>(clients) * static_cast<uint64_t>(frames_per_client), "every reply");
    if (failed) return 1;
    std::printf("ok %llu %llu\n", static_cast<unsigned long long>(checked.load()),
                static_cast<unsigned long long>(handed.load()));
    return 0;
}
