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
// Everything is bounds-checked: the bytes come from untrusted clients.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "iforest.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

// ---- MessagePack reading (only the types a Detect request is made of) --------------------------
struct Reader {
    const uint8_t* p;
    const uint8_t* end;

    bool take(size_t n, const uint8_t*& at) {
        if (static_cast<size_t>(end - p) < n) return false;
        at = p;
        p += n;
        return true;
    }
    bool byte(uint8_t& b) {
        if (p >= end) return false;
        b = *p++;
        return true;
    }
    bool be(int bytes, uint64_t& v) {
        const uint8_t* at;
        if (!take(bytes, at)) return false;
        v = 0;
        for (int i = 0; i < bytes; ++i) v = (v << 8) | at[i];
        return true;
    }
    bool str(const uint8_t*& s, uint32_t& len) {
        uint8_t t;
        if (!byte(t)) return false;
        uint64_t n;
        if ((t & 0xe0) == 0xa0) n = t & 0x1f;
        else if (t == 0xd9) { if (!be(1, n)) return false; }
        else if (t == 0xda) { if (!be(2, n)) return false; }
        else if (t == 0xdb) { if (!be(4, n)) return false; }
        else return false;
        len = static_cast<uint32_t>(n);
        return take(len, s);
    }
    bool bin(const uint8_t*& s, uint64_t& len) {
        uint8_t t;
        if (!byte(t)) return false;
        if (t == 0xc4) { if (!be(1, len)) return false; }
        else if (t == 0xc5) { if (!be(2, len)) return false; }
        else if (t == 0xc6) { if (!be(4, len)) return false; }
        else return false;
        return take(len, s);
    }
    // Any MessagePack integer: sign and magnitude, so uint64 values beyond int64 survive.
    bool integer(bool& neg, uint64_t& mag) {
        uint8_t t;
        if (!byte(t)) return false;
        neg = false;
        if (t <= 0x7f) { mag = t; return true; }
        if (t >= 0xe0) { neg = true; mag = static_cast<uint64_t>(0x100 - t); return true; }
        static const int unsigned_bytes[4] = {1, 2, 4, 8};
        if (t >= 0xcc && t <= 0xcf) return be(unsigned_bytes[t - 0xcc], mag);
        if (t >= 0xd0 && t <= 0xd3) {
            const int bytes = unsigned_bytes[t - 0xd0];
            uint64_t u;
            if (!be(bytes, u)) return false;
            const int shift = 64 - 8 * bytes;  // sign-extend
            const int64_t v = static_cast<int64_t>(u << shift) >> shift;
            neg = v < 0;
            mag = neg ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
            return true;
        }
        return false;
    }
    bool container(uint8_t fix_mask, uint8_t fix_tag, uint8_t tag16, uint32_t& n) {
        uint8_t t;
        if (!byte(t)) return false;
        uint64_t v;
        if ((t & fix_mask) == fix_tag) v = t & 0x0f;
        else if (t == tag16) { if (!be(2, v)) return false; }
        else if (t == tag16 + 1) { if (!be(4, v)) return false; }
        else return false;
        n = static_cast<uint32_t>(v);
        return true;
    }
    bool map(uint32_t& n) { return container(0xf0, 0x80, 0xde, n); }
    bool array(uint32_t& n) { return container(0xf0, 0x90, 0xdc, n); }
    bool nil() {
        if (p < end && *p == 0xc0) { ++p; return true; }
        return false;
    }
};

bool equals(const uint8_t* s, uint32_t len, const char* lit) {
    return len == std::strlen(lit) && std::memcmp(s, lit, len) == 0;
}

struct Request {
    bool id_neg = false;
    uint64_t id = 0;
    const uint8_t* name = nullptr;
    uint32_t name_len = 0;
    bool has_version = false;
    bool version_neg = false;
    uint64_t version = 0;
    bool scores = true, labels = true;  // `want` absent or nil: scores and labels
    bool f32 = false;
    int64_t n = 0, d = 0;
    const uint8_t* data = nullptr;
};

