// Binding of the isolation-forest attributions (cpp/explain.hpp): ForestExplainer, built once
// per forest and cached by the Python detector. Arrays are converted with the GIL held; the
// work runs with it released (above a few rows), polling Ctrl-C between chunks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <cmath>

#include "explain.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

constexpr int64_t kSmallBatch = 64;  // as the scoring binding: below it, keep the GIL

struct SignalPoll {
    std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
    static bool poll(void* ctx) {
        auto* self = static_cast<SignalPoll*>(ctx);
        const auto now = std::chrono::steady_clock::now();
        if (now - self->last < std::chrono::milliseconds(50)) return false;
        self->last = now;
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    }
};

using FloatRows = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::array_t<double> explain_rows(const ForestExplainer& e, const FloatRows& X, int n_jobs, bool shap) {
    if (X.ndim() != 2 || X.shape(1) != e.n_features())
        throw InvalidInput("X must be 2-dimensional with " + std::to_string(e.n_features()) + " features");
    const int64_t n = X.shape(0), d = e.n_features();
    const float* x = X.data();
    // The walks compare x < threshold: a NaN or an infinity would take a branch silently.
    for (int64_t i = 0; i < n * d; ++i)
        if (!std::isfinite(x[i])) throw InvalidInput(bad_value_message(x[i], i / d, i % d));
    py::array_t<double> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)});
    double* o = out.mutable_data();
    auto run = [&](const CancelCheck& c) {
        if (shap) e.tree_shap(x, n, o, n_jobs, c); else e.path(x, n, o, n_jobs, c);
    };
    try {
        if (n <= kSmallBatch) {
            run(CancelCheck{});
        } else {
            SignalPoll poll;
            py::gil_scoped_release release;
            run(CancelCheck{&SignalPoll::poll, &poll});
        }
    } catch (const Cancelled&) {
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        throw py::error_already_set();
    }
    return out;
}

}  // namespace

void bind_explain(py::module_& m) {
    py::class_<ForestExplainer>(m, "ForestExplainer")
        .def(py::init([](const Forest& f, int max_table_bits, int64_t table_budget) {
                 py::gil_scoped_release release;
                 return ForestExplainer(f, max_table_bits, table_budget);
             }),
             py::arg("forest"), py::arg("max_table_bits") = ForestExplainer::kMaxTableBits,
             py::arg("table_budget") = ForestExplainer::kDefaultTableBudget,
             "Node counts recovered from the leaf values and per-leaf TreeSHAP tables for `forest`.")
        .def("tree_shap", [](const ForestExplainer& e, const FloatRows& X, int n_jobs) {
                 return explain_rows(e, X, n_jobs, true);
             }, py::arg("X"), py::arg("n_jobs") = 1,
             "Exact path-dependent TreeSHAP of the mean path length E[h(x)], (n, d) float64.")
        .def("path", [](const ForestExplainer& e, const FloatRows& X, int n_jobs) {
                 return explain_rows(e, X, n_jobs, false);
             }, py::arg("X"), py::arg("n_jobs") = 1,
             "DIFFI-style path attribution of E[h(x)], (n, d) float64.")
        .def_property_readonly("expected_value", &ForestExplainer::expected_value)
        .def_property_readonly("table_entries", &ForestExplainer::table_entries)
        .def_property_readonly("direct_leaves", &ForestExplainer::direct_leaves);
}
