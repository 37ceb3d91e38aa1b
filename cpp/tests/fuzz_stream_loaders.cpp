// libFuzzer harness (ASan, UBSan) of the streaming detectors' native state readers
// (cpp/stream_hst.cpp, cpp/stream_oif.cpp): the first byte picks the reader, the rest is the
// state. A state read must either be refused with InvalidModel or give a detector that
// scores, learns and writes the same bytes it was read from.
#include <cstdint>
#include <string>
#include <vector>

#include "stream_hst.hpp"
#include "stream_oif.hpp"

using namespace pynomaly;

namespace {

template <class D>
void exercise(const char* data, size_t size) {
    D m = D::from_bytes(data, size);
    if (m.to_bytes() != std::string(data, size)) __builtin_trap();  // the reader and writer agree
    const int64_t d = m.n_features();
    if (d > 64) return;
    std::vector<double> X(3 * d);
    for (size_t i = 0; i < X.size(); ++i) X[i] = -2.0 + 0.37 * static_cast<double>(i);
    double out[3];
    m.score(X.data(), 3, out, 1);
    m.score_learn(X.data(), 3, out);
    m.learn(X.data(), 3);
    D again = D::from_bytes(m.to_bytes().data(), m.to_bytes().size());
    if (again.to_bytes() != m.to_bytes()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const char* body = reinterpret_cast<const char*>(data + 1);
    try {
        if (data[0] % 2 == 0)
            exercise<HalfSpaceTrees>(body, size - 1);
        else
            exercise<OnlineIsolationForest>(body, size - 1);
    } catch (const InvalidModel&) {
    }
    return 0;
}