// The rows map: {"dtype": "f4"|"f8", "shape": [n, d], "data": bin}, each key once, no other.
bool parse_rows(Reader& r, Request& q, int64_t max_rows) {
    uint32_t fields;
    if (!r.map(fields) || fields != 3) return false;
    unsigned seen = 0;
    const uint8_t* data = nullptr;
    uint64_t data_len = 0;
    for (uint32_t i = 0; i < fields; ++i) {
        const uint8_t* k;
        uint32_t kl;
        if (!r.str(k, kl)) return false;
        if (equals(k, kl, "dtype") && !(seen & 1)) {
            seen |= 1;
            const uint8_t* s;
            uint32_t sl;
            if (!r.str(s, sl)) return false;
            if (equals(s, sl, "f4")) q.f32 = true;
            else if (!equals(s, sl, "f8")) return false;
        } else if (equals(k, kl, "shape") && !(seen & 2)) {
            seen |= 2;
            uint32_t dims;
            if (!r.array(dims) || dims != 2) return false;
            bool neg;
            uint64_t n, d;
            if (!r.integer(neg, n) || neg || !r.integer(neg, d) || neg) return false;
            if (n < 1 || n > static_cast<uint64_t>(max_rows) || d < 1 || d > (1u << 20)) return false;
            q.n = static_cast<int64_t>(n);
            q.d = static_cast<int64_t>(d);
        } else if (equals(k, kl, "data") && !(seen & 4)) {
            seen |= 4;
            if (!r.bin(data, data_len)) return false;
        } else {
            return false;
        }
    }
    if (data_len != static_cast<uint64_t>(q.n * q.d * (q.f32 ? 4 : 8))) return false;
    q.data = data;
    return true;
}

// A whole frame body as a fast request: {"op": "detect", "id": int, "detector": str,
// "version"?: nil|int, "want"?: nil|[("scores"|"labels")...], "rows": rows}, each key once.
bool parse_detect(const uint8_t* body, uint32_t len, Request& q, int64_t max_rows) {
    Reader r{body, body + len};
    uint32_t fields;
    if (!r.map(fields) || fields > 6) return false;
    unsigned seen = 0;
    for (uint32_t i = 0; i < fields; ++i) {
        const uint8_t* k;
        uint32_t kl;
        if (!r.str(k, kl)) return false;
        unsigned bit;
        if (equals(k, kl, "op")) bit = 1;
        else if (equals(k, kl, "id")) bit = 2;
        else if (equals(k, kl, "detector")) bit = 4;
        else if (equals(k, kl, "version")) bit = 8;
        else if (equals(k, kl, "want")) bit = 16;
        else if (equals(k, kl, "rows")) bit = 32;
        else return false;
        if (seen & bit) return false;
        seen |= bit;
        switch (bit) {
            case 1: {
                const uint8_t* s;
                uint32_t sl;
                if (!r.str(s, sl) || !equals(s, sl, "detect")) return false;
                break;
            }
            case 2:
                if (!r.integer(q.id_neg, q.id)) return false;
                break;
            case 4:
                if (!r.str(q.name, q.name_len)) return false;
                break;
            case 8:
                if (!r.nil()) {
                    if (!r.integer(q.version_neg, q.version)) return false;
                    q.has_version = true;
                }
                break;
            case 16:
                if (!r.nil()) {
                    uint32_t items;
                    if (!r.array(items) || items > 8) return false;
                    q.scores = q.labels = false;
                    for (uint32_t j = 0; j < items; ++j) {
                        const uint8_t* s;
                        uint32_t sl;
                        if (!r.str(s, sl)) return false;
                        if (equals(s, sl, "scores")) q.scores = true;
                        else if (equals(s, sl, "labels")) q.labels = true;
                        else return false;  // probabilities, anomalies, or invalid: the Python path
                    }
                }
                break;
            case 32:
                if (!parse_rows(r, q, max_rows)) return false;
                break;
        }
    }
    return (seen & (1 | 2 | 4 | 32)) == (1 | 2 | 4 | 32) && r.p == r.end;  // nothing trailing
}

