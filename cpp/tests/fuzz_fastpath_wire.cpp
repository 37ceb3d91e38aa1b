// Fuzzes the daemon fast path's frame parser and reply encoder (python/src/fastpath_wire.hpp)
// under AddressSanitizer and UBSan: valid Detect bodies, then mutated ones (bytes overwritten,
// cut, extended, spliced, or plain noise), each parsed from a heap buffer of exactly its size so
// that a read one byte past it is caught. Whatever parses must point inside its buffer.
// Built and run by tests/test_daemon_fastpath.py; prints "parsed <accepted> of <tried>".
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fastpath_wire.hpp"

using namespace pynomaly::fastwire;

namespace {

void put_map(std::string& o, unsigned n) { o.push_back(static_cast<char>(0x80 | n)); }
void put_array(std::string& o, unsigned n) { o.push_back(static_cast<char>(0x90 | n)); }

// A valid Detect body with random id, name, version, want, dtype and rows.
std::string valid_body(std::mt19937_64& rng) {
    std::string o;
    const bool with_version = rng() % 2, with_want = rng() % 2, with_method = rng() % 4 == 0;
    put_map(o, 4 + with_version + with_want + with_method);
    put_key(o, "op");
    put_key(o, "detect");
    put_key(o, "id");
    const uint64_t id = rng();
    put_int(o, rng() % 3 == 0, rng() % 2 ? id : id % 300);
    put_key(o, "detector");
    const std::string name(static_cast<size_t>(1 + rng() % 40), static_cast<char>('a' + rng() % 26));
    put_str(o, name.data(), name.size());
    if (with_version) {
        put_key(o, "version");
        if (rng() % 2) o.push_back('\xc0');
        else put_int(o, false, rng() % 70000);
    }
    if (with_want) {
        put_key(o, "want");
        const unsigned n = static_cast<unsigned>(rng() % 3);
        put_array(o, n);
        static const char* const wants[3] = {"scores", "labels", "attributions"};
        for (unsigned i = 0; i < n; ++i) put_key(o, wants[rng() % 3]);
    }
    if (with_method) {
        put_key(o, "explain_method");
        static const char* const methods[3] = {"tree_shap", "path", "nope"};
        if (rng() % 4 == 0) o.push_back('\xc0');
        else put_key(o, methods[rng() % 3]);
    }
    put_key(o, "rows");
    put_map(o, 3);
    const bool f32 = rng() % 2;
    const int64_t n = 1 + static_cast<int64_t>(rng() % 8), d = 1 + static_cast<int64_t>(rng() % 30);
    put_key(o, "dtype");
    put_key(o, f32 ? "f4" : "f8");
    put_key(o, "shape");
    put_array(o, 2);
    put_int(o, false, static_cast<uint64_t>(n));
    put_int(o, false, static_cast<uint64_t>(d));
    put_key(o, "data");
    const size_t bytes = static_cast<size_t>(n * d * (f32 ? 4 : 8));
    put_bin_header(o, bytes);
    for (size_t i = 0; i < bytes; ++i) o.push_back(static_cast<char>(rng() % 7 == 0 ? 0x7f : rng() % 64));
    return o;
}

std::string mutate(std::string s, std::mt19937_64& rng) {
    switch (rng() % 6) {
        case 0:  // overwrite a few bytes
            for (int k = 1 + static_cast<int>(rng() % 4); k > 0 && !s.empty(); --k)
                s[rng() % s.size()] = static_cast<char>(rng());
            break;
        case 1:  // cut
            s.resize(s.empty() ? 0 : rng() % s.size());
            break;
        case 2:  // extend with noise
            for (int k = 1 + static_cast<int>(rng() % 16); k > 0; --k) s.push_back(static_cast<char>(rng()));
            break;
        case 3: {  // splice: repeat a slice somewhere else
            if (s.size() < 2) break;
            const size_t a = rng() % s.size(), len = rng() % (s.size() - a);
            s.insert(rng() % s.size(), s.substr(a, len));
            break;
        }
        case 4:  // a length or count byte pushed to an extreme
            if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng() % 2 ? 0xff : 0xdf);
            break;
        default: {  // noise
            s.assign(static_cast<size_t>(rng() % 64), '\0');
            for (char& c : s) c = static_cast<char>(rng());
        }
    }
    return s;
}

bool inside(const uint8_t* p, uint64_t len, const uint8_t* base, size_t size) {
    return p >= base && p <= base + size && len <= static_cast<uint64_t>(base + size - p);
}

}  // namespace

int main(int argc, char** argv) {
    const long iterations = argc > 1 ? std::atol(argv[1]) : 200000;
    std::mt19937_64 rng(12345);
    long parsed = 0;
    std::string reply;
    std::vector<double> scores(64);
    for (long it = 0; it < iterations; ++it) {
        std::string body = valid_body(rng);
        if (it % 4 != 0) body = mutate(body, rng);  // a quarter stay valid
        const size_t size = body.size();
        std::unique_ptr<uint8_t[]> buf(new uint8_t[size ? size : 1]);
        std::memcpy(buf.get(), body.data(), size);
        Request q;
        const int64_t max_rows = 1 + static_cast<int64_t>(rng() % 64);
        if (!parse_detect(buf.get(), static_cast<uint32_t>(size), q, max_rows)) continue;
        ++parsed;
        const uint64_t item = q.f32 ? 4 : 8;
        if (!inside(q.name, q.name_len, buf.get(), size) || q.n < 1 || q.n > max_rows || q.d < 1 ||
            !inside(q.data, static_cast<uint64_t>(q.n * q.d) * item, buf.get(), size)) {
            std::fprintf(stderr, "iteration %ld: a parsed request points outside its frame\n", it);
            return 1;
        }
        (void)all_finite(q);  // reads every value: the sanitizer checks the bounds
        reply.clear();
        std::vector<double> values(static_cast<size_t>(q.n * q.d));
        const Explained e{values.data(), q.d, "path", "log2_score"};
        put_reply(reply, q, std::string(reinterpret_cast<const char*>(q.name), q.name_len), 3, 0.5, scores.data(),
                  q.attributions ? &e : nullptr);
        const uint64_t framed = (uint64_t(uint8_t(reply[0])) << 24) | (uint64_t(uint8_t(reply[1])) << 16) |
                                (uint64_t(uint8_t(reply[2])) << 8) | uint8_t(reply[3]);
        if (framed + 4 != reply.size()) {
            std::fprintf(stderr, "iteration %ld: reply length field %llu for %zu bytes\n", it,
                         static_cast<unsigned long long>(framed), reply.size());
            return 1;
        }
    }
    std::printf("parsed %ld of %ld\n", parsed, iterations);
    return 0;
}
