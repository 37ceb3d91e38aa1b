// The glue between the native connection loop (netloop.hpp, Python-free) and the Python daemon
// (daemon/pynomaly_daemon/netloop.py): Python values in and out, the GIL released while the
// loop threads are joined, and the lifetime of the Python objects the loop's models point into.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <optional>
#include <vector>

#include "fastpath.hpp"
#include "netloop.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

// A handed-over frame body as a Python buffer (memoryview(frame) is a view, not a copy): the
// daemon decodes it in place and raw rows stay views of it while they are scored.
struct NetFrame {
    std::unique_ptr<netloop::Block> block;
};

// Python objects whose native models were dropped, maybe on a loop thread, which may not touch
// them: released by the host thread, under the GIL, on its next call.
struct Graveyard {
    std::mutex mu;
    std::vector<PyObject*> dead;

    void bury(PyObject* o) {
        std::lock_guard<std::mutex> g(mu);
        dead.push_back(o);
    }
    void release() {  // with the GIL
        std::vector<PyObject*> d;
        {
            std::lock_guard<std::mutex> g(mu);
            d.swap(dead);
        }
        for (PyObject* o : d) Py_DECREF(o);
    }
};

class NetLoop {
public:
    NetLoop(int listen_fd, int threads, int64_t max_frame, int64_t fast_rows, int64_t alone_rows, int64_t max_connections,
            int64_t conn_max_in_flight, int64_t max_rx_bytes, double idle_timeout, double frame_timeout,
            double write_timeout, std::optional<std::vector<uint32_t>> allowed_uids,
            std::optional<std::vector<uint32_t>> fast_uids, std::optional<std::vector<uint32_t>> fast_gids,
            int64_t max_per_uid, int64_t admin_reserve, std::vector<uint32_t> admin_uids,
            std::vector<uint32_t> admin_gids, std::vector<double> duration_bounds, int64_t drift_rows)
        : grave_(std::make_shared<Graveyard>()) {
        if (duration_bounds.size() > netloop::kMaxDurationBounds ||
            !std::is_sorted(duration_bounds.begin(), duration_bounds.end()))
            throw std::invalid_argument("duration_bounds: at most 31 bounds, ascending");
        n_durations_ = duration_bounds.size() + 1;
        netloop::Config c;
        c.duration_bounds = std::move(duration_bounds);
        c.listen_fd = listen_fd;
        c.threads = threads;
        c.max_frame = max_frame;
        c.fast_rows = fast_rows;
        c.alone_rows = alone_rows;
        c.drift_rows = drift_rows;
        c.max_connections = max_connections;
        c.max_per_uid = max_per_uid;
        c.admin_reserve = admin_reserve;
        c.admin_uids = std::move(admin_uids);
        c.admin_gids = std::move(admin_gids);
        c.conn_max_in_flight = conn_max_in_flight;
        c.max_rx_bytes = max_rx_bytes;
        c.idle_timeout = idle_timeout;
        c.frame_timeout = frame_timeout;
        c.write_timeout = write_timeout;
        if (allowed_uids) {
            c.check_uids = true;
            c.allowed_uids = *allowed_uids;
        }
        if (fast_uids || fast_gids) {  // roles: the loop answers only the peers that may detect
            c.check_fast = true;
            if (fast_uids) c.fast_uids = *fast_uids;
            if (fast_gids) c.fast_gids = *fast_gids;
        }
        loop_ = std::make_unique<netloop::Loop>(c);
    }
    ~NetLoop() {
        {
            py::gil_scoped_release release;
            loop_->stop();
        }
        loop_.reset();
        grave_->release();
    }

    void start() { loop_->start(); }
    int notify_fd() const { return loop_->notify_fd(); }

    // [(0, conn, frame, peer, uid, gid, fds) | (1, conn) | (2, conn, level, code, message, peer, uid, gid)];
    // fds: the descriptors the client passed since the last frame, now the caller's to close.
    py::list take() {
        grave_->release();
        std::vector<netloop::Event> evs = loop_->take();
        py::list out(evs.size());
        size_t i = 0;
        for (auto& e : evs) {
            py::object item;
            switch (e.kind) {
                case netloop::Event::Frame:
                    item = py::make_tuple(0, e.conn, NetFrame{std::move(e.body)}, e.peer, e.uid, e.gid,
                                          e.fds.release());
                    break;
                case netloop::Event::Closed:
                    item = py::make_tuple(1, e.conn);
                    break;
                case netloop::Event::Log:
                    item = py::make_tuple(2, e.conn, e.level, e.code, e.message, e.peer, e.uid, e.gid);
                    break;
            }
            out[i++] = item;
        }
        return out;
    }

    void send(uint64_t conn, const py::buffer& data) {
        const py::buffer_info b = data.request();
        loop_->send(conn, std::string(static_cast<const char*>(b.ptr), static_cast<size_t>(b.size * b.itemsize)));
    }

    void update(uint64_t conn, int64_t taken, int64_t in_flight) { loop_->update(conn, taken, in_flight); }
    void close(uint64_t conn) { loop_->close(conn); }