// ---- MessagePack writing, as msgspec encodes a DetectReply -------------------------------------
void put_be(std::string& o, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) o.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_int(std::string& o, bool neg, uint64_t mag) {
    if (!neg) {
        if (mag < 0x80) o.push_back(static_cast<char>(mag));
        else if (mag <= 0xff) { o.push_back('\xcc'); put_be(o, mag, 1); }
        else if (mag <= 0xffff) { o.push_back('\xcd'); put_be(o, mag, 2); }
        else if (mag <= 0xffffffffu) { o.push_back('\xce'); put_be(o, mag, 4); }
        else { o.push_back('\xcf'); put_be(o, mag, 8); }
        return;
    }
    const int64_t v = static_cast<int64_t>(0 - mag);
    if (v >= -32) o.push_back(static_cast<char>(v));
    else if (v >= -128) { o.push_back('\xd0'); put_be(o, static_cast<uint64_t>(v), 1); }
    else if (v >= -32768) { o.push_back('\xd1'); put_be(o, static_cast<uint64_t>(v), 2); }
    else if (v >= -2147483648LL) { o.push_back('\xd2'); put_be(o, static_cast<uint64_t>(v), 4); }
    else { o.push_back('\xd3'); put_be(o, static_cast<uint64_t>(v), 8); }
}

void put_str(std::string& o, const char* s, size_t n) {
    if (n < 32) o.push_back(static_cast<char>(0xa0 | n));
    else if (n <= 0xff) { o.push_back('\xd9'); put_be(o, n, 1); }
    else if (n <= 0xffff) { o.push_back('\xda'); put_be(o, n, 2); }
    else { o.push_back('\xdb'); put_be(o, n, 4); }
    o.append(s, n);
}

void put_bin_header(std::string& o, size_t n) {
    if (n <= 0xff) { o.push_back('\xc4'); put_be(o, n, 1); }
    else if (n <= 0xffff) { o.push_back('\xc5'); put_be(o, n, 2); }
    else { o.push_back('\xc6'); put_be(o, n, 4); }
}

void put_key(std::string& o, const char* k) { put_str(o, k, std::strlen(k)); }

// ---- the served detector -----------------------------------------------------------------------
struct Served {
    py::handle entry;  // the daemon's Entry (borrowed from its `hot` dict while we run)
    const Forest* forest = nullptr;
    int64_t n_features = 0;
    double threshold = 0;
    std::string name;  // UTF-8
    int64_t version = 0;
};

// The Entry for a request from the daemon's `hot` dict ((name, version or None) -> Entry), if
// it is loaded and has a native forest (Entry.fast); else false.
bool lookup(const py::dict& hot, const Request& q, Served& s) {
    PyObject* name = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(q.name), q.name_len, nullptr);
    if (name == nullptr) {  // not UTF-8: msgspec refuses it with a message
        PyErr_Clear();
        return false;
    }
    py::object key_name = py::reinterpret_steal<py::object>(name);
    py::object version = py::none();
    if (q.has_version) {
        if (q.version_neg) version = py::reinterpret_steal<py::object>(PyLong_FromLongLong(-static_cast<int64_t>(q.version)));
        else version = py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(q.version));
    }
    py::tuple key = py::make_tuple(key_name, version);
    PyObject* entry = PyDict_GetItemWithError(hot.ptr(), key.ptr());  // borrowed
    if (entry == nullptr) {
        PyErr_Clear();
        return false;
    }
    py::object fast = py::reinterpret_borrow<py::object>(entry).attr("fast");
    if (fast.is_none()) return false;
    py::tuple t = fast.cast<py::tuple>();  // (forest, n_features, threshold, name bytes, version)
    s.entry = entry;
    s.forest = &t[0].cast<const Forest&>();
    s.n_features = t[1].cast<int64_t>();
    s.threshold = t[2].cast<double>();
    s.name = t[3].cast<std::string>();
    s.version = t[4].cast<int64_t>();
    return true;
}

