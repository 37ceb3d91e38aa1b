// libFuzzer harness of what the binding hands the core from a model file: a forest's node
// arrays (Forest's constructor, then scoring and both explainers with every SIMD target this
// CPU runs) and a
// neighbour model's training rows, k, metric and algorithm (knn_search). Built with
// -fsanitize=fuzzer,address,undefined by tests/test_model_format_fuzz.py, which runs it over
// tests/fuzz/corpus/native/ (seeds from tests/fuzz/make_corpus.py) for a bounded time. Anything
// but a result or InvalidInput (InvalidModel included) is a finding: a sanitizer report, a
// signal, another exception.
//
// Input: byte 0 even = a forest, odd = a neighbour search. Fields are little-endian and read
// in the order below; bytes past the end read as zero.
//   forest: i64 n_features, i64 psi, u8 trees (1 + t % 8), u16 nodes (1 + v % 256),
//           i32 tree_offset[trees + 1], i32 feature[nodes], f32 threshold[nodes],
//           i32 left[nodes], f64 leaf_value[nodes], then f64 rows (3 x n_features, if <= 64)
//   knn:    u16 n (1 + v % 64), u8 d (1 + v % 8), i64 k, u8 metric (% 5, 4 = unknown),
//           u8 algorithm (% 4, 3 = unknown), u8 flags (1 float32, 2 separate queries),
//           u8 q (1 + v % 8), then the data rows (n x d) and the query rows (q x d)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "explain.hpp"
#include "iforest.hpp"
#include "knn.hpp"

using namespace pynomaly;

namespace {

struct Reader {
    const uint8_t* p;
    size_t n, at = 0;
    template <class T>
    T get() {
        T v{};
        uint8_t b[sizeof(T)] = {};
        for (size_t i = 0; i < sizeof(T) && at < n; ++i) b[i] = p[at++];
        std::memcpy(&v, b, sizeof(T));
        return v;
    }
    template <class T>
    std::vector<T> array(size_t count) {
        std::vector<T> v(count);
        for (auto& x : v) x = get<T>();
        return v;
    }
};

void fuzz_forest(Reader& r) {
    ForestNodes nodes;
    nodes.n_features = r.get<int64_t>();
    nodes.psi = r.get<int64_t>();
    const size_t trees = 1 + r.get<uint8_t>() % 8, count = 1 + r.get<uint16_t>() % 256;
    nodes.tree_offset = r.array<int32_t>(trees + 1);
    nodes.feature = r.array<int32_t>(count);
    nodes.threshold = r.array<float>(count);
    nodes.left = r.array<int32_t>(count);
    nodes.leaf_value = r.array<double>(count);
    try {
        const Forest forest(std::move(nodes));
        const int64_t d = forest.nodes().n_features;
        if (d > 64) return;
        std::vector<double> rows = r.array<double>(static_cast<size_t>(3 * d)), out(3);
        MatrixView X;
        X.data = rows.data();
        X.rows = 3;
        X.cols = d;
        X.row_stride = d;
        X.col_stride = 1;
        // The explainer reads the same arrays its own way (node counts recovered from the leaf
        // values); the binding hands it finite float32 rows only.
        std::vector<float> x32(rows.size());
        bool finite = true;
        for (size_t i = 0; i < rows.size(); ++i) {
            x32[i] = static_cast<float>(rows[i]);
            finite = finite && std::isfinite(x32[i]);
        }
        std::unique_ptr<ForestExplainer> explainer;
        if (finite) {
            try {
                explainer = std::make_unique<ForestExplainer>(forest);
            } catch (const InvalidInput&) {  // leaf values that hide the counts
            }
        }
        std::vector<double> phi(static_cast<size_t>(3 * d));
        for (int t = 0; t < kSimdTargets; ++t) {
            if (!simd_supported(static_cast<SimdTarget>(t))) continue;
            set_active_simd(static_cast<SimdTarget>(t));
            for (int64_t n = 1; n <= 3; n += 2) {  // the few-rows kernel and the block kernel
                X.rows = n;
                try {
                    forest.score(X, out.data(), 1, CancelCheck{});
                } catch (const InvalidInput&) {  // non-finite rows
                }
                if (explainer) {
                    explainer->tree_shap(x32.data(), n, phi.data(), 1, CancelCheck{});
                    explainer->path(x32.data(), n, phi.data(), 1, CancelCheck{});
                }
            }
        }
        set_active_simd(SimdTarget::baseline);
    } catch (const InvalidInput&) {
    }
}

void fuzz_knn(Reader& r) {
    static const char* metrics[] = {"euclidean", "sqeuclidean", "manhattan", "cosine", "chebyshev"};
    static const char* algorithms[] = {"auto", "brute", "kd_tree", "ball_tree"};
    const int64_t n = 1 + r.get<uint16_t>() % 64, d = 1 + r.get<uint8_t>() % 8;
    const int64_t k = r.get<int64_t>();
    const std::string metric = metrics[r.get<uint8_t>() % 5], algorithm = algorithms[r.get<uint8_t>() % 4];
    const uint8_t flags = r.get<uint8_t>();
    const int64_t q = 1 + r.get<uint8_t>() % 8;
    const bool f32 = flags & 1, queries = flags & 2;
    std::vector<float> xf, yf;
    std::vector<double> xd, yd;
    MatrixView X, Y;
    X.rows = n;
    Y.rows = q;
    X.cols = Y.cols = d;
    X.row_stride = Y.row_stride = d;
    X.col_stride = Y.col_stride = 1;
    X.is_float32 = Y.is_float32 = f32;
    if (f32) {
        xf = r.array<float>(static_cast<size_t>(n * d));
        yf = r.array<float>(static_cast<size_t>(q * d));
        X.data = xf.data();
        Y.data = yf.data();
    } else {
        xd = r.array<double>(static_cast<size_t>(n * d));
        yd = r.array<double>(static_cast<size_t>(q * d));
        X.data = xd.data();
        Y.data = yd.data();
    }
    const int64_t rows = queries ? q : n, available = queries ? n : n - 1;
    // As the binding does: outputs only for a k in range, so a k the core failed to refuse
    // writes through a null pointer and is found.
    const bool fits = k >= 1 && k <= available;
    std::vector<double> dist(fits ? static_cast<size_t>(rows * k) : 0);
    std::vector<int64_t> idx(dist.size());
    try {
        knn_search(X, queries ? &Y : nullptr, k, metric_from_name(metric), knn_algorithm_from_name(algorithm), 1,
                   CancelCheck{}, fits ? dist.data() : nullptr, fits ? idx.data() : nullptr);
        if (!fits) __builtin_trap();  // accepted a k out of range
        for (int64_t i : idx)
            if (i < 0 || i >= n) __builtin_trap();  // an index outside the data
    } catch (const InvalidInput&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    Reader r{data, size, 1};
    if (data[0] % 2 == 0)
        fuzz_forest(r);
    else
        fuzz_knn(r);
    return 0;
}
