// The daemon's native fast path: answers the common request, a small raw-rows `detect` for a
// loaded isolation forest, without running Python per request.
//
// The daemon hands it a connection's receive buffer after each read. It parses the frames in
// order for as long as each is such a request, scores them in batches of up to `max_rows`
// rows (one native call per batch), and returns the encoded replies to write. It stops, and
// leaves the frame to the Python path (msgspec, full validation and error messages), at the
// first frame that is anything else: another operation, nested-list rows, a field it does not
// know, a value the Python path would refuse, a detector that is not loaded, an incomplete
// frame. So it never answers differently from the Python path; it only answers sooner.
// The wire format itself (parsing, encoding) is fastpath_wire.hpp.
//
// Why it lives in pynomaly._core and what it may know: it speaks pynomaly.wire's protocol,
// which belongs to the package (the client and the daemon share it), and it scores
// ServedForest objects, a type of this module built by pynomaly.service.Scorer. It reads no
// daemon data: the daemon passes a plain dict of ServedForest values, and everything it needs
// of a detector (forest, threshold, name, version) is typed here. A separate extension for
// the daemon would need the Forest type across two modules (pybind11's shared internals) and
// a second build for the same few hundred lines.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "fastpath.hpp"
#include "fastpath_serve.hpp"
#include "fastpath_wire.hpp"
#include "iforest.hpp"

namespace py = pybind11;
using namespace pynomaly;
using namespace pynomaly::fastwire;

namespace {

// The ServedForest for a request from the daemon's dict ((name, version or None) -> ServedForest),
// or nullptr when it is not loaded (the Python path then loads it and answers).
const Served* lookup(const py::dict& served, const Request& q, PyObject*& handle) {
    PyObject* name = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(q.name), q.name_len, nullptr);
    if (name == nullptr) {  // not UTF-8: msgspec refuses it with a message
        PyErr_Clear();
        return nullptr;
    }
    py::object key_name = py::reinterpret_steal<py::object>(name);
    py::object version = py::none();
    if (q.has_version) {
        if (q.version_neg) version = py::reinterpret_steal<py::object>(PyLong_FromLongLong(-static_cast<int64_t>(q.version)));
        else version = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(q.version));
    }
    py::tuple key = py::make_tuple(key_name, version);
    PyObject* value = PyDict_GetItemWithError(served.ptr(), key.ptr());  // borrowed
    if (value == nullptr) {
        PyErr_Clear();
        return nullptr;
    }
    py::handle h(value);
    if (!py::isinstance<ServedForest>(h)) throw py::type_error("fast_detect: served values must be ServedForest objects");
    handle = value;
    return &h.cast<const ServedForest&>().s;
}

}  // namespace

py::object pynomaly::sample_object(const Sample& sample, int64_t d) {
    if (sample.served == 0) return py::none();
    const auto dd = static_cast<py::ssize_t>(d);
    const auto k = static_cast<py::ssize_t>(sample.scores.size());
    const auto k32 = static_cast<py::ssize_t>(sample.scores32.size());
    py::array_t<double> rows({k, dd}), scores(k), scores32(k32);
    py::array_t<float> rows32({k32, dd});
    if (k) {
        std::memcpy(rows.mutable_data(), sample.rows.data(), sample.rows.size() * sizeof(double));
        std::memcpy(scores.mutable_data(), sample.scores.data(), sample.scores.size() * sizeof(double));
    }
    if (k32) {
        std::memcpy(rows32.mutable_data(), sample.rows32.data(), sample.rows32.size() * sizeof(float));
        std::memcpy(scores32.mutable_data(), sample.scores32.data(), sample.scores32.size() * sizeof(double));
    }
    return py::make_tuple(rows, scores, sample.served, rows32, scores32);
}