bool same_key(const Request& a, const Request& b) {
    return a.name_len == b.name_len && std::memcmp(a.name, b.name, a.name_len) == 0 &&
           a.has_version == b.has_version && a.version_neg == b.version_neg && a.version == b.version;
}

// Values the core would refuse (NaN, infinity, float64 beyond float32's range) are left to the
// Python path, which answers them with its error message.
bool all_finite(const Request& q) {
    const int64_t m = q.n * q.d;
    if (q.f32) {
        for (int64_t i = 0; i < m; ++i) {
            float v;
            std::memcpy(&v, q.data + 4 * i, 4);
            if (!std::isfinite(v)) return false;
        }
    } else {
        for (int64_t i = 0; i < m; ++i) {
            double v;
            std::memcpy(&v, q.data + 8 * i, 8);
            if (!std::isfinite(static_cast<float>(v))) return false;
        }
    }
    return true;
}

struct Batch {
    std::vector<Request> requests;
    std::vector<unsigned char> rows;  // the requests' rows, aligned and contiguous
    std::vector<double> scores;
    int64_t n_rows = 0;
    bool f32 = false;
};

// Scores a batch with one native call and appends one reply frame per request.
bool score_batch(Batch& b, const Served& s, std::string& out) {
    const int64_t item = b.f32 ? 4 : 8;
    b.rows.resize(static_cast<size_t>(b.n_rows * s.n_features * item) + 8);
    // Aligned for the element type: the vector's storage is suitably aligned for any scalar.
    unsigned char* at = b.rows.data();
    for (const Request& q : b.requests) {
        const size_t bytes = static_cast<size_t>(q.n * q.d * item);
        std::memcpy(at, q.data, bytes);
        at += bytes;
    }
    MatrixView v;
    v.data = b.rows.data();
    v.rows = b.n_rows;
    v.cols = s.n_features;
    v.row_stride = s.n_features;
    v.col_stride = 1;
    v.is_float32 = b.f32;
    b.scores.resize(static_cast<size_t>(b.n_rows));
    try {
        s.forest->score(v, b.scores.data(), 1, CancelCheck{});
    } catch (const InvalidInput&) {
        return false;  // the Python path scores these one by one and names the bad row
    }
    int64_t row = 0;
    for (const Request& q : b.requests) {
        const size_t frame_at = out.size();
        out.append(4, '\0');
        const int n_fields = 6 + q.scores + q.labels;
        out.push_back(static_cast<char>(0x80 | n_fields));
        put_key(out, "op");
        put_key(out, "detect");
        put_key(out, "id");
        put_int(out, q.id_neg, q.id);
        put_key(out, "detector");
        put_str(out, s.name.data(), s.name.size());
        put_key(out, "version");
        put_int(out, s.version < 0, s.version < 0 ? 0 - static_cast<uint64_t>(s.version) : static_cast<uint64_t>(s.version));
        put_key(out, "n_rows");
        put_int(out, false, static_cast<uint64_t>(q.n));
        put_key(out, "threshold");
        uint64_t bits;
        std::memcpy(&bits, &s.threshold, 8);
        out.push_back('\xcb');
        put_be(out, bits, 8);
        const double* sc = b.scores.data() + row;
        if (q.scores) {
            put_key(out, "scores");
            put_bin_header(out, static_cast<size_t>(8 * q.n));
            out.append(reinterpret_cast<const char*>(sc), static_cast<size_t>(8 * q.n));
        }
        if (q.labels) {
            put_key(out, "labels");
            put_bin_header(out, static_cast<size_t>(q.n));
            for (int64_t i = 0; i < q.n; ++i) out.push_back(sc[i] > s.threshold ? '\1' : '\0');
        }
        const uint64_t body = out.size() - frame_at - 4;
        for (int i = 0; i < 4; ++i) out[frame_at + i] = static_cast<char>((body >> (8 * (3 - i))) & 0xff);
        row += q.n;
    }
    return true;
}

