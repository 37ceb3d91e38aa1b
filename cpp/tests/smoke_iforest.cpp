// A Python-free program over the core: trains an isolation forest on data from a fixed LCG
// and prints the scores' sum and first value with full precision. tests/test_core_cpp.py
// builds it natively and for aarch64 and checks that every build, SIMD target and the Python
// binding print the same bits.  Usage: smoke_iforest [baseline|avx2|avx512]
#include <cstdio>
#include <string>
#include <vector>

#include "iforest.hpp"

using namespace pynomaly;

int main(int argc, char** argv) {
    try {
        if (argc > 1) set_active_simd(simd_from_name(argv[1]));
        const int64_t n = 3000, d = 7;
        std::vector<double> X(n * d);
        uint64_t s = 42;
        for (double& v : X) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            v = static_cast<double>(s >> 11) * 0x1.0p-53 * 10.0 - 5.0;
        }
        const MatrixView view{X.data(), n, d, d, 1, false};
        const Forest forest = Forest::train(view, ForestParams{100, 256, 0, 7}, 2, CancelCheck{});
        std::vector<double> scores(n);
        forest.score(view, scores.data(), 2, CancelCheck{});
        double sum = 0.0;
        for (double v : scores) sum += v;
        std::printf("%s %d %.17g %.17g\n", simd_name(active_simd()), forest.depth(), sum, scores[0]);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
