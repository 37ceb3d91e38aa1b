// Attributions on the daemon's native path (issue 22): a detect asking for want: ["attributions"]
// of a served isolation forest is answered here, with the values the Python path sends
// (IsolationForest.explain(X, method).values with output "log2_score"), bit for bit: the same
// native kernels (cpp/explain.hpp) on the same float32 rows, times the same -1 / c(psi). No
// Python here: the loop threads call it without the GIL.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../../cpp/explain.hpp"
#include "fastpath_wire.hpp"

namespace pynomaly::fastwire {

// A served forest's explainer, built by the first request that asks for attributions (its
// tables take milliseconds and a few MiB that plain serving never needs), once, by whichever
// thread asks first. A forest that cannot be explained gives nullptr: the Python path answers.
class LazyExplainer {
public:
    explicit LazyExplainer(const Forest* forest) : forest_(forest) {}

    const ForestExplainer* get() const {
        std::call_once(once_, [this] {
            try {
                explainer_ = std::make_unique<ForestExplainer>(*forest_);
                const double c = average_path_length(static_cast<double>(forest_->nodes().psi));
                scale_ = c > 0.0 ? -1.0 / c : 0.0;  // as IsolationForest._explainer_and_scale
            } catch (const std::exception&) {
                explainer_.reset();
            }
        });
        return explainer_.get();
    }
    // log2_score values = path-length values times this (after get()).
    double scale() const { return scale_; }

private:
    const Forest* forest_;
    mutable std::once_flag once_;
    mutable std::unique_ptr<ForestExplainer> explainer_;
    mutable double scale_ = 0.0;
};

// Per request of a batch (requests, n_rows rows in all) that asks for them, its rows'
// attributions into phi (n_rows x d, at the request's rows; the others' left as they are).
// rows: the batch's rows as scored (aligned, float32 if f32, else float64). False when the
// forest or the rows cannot be explained (nothing to reply).
inline bool explain_requests(const std::vector<Request>& requests, int64_t n_rows, bool f32, const void* rows,
                             int64_t d, const LazyExplainer& lazy, std::vector<float>& x32, std::vector<double>& phi) {
    const ForestExplainer* e = lazy.get();
    if (e == nullptr || e->n_features() != d) return false;
    phi.resize(static_cast<size_t>(n_rows * d));
    int64_t row = 0;
    for (const Request& q : requests) {
        if (q.attributions) {
            const float* x;
            if (f32) {
                x = static_cast<const float*>(rows) + row * d;
            } else {  // as np.ascontiguousarray(X, dtype=np.float32)
                const double* x64 = static_cast<const double*>(rows) + row * d;
                x32.resize(static_cast<size_t>(q.n * d));
                for (int64_t i = 0; i < q.n * d; ++i) x32[i] = static_cast<float>(x64[i]);
                x = x32.data();
            }
            double* out = phi.data() + row * d;
            try {
                if (q.explain == kExplainPath) e->path(x, q.n, out, 1, CancelCheck{});
                else e->tree_shap(x, q.n, out, 1, CancelCheck{});
            } catch (const std::exception&) {
                return false;
            }
            const double scale = lazy.scale();
            for (int64_t i = 0; i < q.n * d; ++i) out[i] *= scale;
        }
        row += q.n;
    }
    return true;
}

inline Explained explained_of(const Request& q, const double* phi_at, int64_t d) {
    Explained e;
    e.values = phi_at;
    e.d = d;
    e.method = q.explain == kExplainPath ? "path" : "tree_shap";  // the forest's default: tree_shap
    e.output = "log2_score";
    return e;
}

}  // namespace pynomaly::fastwire