// fast_detect(buffer, pos, end, max_frame, max_rows, hot)
//   -> (pos, replies: bytes | None, entry | None, requests, rows, native_calls, coalesced)
// Serves the fast requests from buffer[pos:end] and returns where it stopped. All of them are
// for one Entry (it stops where the detector changes), returned for the daemon's bookkeeping.
py::tuple fast_detect(const py::buffer& buffer, int64_t pos, int64_t end, int64_t max_frame, int64_t max_rows,
                      const py::dict& hot) {
    const py::buffer_info info = buffer.request();
    if (info.ndim != 1 || info.itemsize != 1 || pos < 0 || pos > end || end > info.size)
        throw InvalidInput("fast_detect: a 1-D byte buffer and 0 <= pos <= end <= len(buffer) are required");
    const auto* base = static_cast<const uint8_t*>(info.ptr);
    std::string out;
    Served served;
    Request first;
    bool have_served = false;
    Batch batch;
    int64_t batch_start = pos;
    int64_t n_requests = 0, n_rows = 0, n_calls = 0, n_coalesced = 0;

    // Scores the pending batch; if the core refuses it, its frames are given back (the caller
    // stops there and the Python path answers them).
    auto flush = [&]() -> bool {
        if (batch.requests.empty()) return true;
        const bool scored = score_batch(batch, served, out);
        if (scored) {
            n_requests += static_cast<int64_t>(batch.requests.size());
            n_rows += batch.n_rows;
            n_calls += 1;
            if (batch.requests.size() > 1) n_coalesced += static_cast<int64_t>(batch.requests.size());
        }
        batch.requests.clear();
        batch.n_rows = 0;
        return scored;
    };

    while (end - pos >= 4) {
        const uint8_t* h = base + pos;
        const uint32_t len = (uint32_t(h[0]) << 24) | (uint32_t(h[1]) << 16) | (uint32_t(h[2]) << 8) | h[3];
        if (len > static_cast<uint64_t>(max_frame) || end - pos - 4 < static_cast<int64_t>(len)) break;
        Request q;
        if (!parse_detect(h + 4, len, q, max_rows)) break;
        if (!have_served) {
            if (!lookup(hot, q, served)) break;
            have_served = true;
            first = q;
        } else if (!same_key(q, first)) {
            break;  // another detector (or version): the caller's next call serves it
        }
        if (q.d != served.n_features || !all_finite(q)) break;
        if (!batch.requests.empty() && (q.f32 != batch.f32 || batch.n_rows + q.n > max_rows)) {
            if (!flush()) {
                pos = batch_start;
                break;
            }
            batch_start = pos;
        }
        if (batch.requests.empty()) batch.f32 = q.f32;
        batch.requests.push_back(q);
        batch.n_rows += q.n;
        pos += 4 + static_cast<int64_t>(len);
    }
    if (!flush()) pos = batch_start;

    py::object replies = out.empty() ? py::object(py::none()) : py::object(py::bytes(out.data(), out.size()));
    py::object entry = n_requests ? py::reinterpret_borrow<py::object>(served.entry) : py::object(py::none());
    return py::make_tuple(pos, replies, entry, n_requests, n_rows, n_calls, n_coalesced);
}

}  // namespace

void register_fastpath(py::module_& m) {
    m.def("fast_detect", &fast_detect, py::arg("buffer"), py::arg("pos"), py::arg("end"), py::arg("max_frame"),
          py::arg("max_rows"), py::arg("hot"),
          "The daemon's native path for small raw-rows detect requests (see python/src/fastpath.cpp).");
}
