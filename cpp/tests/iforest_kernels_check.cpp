// Every isolation-forest kernel this build can run at a SIMD target, forced in turn, against the
// reference walk of the defining node arrays, bit for bit: trained forests and hand-built ones
// (signed zeros, ties, infinite thresholds, leaves at every level) at every depth of the
// complete layout (1..12), row counts around the 8- and 16-row groups and the block size, 1
// and 2 threads. tests/test_core_cpp.py runs it natively and for aarch64 under qemu.
//   iforest_kernels_check [target]                  check; prints one line per kernel
//   iforest_kernels_check count <target> <kernel>   score one 4096-row batch with one kernel (or
//                                                    "none": no scoring), for instruction counts
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "iforest.hpp"
#include "iforest_kernels.hpp"

using namespace pynomaly;

namespace {

struct Lcg {
    uint64_t s;
    uint64_t next() { return (s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; }
    double uniform() { return static_cast<double>(next()) / 2147483648.0; }  // [0, 1)
};

const double kValues[] = {-0.0, 0.0, -1.0, 1.0, -2.5, 2.5, 1e-40, -1e-40, 3e38, -3e38};
const float kInf = std::numeric_limits<float>::infinity();

// BFS-ordered trees with leaves anywhere from level 1 to `depth` (tree 0 is complete).
Forest hand_built(int depth, int n_trees, int d, uint64_t seed) {
    Lcg r{seed};
    ForestNodes n;
    n.n_features = d;
    n.psi = 256;
    n.tree_offset.push_back(0);
    for (int t = 0; t < n_trees; ++t) {
        std::vector<int> level{0};
        for (size_t i = 0; i < level.size(); ++i) {
            const int l = level[i];
            const bool inner = l < depth && (l == 0 || t == 0 || r.uniform() > 0.15);
            if (inner) {
                const uint64_t pick = r.next() % 12;
                n.feature.push_back(static_cast<int32_t>(r.next() % d));
                n.threshold.push_back(pick < 10 ? static_cast<float>(kValues[pick]) : (pick == 10 ? kInf : -kInf));
                n.left.push_back(static_cast<int32_t>(level.size()));
                n.leaf_value.push_back(0.0);
                level.push_back(l + 1);
                level.push_back(l + 1);
            } else {
                n.feature.push_back(-1);
                n.threshold.push_back(0.0f);
                n.left.push_back(0);
                n.leaf_value.push_back(r.uniform() * 20.0);
            }
        }
        n.tree_offset.push_back(static_cast<int32_t>(n.feature.size()));
    }
    return Forest(std::move(n));
}

std::vector<double> rows_from_values(int64_t n, int d, uint64_t seed) {
    Lcg r{seed};
    std::vector<double> X(n * d);
    for (double& v : X) v = kValues[r.next() % 10];
    return X;
}

std::vector<double> gaussianish(int64_t n, int d, uint64_t seed) {
    Lcg r{seed};
    std::vector<double> X(n * d);
    for (double& v : X) v = (r.uniform() + r.uniform() + r.uniform() - 1.5) * 2.0;
    return X;
}

int failures = 0;

void check(const Forest& f, const std::vector<double>& Y, int d, const std::vector<std::string>& kernels,
           std::vector<int>& passed, const char* what) {
    const int64_t n_all = static_cast<int64_t>(Y.size()) / d;
    std::vector<double> want(n_all), got(n_all);
    force_iforest_kernel("reference");
    f.path_length_sum(MatrixView{Y.data(), n_all, d, d, 1, false}, want.data(), 1, CancelCheck{});
    const int64_t counts[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 511, 513, 1025, n_all};
    for (size_t k = 0; k < kernels.size(); ++k) {
        force_iforest_kernel(kernels[k]);
        for (int64_t n : counts) {
            if (n > n_all) continue;
            for (int threads : {1, 2}) {
                std::fill(got.begin(), got.end(), -1.0);
                f.path_length_sum(MatrixView{Y.data(), n, d, d, 1, false}, got.data(), threads, CancelCheck{});
                if (std::memcmp(got.data(), want.data(), n * sizeof(double)) != 0) {
                    ++failures;
                    std::printf("MISMATCH kernel %s, %s, depth %d, %lld rows, %d threads\n", kernels[k].c_str(), what,
                                f.depth(), static_cast<long long>(n), threads);
                } else {
                    ++passed[k];
                }
            }
        }
    }
    force_iforest_kernel("auto");
}

int count_mode(const std::string& kernel) {
    const int d = 16;
    const std::vector<double> X = gaussianish(2000, d, 1), Y = gaussianish(4096, d, 2);
    const Forest f = Forest::train(MatrixView{X.data(), 2000, d, d, 1, false}, ForestParams{100, 256, 0, 0}, 1,
                                   CancelCheck{});
    std::vector<double> out(4096, 0.0);
    if (kernel != "none") {
        force_iforest_kernel(kernel);
        f.path_length_sum(MatrixView{Y.data(), 4096, d, d, 1, false}, out.data(), 1, CancelCheck{});
    }
    double sum = 0.0;
    for (double v : out) sum += v;
    std::printf("%s %s %.17g\n", simd_name(active_simd()), kernel.c_str(), sum);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc > 1 && std::string(argv[1]) == "count") {
            if (argc != 4) throw InvalidInput("usage: iforest_kernels_check count <target> <kernel|none>");
            set_active_simd(simd_from_name(argv[2]));
            return count_mode(argv[3]);
        }
        if (argc > 1) set_active_simd(simd_from_name(argv[1]));
        std::vector<std::string> kernels;
        for (const std::string& k : iforest_kernel_names(active_simd()))
            if (k != "reference") kernels.push_back(k);
        std::vector<int> passed(kernels.size(), 0);
        for (int depth = 1; depth <= Forest::kMaxCompleteDepth; ++depth) {
            const Forest hb = hand_built(depth, 9, 3, 100 + depth);
            if (hb.depth() != depth || !hb.uses_complete_layout()) throw std::runtime_error("hand-built depth");
            check(hb, rows_from_values(1100, 3, 200 + depth), 3, kernels, passed, "hand-built");
            // psi = 2^(depth-1) + 1 samples give trees of exactly `depth` levels at most
            const int64_t psi = (int64_t(1) << (depth - 1)) + 1;
            const int d = 5;
            const std::vector<double> X = gaussianish(std::max<int64_t>(psi, 100), d, 300 + depth);
            const Forest tr = Forest::train(MatrixView{X.data(), static_cast<int64_t>(X.size()) / d, d, d, 1, false},
                                            ForestParams{7, psi, 0, static_cast<uint64_t>(depth)}, 1, CancelCheck{});
            check(tr, gaussianish(1100, d, 400 + depth), d, kernels, passed, "trained");
        }
        std::printf("target %s\n", simd_name(active_simd()));
        for (size_t k = 0; k < kernels.size(); ++k)
            std::printf("kernel %s %s %d\n", kernels[k].c_str(), failures ? "checked" : "ok", passed[k]);
        return failures ? 2 : 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