namespace {

// fast_detect(buffer, pos, end, max_frame, max_rows, served)
//   -> (pos, replies: bytes | None, ServedForest | None, requests, rows, native_calls, coalesced)
// and, with tally=True, an eighth item: (anomalies, requests with one, highest anomalous score,
// highest anomaly rate of a request) or None when there was no anomaly (the daemon's alerts);
// with sample_rows > 0 too, a ninth: the first sample_rows rows served with their scores, for
// drift (sample_object's tuple, or None); with why_rows > 0 too, ten items: the ninth as before
// (None without sample_rows), the tenth the first why_rows anomalous rows with their scores, for
// an alert's why (sample_object's tuple, or None).
// Serves the fast requests from buffer[pos:end] and returns where it stopped. All of them are
// for one ServedForest (it stops where the detector changes), returned for the caller's
// bookkeeping.
py::tuple fast_detect(const py::buffer& buffer, int64_t pos, int64_t end, int64_t max_frame, int64_t max_rows,
                      const py::dict& served_dict, bool tally, int64_t sample_rows, int64_t why_rows) {
    const py::buffer_info info = buffer.request();
    if (info.ndim != 1 || info.itemsize != 1 || pos < 0 || pos > end || end > info.size)
        throw InvalidInput("fast_detect: a 1-D byte buffer and 0 <= pos <= end <= len(buffer) are required");
    if (max_frame < 0 || max_rows < 1)
        throw InvalidInput("fast_detect: max_frame >= 0 and max_rows >= 1 are required");
    const auto* base = static_cast<const uint8_t*>(info.ptr);
    std::string out;
    const Served* served = nullptr;
    PyObject* served_handle = nullptr;
    Request first;
    bool have_served = false;
    Batch batch;
    int64_t batch_start = pos;
    int64_t n_requests = 0, n_rows = 0, n_calls = 0, n_coalesced = 0;
    Tally flagged;
    Sample sample;
    Sample why;

    // Scores the pending batch; if the core refuses it, its frames are given back (the caller
    // stops there and the Python path answers them).
    auto flush = [&]() -> bool {
        if (batch.requests.empty()) return true;
        const bool scored = score_batch(batch, *served, out);
        if (scored) {
            if (tally && flagged.add(batch, served->threshold) && why_rows > 0)
                keep_flagged(why, batch, served->n_features, why_rows, served->threshold);
            if (sample_rows > 0) sample.add(batch, served->n_features, sample_rows);
            n_requests += static_cast<int64_t>(batch.requests.size());
            n_rows += batch.n_rows;
            n_calls += 1;
            if (batch.requests.size() > 1) n_coalesced += static_cast<int64_t>(batch.requests.size());
        }
        batch.clear();
        return scored;
    };

    while (end - pos >= 4) {
        const uint8_t* h = base + pos;
        const uint32_t len = (uint32_t(h[0]) << 24) | (uint32_t(h[1]) << 16) | (uint32_t(h[2]) << 8) | h[3];
        if (len > static_cast<uint64_t>(max_frame) || end - pos - 4 < static_cast<int64_t>(len)) break;
        Request q;
        if (!parse_detect(h + 4, len, q, max_rows)) break;
        if (!have_served) {
            served = lookup(served_dict, q, served_handle);
            if (served == nullptr) break;
            have_served = true;
            first = q;
        } else if (!same_key(q, first)) {
            break;  // another detector (or version): the caller's next call serves it
        }
        if (q.d != served->n_features || !all_finite(q)) break;
        if (!fits(batch, q, max_rows)) {
            if (!flush()) {
                pos = batch_start;
                break;
            }
            batch_start = pos;
        }
        add(batch, q);
        pos += 4 + static_cast<int64_t>(len);
    }
    if (!flush()) pos = batch_start;

    py::object replies = out.empty() ? py::object(py::none()) : py::object(py::bytes(out.data(), out.size()));
    py::object entry = n_requests ? py::reinterpret_borrow<py::object>(served_handle) : py::object(py::none());
    if (!tally) return py::make_tuple(pos, replies, entry, n_requests, n_rows, n_calls, n_coalesced);
    py::object t = flagged.anomalies
                       ? py::object(py::make_tuple(flagged.anomalies, flagged.flagged, flagged.max_score, flagged.max_rate))
                       : py::object(py::none());
    const int64_t d = served != nullptr ? served->n_features : 0;
    if (why_rows > 0)
        return py::make_tuple(pos, replies, entry, n_requests, n_rows, n_calls, n_coalesced, t,
                              sample_rows > 0 ? sample_object(sample, d) : py::object(py::none()), sample_object(why, d));
    if (sample_rows <= 0) return py::make_tuple(pos, replies, entry, n_requests, n_rows, n_calls, n_coalesced, t);
    return py::make_tuple(pos, replies, entry, n_requests, n_rows, n_calls, n_coalesced, t, sample_object(sample, d));
}

}  // namespace

void register_fastpath(py::module_& m) {
    py::class_<ServedForest>(m, "ServedForest",
                             "One isolation-forest version as the daemon's native path serves it (immutable).")
        .def(py::init([](const py::object& forest, int64_t n_features, double threshold, const std::string& name,
                         int64_t version) {
                 ServedForest sf;
                 Served& s = sf.s;
                 s.forest = &forest.cast<const Forest&>();  // TypeError for anything else
                 if (n_features != s.forest->nodes().n_features)
                     throw InvalidInput("ServedForest: n_features does not match the forest's");
                 sf.owner = forest;
                 s.n_features = n_features;
                 s.threshold = threshold;
                 s.name = name;
                 s.version = version;
                 s.explainer = std::make_shared<const LazyExplainer>(s.forest);
                 return sf;
             }),
             py::arg("forest"), py::arg("n_features"), py::arg("threshold"), py::arg("name"), py::arg("version"))
        .def_property_readonly("name", [](const ServedForest& f) { return f.s.name; })
        .def_property_readonly("version", [](const ServedForest& f) { return f.s.version; })
        .def_property_readonly("n_features", [](const ServedForest& f) { return f.s.n_features; })
        .def_property_readonly("threshold", [](const ServedForest& f) { return f.s.threshold; });
    m.def("fast_detect", &fast_detect, py::arg("buffer"), py::arg("pos"), py::arg("end"), py::arg("max_frame"),
          py::arg("max_rows"), py::arg("served"), py::arg("tally") = false, py::arg("sample_rows") = 0,
          py::arg("why_rows") = 0,
          "The daemon's native path for small raw-rows detect requests (see python/src/fastpath.cpp).");
}
