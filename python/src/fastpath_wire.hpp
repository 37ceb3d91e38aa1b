// The daemon fast path's wire format: parsing a Detect request frame and encoding its reply
// exactly as msgspec encodes a DetectReply (python/pynomaly/wire.py). No Python here, so the
// parser can be fuzzed on its own under sanitizers (cpp/tests/fuzz_fastpath_wire.cpp); the
// glue that looks up detectors and scores is python/src/fastpath.cpp. Every read is
// bounds-checked: the bytes come from untrusted clients.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

// By its path from here: the parser's fuzz test builds it with python/src alone on the include path.
#include "../../cpp/scores.hpp"

namespace pynomaly::fastwire {

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

// A detector name as pynomaly.domain.NAME_PATTERN says: 1 to 128 of [A-Za-z0-9._-], starting
// with a letter or digit. Others are the typed decoder's to refuse.
inline bool valid_name(const uint8_t* s, uint32_t len) {
    if (len < 1 || len > 128) return false;
    for (uint32_t i = 0; i < len; ++i) {
        const uint8_t c = s[i];
        const bool alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
    }
    return true;
}

inline bool equals(const uint8_t* s, uint32_t len, const char* lit) {
    return len == std::strlen(lit) && std::memcmp(s, lit, len) == 0;
}

// A request's explain_method as the native path knows them (an isolation forest's); any other
// name is the Python path's to answer.
constexpr uint8_t kExplainDefault = 0, kExplainTreeShap = 1, kExplainPath = 2;
// The most rows of one request whose TreeSHAP (the forest's default method: a third of a
// millisecond a row at 100 trees) the loop computes itself: more would stall every other
// connection of its thread, so larger ones go to the host's worker threads. The path method
// costs a few microseconds a row: up to the loop's row limits.
constexpr int64_t kTreeShapLoopRows = 8;

struct Request {
    bool id_neg = false;
    uint64_t id = 0;
    const uint8_t* name = nullptr;
    uint32_t name_len = 0;
    bool has_version = false;
    bool version_neg = false;
    uint64_t version = 0;
    bool scores = true, labels = true;  // `want` absent or nil: scores and labels
    bool attributions = false;          // `want` names "attributions" (fastpath_explain.hpp)
    uint8_t explain = kExplainDefault;  // `explain_method`, for a forest
    bool f32 = false;
    int64_t n = 0, d = 0;
    const uint8_t* data = nullptr;
};

// The rows map: {"dtype": "f4"|"f8", "shape": [n, d], "data": bin}, each key once, no other.
inline bool parse_rows(Reader& r, Request& q, int64_t max_rows) {
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

// explain_method: nil, or the name of a forest's method.
inline bool parse_explain_method(Reader& r, Request& q) {
    if (r.nil()) return true;
    const uint8_t* s;
    uint32_t sl;
    if (!r.str(s, sl)) return false;
    if (equals(s, sl, "tree_shap")) q.explain = kExplainTreeShap;
    else if (equals(s, sl, "path")) q.explain = kExplainPath;
    else return false;
    return true;
}

// A whole frame body as a fast request: {"op": "detect", "id": int, "detector": str,
// "version"?: nil|int, "want"?: nil|[("scores"|"labels"|"attributions")...],
// "explain_method"?: nil|"tree_shap"|"path", "rows": rows}, each key once; explain_method only
// with attributions (else the Python path's error); TreeSHAP for at most kTreeShapLoopRows rows.
inline bool parse_detect(const uint8_t* body, uint32_t len, Request& q, int64_t max_rows) {
    Reader r{body, body + len};
    uint32_t fields;
    if (!r.map(fields) || fields > 7) return false;
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
        else if (equals(k, kl, "explain_method")) bit = 64;
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
            case 2:  // unsigned, as pynomaly.wire.RequestId: a negative id is the Python path's to refuse
                if (!r.integer(q.id_neg, q.id) || q.id_neg) return false;
                break;
            case 4:
                if (!r.str(q.name, q.name_len) || !valid_name(q.name, q.name_len)) return false;
                break;
            case 8:
                if (!r.nil()) {  // 0 <= version < 2^63, as pynomaly.wire.VersionNumber
                    if (!r.integer(q.version_neg, q.version) || q.version_neg || q.version > 0x7fffffffffffffffULL)
                        return false;
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
                        else if (equals(s, sl, "attributions")) q.attributions = true;
                        else return false;  // probabilities, anomalies, or invalid: the Python path
                    }
                }
                break;
            case 32:
                if (!parse_rows(r, q, max_rows)) return false;
                break;
            case 64:
                if (!parse_explain_method(r, q)) return false;
                break;
        }
    }
    if (q.explain != kExplainDefault && !q.attributions) return false;
    if (q.attributions && q.explain != kExplainPath && q.n > kTreeShapLoopRows) return false;
    return (seen & (1 | 2 | 4 | 32)) == (1 | 2 | 4 | 32) && r.p == r.end;  // nothing trailing
}