    void set_model(const std::string& name, std::optional<py::int_> version, const py::object& served) {
        const ServedForest& sf = served.cast<const ServedForest&>();  // TypeError for anything else
        bool neg = false;
        uint64_t v = 0;
        if (version) {
            const py::int_& ver = *version;
            neg = ver < py::int_(0);
            v = neg ? static_cast<uint64_t>(-ver.cast<int64_t>()) : ver.cast<uint64_t>();
        }
        // The model keeps the ServedForest (and so its Forest) alive; its last owner may be a
        // loop thread, so the Python reference is released through the graveyard.
        PyObject* owner = served.ptr();
        Py_INCREF(owner);
        std::shared_ptr<Graveyard> grave = grave_;
        auto* m = new netloop::Model();
        m->s = sf.s;
        netloop::ModelPtr ptr(m, [grave, owner](netloop::Model* p) {
            delete p;
            grave->bury(owner);
        });
        loop_->set_model(netloop::Loop::model_key(reinterpret_cast<const uint8_t*>(name.data()), name.size(),
                                                  version.has_value(), neg, v),
                         std::move(ptr));
    }

    void clear_models() { loop_->clear_models(); }

    // [(name, version, requests served since the last call, their rows,
    //   (anomalies, requests with one, highest anomalous score, highest rate) or None,
    //   [requests per latency bucket of duration_bounds, then above them], their latencies' sum in seconds,
    //   (rows kept for drift, their scores, rows served) or None,
    //   the first anomalous rows served, in the same form, or None)]
    py::list take_hits() {
        grave_->release();  // called every few tens of ms: dropped models do not wait for a frame
        py::list out;
        for (auto& h : loop_->take_hits()) {
            const fastwire::Tally& t = h.flagged;
            py::object flagged = t.anomalies ? py::object(py::make_tuple(t.anomalies, t.flagged, t.max_score, t.max_rate))
                                             : py::object(py::none());
            py::list durations(n_durations_);
            for (size_t i = 0; i < n_durations_; ++i) durations[i] = h.durations[i];
            out.append(py::make_tuple(h.model->s.name, h.model->s.version, h.requests, h.rows, flagged, durations,
                                      static_cast<double>(h.duration_ns) * 1e-9,
                                      sample_object(h.sample, h.model->s.n_features),
                                      sample_object(h.why, h.model->s.n_features)));
        }
        return out;
    }

    py::dict counters() const {
        const netloop::Counters& c = loop_->counters();
        py::dict d;
        d["connections"] = c.connections.load();
        d["connections_total"] = c.connections_total.load();
        d["requests"] = c.requests.load();
        d["rows"] = c.rows.load();
        d["calls"] = c.calls.load();
        d["coalesced"] = c.coalesced.load();
        return d;
    }
    int64_t connections() const { return loop_->counters().connections.load(); }
    void drain() { loop_->drain(); }
    void stop() {
        {
            py::gil_scoped_release release;
            loop_->stop();
        }
        grave_->release();
    }

private:
    size_t n_durations_ = 1;
    std::shared_ptr<Graveyard> grave_;
    std::unique_ptr<netloop::Loop> loop_;
};

}  // namespace

void register_netloop(py::module_& m) {
    py::class_<NetFrame>(m, "_NetFrame", py::buffer_protocol(), "A frame body handed over by the connection loop.")
        .def_buffer([](NetFrame& f) {
            return py::buffer_info(f.block->data, 1, py::format_descriptor<uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(f.block->size)}, {static_cast<py::ssize_t>(1)});
        })
        .def("__len__", [](const NetFrame& f) { return f.block->size; });
    py::class_<NetLoop>(m, "NetLoop",
                        "The daemon's native connection loop (python/src/netloop.hpp); driven by "
                        "pynomaly_daemon.netloop.")
        .def(py::init<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, double, double,
                      std::optional<std::vector<uint32_t>>, std::optional<std::vector<uint32_t>>,
                      std::optional<std::vector<uint32_t>>, int64_t, int64_t, std::vector<uint32_t>,
                      std::vector<uint32_t>, std::vector<double>, int64_t>(),
             py::arg("listen_fd"), py::arg("threads"), py::arg("max_frame"), py::arg("fast_rows"), py::arg("alone_rows"),
             py::arg("max_connections"), py::arg("conn_max_in_flight"), py::arg("max_rx_bytes"),
             py::arg("idle_timeout"), py::arg("frame_timeout"), py::arg("write_timeout"), py::arg("allowed_uids"),
             py::arg("fast_uids") = py::none(), py::arg("fast_gids") = py::none(), py::arg("max_per_uid") = 256,
             py::arg("admin_reserve") = 16, py::arg("admin_uids") = std::vector<uint32_t>{},
             py::arg("admin_gids") = std::vector<uint32_t>{}, py::arg("duration_bounds") = std::vector<double>{},
             py::arg("drift_rows") = 0)
        .def("start", &NetLoop::start)
        .def_property_readonly("notify_fd", &NetLoop::notify_fd)
        .def("take", &NetLoop::take)
        .def("send", &NetLoop::send, py::arg("conn"), py::arg("data"))
        .def("update", &NetLoop::update, py::arg("conn"), py::arg("taken"), py::arg("in_flight"))
        .def("close", &NetLoop::close, py::arg("conn"))
        .def("set_model", &NetLoop::set_model, py::arg("name"), py::arg("version"), py::arg("served"))
        .def("clear_models", &NetLoop::clear_models)
        .def("take_hits", &NetLoop::take_hits)
        .def("counters", &NetLoop::counters)
        .def_property_readonly("connections", &NetLoop::connections)
        .def("drain", &NetLoop::drain)
        .def("stop", &NetLoop::stop);
}
