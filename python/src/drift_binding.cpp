// The binding of drift monitoring's counting kernel (cpp/drift.hpp): arrays are converted
// while the GIL is held, then counted without it (unless the batch is a handful of rows).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "drift.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

constexpr int64_t kSmallBatch = 64;  // below this, releasing the GIL costs more than counting

using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::tuple count(const py::array& X, const py::handle& edges_in, const py::handle& offsets_in, int n_jobs) {
    if (X.ndim() != 2)
        throw InvalidInput("X must be 2-dimensional (rows x features), got " + std::to_string(X.ndim()) +
                           " dimension(s)");
    F64 edges = F64::ensure(edges_in);
    I64 offsets = I64::ensure(offsets_in);
    if (!edges || edges.ndim() != 1) throw InvalidInput("edges must be a 1-dimensional float array");
    if (!offsets || offsets.ndim() != 1 || offsets.size() < 2)
        throw InvalidInput("offsets must be a 1-dimensional integer array of n_features + 1 entries");
    DriftEdges e{edges.data(), offsets.data(), static_cast<int64_t>(offsets.size()) - 1};
    if (offsets.data()[e.n_features] != edges.size())
        throw InvalidInput("offsets must end at the number of edges (" + std::to_string(edges.size()) + ")");
    check_drift_edges(e);
    // float32 and float64 rows are read where they are, whatever their strides (a sample of
    // every k-th row is a view, not a copy); anything else is converted to float64 first.
    py::array rows = X;
    const bool f32 = X.dtype().equal(py::dtype::of<float>()), f64 = X.dtype().equal(py::dtype::of<double>());
    const int64_t item = f32 ? 4 : 8;
    if (!(f32 || f64) || X.strides(0) % item != 0 || X.strides(1) % item != 0) {
        rows = F64::ensure(X);
        if (!rows) throw InvalidInput("X must be a numeric array");
    }
    MatrixView v;
    v.is_float32 = f32 && rows.ptr() == X.ptr();
    v.data = rows.data();
    v.rows = rows.shape(0);
    v.cols = rows.shape(1);
    v.row_stride = rows.strides(0) / (v.is_float32 ? 4 : 8);
    v.col_stride = rows.strides(1) / (v.is_float32 ? 4 : 8);
    py::array_t<int64_t> counts(e.n_bins());
    py::array_t<double> tails({e.n_features, static_cast<int64_t>(2)});
    std::fill(counts.mutable_data(), counts.mutable_data() + counts.size(), 0);
    std::fill(tails.mutable_data(), tails.mutable_data() + tails.size(), 0.0);
    int64_t* c = counts.mutable_data();
    double* t = tails.mutable_data();
    if (v.rows <= kSmallBatch) {
        drift_count(v, e, c, t, 1, CancelCheck{});
    } else {
        py::gil_scoped_release release;
        drift_count(v, e, c, t, n_jobs, CancelCheck{});
    }
    return py::make_tuple(counts, tails);
}

}  // namespace

void bind_drift(py::module_& m) {
    m.def("drift_count", &count, py::arg("X"), py::arg("edges"), py::arg("offsets"), py::arg("n_jobs") = 1,
          "Bin counts of X's rows on a drift profile's edges: (counts int64[offsets[-1] + n_features], "
          "tails float64[n_features, 2]); feature f's edges are edges[offsets[f]:offsets[f+1]].");
}