// ---- MessagePack writing, as msgspec encodes a DetectReply -------------------------------------
inline void put_be(std::string& o, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) o.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

inline void put_int(std::string& o, bool neg, uint64_t mag) {
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

inline void put_str(std::string& o, const char* s, size_t n) {
    if (n < 32) o.push_back(static_cast<char>(0xa0 | n));
    else if (n <= 0xff) { o.push_back('\xd9'); put_be(o, n, 1); }
    else if (n <= 0xffff) { o.push_back('\xda'); put_be(o, n, 2); }
    else { o.push_back('\xdb'); put_be(o, n, 4); }
    o.append(s, n);
}

inline void put_bin_header(std::string& o, size_t n) {
    if (n <= 0xff) { o.push_back('\xc4'); put_be(o, n, 1); }
    else if (n <= 0xffff) { o.push_back('\xc5'); put_be(o, n, 2); }
    else { o.push_back('\xc6'); put_be(o, n, 4); }
}

inline void put_key(std::string& o, const char* k) { put_str(o, k, std::strlen(k)); }

inline bool same_key(const Request& a, const Request& b) {
    return a.name_len == b.name_len && std::memcmp(a.name, b.name, a.name_len) == 0 &&
           a.has_version == b.has_version && a.version_neg == b.version_neg && a.version == b.version;
}

// Values the core would refuse (NaN, infinity, float64 beyond float32's range) are left to the
// Python path, which answers them with its error message.
inline bool all_finite(const Request& q) {
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

// The attributions of a request's rows for its reply: values (n x d, row after row) and the
// names of the method and output they came from.
struct Explained {
    const double* values = nullptr;
    int64_t d = 0;
    const char* method = nullptr;
    const char* output = nullptr;
};

inline void put_explained(std::string& out, const Request& q, const Explained& e) {
    const size_t bytes = static_cast<size_t>(8 * q.n * e.d);
    put_key(out, "attributions");
    put_bin_header(out, bytes);
    out.append(reinterpret_cast<const char*>(e.values), bytes);
    put_key(out, "explain_method");
    put_key(out, e.method);
    put_key(out, "explain_output");
    put_key(out, e.output);
}

// One reply frame (4-byte big-endian length, then the map) for request q, whose scores are
// scores[0 .. q.n): the fields of DetectReply in its order, absent arrays omitted; explained:
// the attributions q asked for (else nullptr).
inline void put_reply(std::string& out, const Request& q, const std::string& name, int64_t version,
                      double threshold, const double* scores, const Explained* explained = nullptr) {
    const size_t frame_at = out.size();
    out.append(4, '\0');
    const int n_fields = 6 + q.scores + q.labels + (explained != nullptr ? 3 : 0);
    out.push_back(static_cast<char>(0x80 | n_fields));
    put_key(out, "op");
    put_key(out, "detect");
    put_key(out, "id");
    put_int(out, q.id_neg, q.id);
    put_key(out, "detector");
    put_str(out, name.data(), name.size());
    put_key(out, "version");
    put_int(out, version < 0, version < 0 ? 0 - static_cast<uint64_t>(version) : static_cast<uint64_t>(version));
    put_key(out, "n_rows");
    put_int(out, false, static_cast<uint64_t>(q.n));
    put_key(out, "threshold");
    uint64_t bits;
    std::memcpy(&bits, &threshold, 8);
    out.push_back('\xcb');
    put_be(out, bits, 8);
    if (q.scores) {
        put_key(out, "scores");
        put_bin_header(out, static_cast<size_t>(8 * q.n));
        out.append(reinterpret_cast<const char*>(scores), static_cast<size_t>(8 * q.n));
    }
    if (q.labels) {
        put_key(out, "labels");
        put_bin_header(out, static_cast<size_t>(q.n));
        for (int64_t i = 0; i < q.n; ++i) out.push_back(is_anomaly(scores[i], threshold) ? '\1' : '\0');
    }
    if (explained != nullptr) put_explained(out, q, *explained);
    const uint64_t body = out.size() - frame_at - 4;
    for (int i = 0; i < 4; ++i) out[frame_at + i] = static_cast<char>((body >> (8 * (3 - i))) & 0xff);
}

// One Error reply frame, as msgspec encodes pynomaly.wire.Error(id, code, message): the
// connection-level errors the native loop answers itself (frame_too_large, timeout, ...).
inline void put_error(std::string& out, uint64_t id, const std::string& code, const std::string& message) {
    const size_t frame_at = out.size();
    out.append(4, '\0');
    out.push_back(static_cast<char>(0x84));
    put_key(out, "op");
    put_key(out, "error");
    put_key(out, "id");
    put_int(out, false, id);
    put_key(out, "code");
    put_str(out, code.data(), code.size());
    put_key(out, "message");
    put_str(out, message.data(), message.size());
    const uint64_t body = out.size() - frame_at - 4;
    for (int i = 0; i < 4; ++i) out[frame_at + i] = static_cast<char>((body >> (8 * (3 - i))) & 0xff);
}

}  // namespace pynomaly::fastwire
