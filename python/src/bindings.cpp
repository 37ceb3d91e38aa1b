// The one binding between Python and the native core. Arguments are converted while the GIL
// is held; native work then runs with the GIL released. Native errors become the package's
// exceptions (pynomaly._errors); Ctrl-C during a long call re-raises KeyboardInterrupt.
#include <cctype>
#include <cstdlib>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>
#include <string>

#include "common.hpp"
#include "iforest.hpp"
#include "iforest_kernels.hpp"
#include "knn.hpp"
#include "scores.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

// Work below this many rows runs with the GIL held and without signal polling: releasing and
// re-acquiring costs more than scoring a handful of rows.
constexpr int64_t kSmallBatch = 64;

MatrixView matrix_view(const py::array& X) {
    if (X.ndim() != 2)
        throw InvalidInput("X must be 2-dimensional (rows x features), got " + std::to_string(X.ndim()) +
                           " dimension(s); reshape a single row with X.reshape(1, -1)");
    MatrixView v;
    const auto dtype = X.dtype();
    // Equality, not identity: an equal dtype object (e.g. "=f8") is the same type; a
    // non-native byte order is not equal and is converted by the Python layer.
    if (dtype.equal(py::dtype::of<float>())) {
        v.is_float32 = true;
    } else if (!dtype.equal(py::dtype::of<double>())) {
        throw InvalidInput("X must be float32 or float64, got " + std::string(py::str(dtype)));
    }
    const int64_t item = v.is_float32 ? 4 : 8;
    if (X.strides(0) % item != 0 || X.strides(1) % item != 0)
        throw InvalidInput("X has strides that are not a multiple of its item size; pass np.ascontiguousarray(X)");
    v.data = X.data();
    v.rows = X.shape(0);
    v.cols = X.shape(1);
    v.row_stride = X.strides(0) / item;
    v.col_stride = X.strides(1) / item;
    return v;
}

struct SignalPoll {
    std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
    const py::object* progress = nullptr;  // the caller's progress(fraction) callback, or none
    double fraction = -1.0, reported = -1.0;
    // At most every 50 ms, with the GIL: signals first, then the progress callback (whose
    // exception, like a signal handler's, stops the call and is re-raised).
    static bool poll(void* ctx) {
        auto* self = static_cast<SignalPoll*>(ctx);
        const auto now = std::chrono::steady_clock::now();
        if (now - self->last < std::chrono::milliseconds(50)) return false;
        self->last = now;
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) return true;  // sets KeyboardInterrupt (or the handler's error)
        if (self->progress != nullptr && self->fraction > self->reported) {
            self->reported = self->fraction;
            PyObject* arg = PyFloat_FromDouble(self->fraction);
            if (arg == nullptr) return true;
            PyObject* r = PyObject_CallOneArg(self->progress->ptr(), arg);
            Py_DECREF(arg);
            if (r == nullptr) return true;
            Py_DECREF(r);
        }
        return false;
    }
    static void report(void* ctx, double fraction) { static_cast<SignalPoll*>(ctx)->fraction = fraction; }
};

// Runs fn(cancel) with the GIL released for large work and held for small work. A Cancelled
// from the core means a signal handler (or the progress callback) raised: surface that
// Python exception. `progress`, when not None, is called with the fraction done.
template <class Fn>
void run_native(int64_t rows, Fn&& fn, const py::object& progress = py::none()) {
    try {
        if (rows <= kSmallBatch && progress.is_none()) {
            fn(CancelCheck{});
        } else {
            SignalPoll poll;
            if (!progress.is_none()) poll.progress = &progress;
            py::gil_scoped_release release;
            fn(CancelCheck{&SignalPoll::poll, &poll, &SignalPoll::report});
        }
    } catch (const Cancelled&) {
        // The poll stops only when a signal handler raised; keep that exception.
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        throw py::error_already_set();
    }
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

template <class T>
std::vector<T> from_numpy(const py::array& a, const char* name) {
    auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!arr || arr.ndim() != 1) throw InvalidInput(std::string("forest array '") + name + "' must be 1-dimensional");
    return std::vector<T>(arr.data(), arr.data() + arr.size());
}

py::array_t<double> score_impl(const Forest& f, const py::array& X, int n_jobs, bool sum_only) {
    const MatrixView v = matrix_view(X);
    py::array_t<double> out(v.rows);
    double* o = out.mutable_data();
    run_native(v.rows, [&](const CancelCheck& c) {
        if (sum_only)
            f.path_length_sum(v, o, n_jobs, c);
        else
            f.score(v, o, n_jobs, c);
    });
    return out;
}

std::string compiler_name() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    return "msvc " + std::to_string(_MSC_VER);
#else
    return "unknown";
#endif
}


// ---- scores (cpp/scores.hpp) -------------------------------------------------------------------
using ScoreArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

ScoreArray score_vector(const py::handle& a, const char* name) {
    auto arr = ScoreArray::ensure(a);
    if (!arr) throw InvalidInput(std::string(name) + " must be a numeric array");
    if (arr.ndim() != 1)
        throw InvalidInput(std::string(name) + " must be 1-dimensional, got " + std::to_string(arr.ndim()) +
                           " dimension(s)");
    return arr;
}

// Score kernels stream memory: release the GIL unless the call is tiny. No Ctrl-C polling:
// 10M scores take tens of milliseconds (a sort for sorted_scores, done once per model).
template <class Fn>
void run_scores(int64_t n, Fn&& fn) {
    if (n <= kSmallBatch) {
        fn();
    } else {
        py::gil_scoped_release release;
        fn();
    }
}

// `out` (optional) must be a writable, C-contiguous float64 vector of the input's length; it may
// be the input itself.
py::array_t<double> output_for(const py::object& out, int64_t n) {
    if (out.is_none()) return py::array_t<double>(n);
    if (!py::isinstance<py::array_t<double>>(out))
        throw InvalidInput("out must be a float64 numpy array");
    auto arr = py::reinterpret_borrow<py::array_t<double>>(out);
    if (arr.ndim() != 1 || arr.size() != n || !(arr.flags() & py::array::c_style) || !arr.writeable())
        throw InvalidInput("out must be a writable, C-contiguous 1-dimensional float64 array of length " +
                           std::to_string(n));
    return arr;
}

template <class Kernel>
py::array_t<double> map_scores(const py::handle& x, int n_jobs, Kernel&& kernel, const py::object& out_arg = py::none()) {
    ScoreArray in = score_vector(x, "scores");
    const int64_t n = in.size();
    py::array_t<double> out = output_for(out_arg, n);
    const double* src = in.data();
    double* dst = out.mutable_data();
    run_scores(n, [&] { kernel(src, n, dst, n_jobs); });
    return out;
}

void bind_scores(py::module_& m) {
    m.def("score_moments", [](const py::handle& x, int n_jobs) {
        ScoreArray in = score_vector(x, "scores");
        ScoreMoments r;
        run_scores(in.size(), [&] { r = score_moments(in.data(), in.size(), n_jobs); });
        return py::make_tuple(r.n, r.mean, r.std, r.min, r.max);
    }, py::arg("scores"), py::arg("n_jobs") = 1, "(n, mean, population std, min, max) of finite scores.");
    m.def("minmax_scale", [](const py::handle& x, double lo, double hi, int n_jobs, const py::object& out) {
        return map_scores(x, n_jobs, [&](const double* s, int64_t n, double* o, int t) { minmax_scale(s, n, lo, hi, o, t); }, out);
    }, py::arg("scores"), py::arg("lo"), py::arg("hi"), py::arg("n_jobs") = 1, py::arg("out") = py::none());
    m.def("zscore", [](const py::handle& x, double mean, double std, int n_jobs, const py::object& out) {
        return map_scores(x, n_jobs, [&](const double* s, int64_t n, double* o, int t) { zscore(s, n, mean, std, o, t); }, out);
    }, py::arg("scores"), py::arg("mean"), py::arg("std"), py::arg("n_jobs") = 1, py::arg("out") = py::none());
    m.def("unify", [](const py::handle& x, double mean, double std, int n_jobs, const py::object& out) {
        return map_scores(x, n_jobs, [&](const double* s, int64_t n, double* o, int t) { unify(s, n, mean, std, o, t); }, out);
    }, py::arg("scores"), py::arg("mean"), py::arg("std"), py::arg("n_jobs") = 1, py::arg("out") = py::none());
    m.def("ecdf", [](const py::handle& sorted, const py::handle& x, int n_jobs) {
        ScoreArray ref = score_vector(sorted, "sorted training scores");
        return map_scores(x, n_jobs, [&](const double* s, int64_t n, double* o, int t) {
            ecdf(ref.data(), ref.size(), s, n, o, t);
        });
    }, py::arg("sorted"), py::arg("scores"), py::arg("n_jobs") = 1);
    m.def("ecdf_count", [](const py::handle& sorted, const py::handle& x, int n_jobs) {
        ScoreArray ref = score_vector(sorted, "sorted training scores");
        ScoreArray in = score_vector(x, "scores");
        const int64_t n = in.size();
        py::array_t<int64_t> out(n);
        const double* src = in.data();
        int64_t* dst = out.mutable_data();
        run_scores(n, [&] { ecdf_count(ref.data(), ref.size(), src, n, dst, n_jobs); });
        return out;
    }, py::arg("sorted"), py::arg("scores"), py::arg("n_jobs") = 1);
    m.def("percentile", [](const py::handle& x, double q, int n_jobs) {
        ScoreArray in = score_vector(x, "scores");
        double r = 0;
        run_scores(in.size(), [&] { r = percentile(in.data(), in.size(), q, n_jobs); });
        return r;
    }, py::arg("scores"), py::arg("q"), py::arg("n_jobs") = 1);
    m.def("contamination_threshold", [](const py::handle& x, double c, int n_jobs) {
        ScoreArray in = score_vector(x, "scores");
        double r = 0;
        run_scores(in.size(), [&] { r = contamination_threshold(in.data(), in.size(), c, n_jobs); });
        return r;
    }, py::arg("scores"), py::arg("contamination"), py::arg("n_jobs") = 1);
    m.def("sorted_scores", [](const py::handle& x, int n_jobs) {
        return map_scores(x, n_jobs, [&](const double* s, int64_t n, double* o, int t) { sorted_copy(s, n, o, t); });
    }, py::arg("scores"), py::arg("n_jobs") = 1);
}
// ---- end of scores ------------------------------------------------------------------------------

}  // namespace

void register_fastpath(py::module_& m);  // python/src/fastpath.cpp: the daemon's native path
void register_netloop(py::module_& m);   // python/src/netloop_binding.cpp: its connection loop
void bind_drift(py::module_& m);         // python/src/drift_binding.cpp: drift monitoring's counts
void bind_explain(py::module_& m);       // python/src/explain_binding.cpp: forest attributions
void bind_stream(py::module_& m);        // python/src/stream_binding.cpp: streaming detectors

PYBIND11_MODULE(_core, m) {
    m.doc() = "pynomaly's native core (private; use the pynomaly package)";

    py::object errors = py::module_::import("pynomaly._errors");
    static py::handle invalid_input = py::object(errors.attr("InvalidInputError")).release();
    static py::handle invalid_model = py::object(errors.attr("ModelFormatError")).release();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const InvalidModel& e) {
            PyErr_SetString(invalid_model.ptr(), e.what());
        } catch (const InvalidInput& e) {
            PyErr_SetString(invalid_input.ptr(), e.what());
        }
    });

    m.def("build_info", [] {
        py::dict d;
        d["simd"] = simd_name(active_simd());
        d["simd_best"] = simd_name(best_supported_simd());
        py::list supported;
        for (int t = 0; t < kSimdTargets; ++t)
            if (simd_supported(static_cast<SimdTarget>(t))) supported.append(simd_name(static_cast<SimdTarget>(t)));
        d["simd_supported"] = supported;
        // The isolation forest's block kernel is measured, not implied by the ISA: the first
        // call for a target calibrates (about a millisecond) and caches the choice.
        const IforestKernelChoice& ik = iforest_kernel_choice(active_simd());
        d["iforest_kernel"] = ik.name;
        d["iforest_kernel_reason"] = ik.reason;
        d["iforest_kernels"] = iforest_kernel_names(active_simd());
        d["iforest_kernel_forced"] = forced_iforest_kernel();
        d["openmp"] = openmp_enabled();
        d["openmp_procs"] = openmp_max_threads();
        d["compiler"] = compiler_name();
        return d;
    }, "What this binary can do: the SIMD target in use, those the CPU supports, OpenMP, compiler.");
    m.def("set_simd", [](const std::string& name) { set_active_simd(simd_from_name(name)); },
          "Select the SIMD target used by all kernels (at most the best supported one).");
    m.def("set_iforest_kernel", [](const std::string& name) { force_iforest_kernel(name); }, py::arg("name"),
          "Force one isolation-forest kernel by name (see build_info()['iforest_kernels']); 'auto' undoes it.");

    py::class_<Forest>(m, "Forest")
        .def(py::init([](int64_t n_features, int64_t psi, const py::array& tree_offset, const py::array& feature,
                         const py::array& threshold, const py::array& left, const py::array& leaf_value) {
                 ForestNodes n;
                 n.n_features = n_features;
                 n.psi = psi;
                 n.tree_offset = from_numpy<int32_t>(tree_offset, "tree_offset");
                 n.feature = from_numpy<int32_t>(feature, "feature");
                 n.threshold = from_numpy<float>(threshold, "threshold");
                 n.left = from_numpy<int32_t>(left, "left");
                 n.leaf_value = from_numpy<double>(leaf_value, "leaf_value");
                 py::gil_scoped_release release;
                 return Forest(std::move(n));
             }),
             py::arg("n_features"), py::arg("psi"), py::arg("tree_offset"), py::arg("feature"), py::arg("threshold"),
             py::arg("left"), py::arg("leaf_value"))
        .def_static("train",
                    [](const py::array& X, int n_estimators, int64_t max_samples, int64_t max_features, uint64_t seed,
                       int n_jobs, const py::object& progress) {
                        const MatrixView v = matrix_view(X);
                        ForestParams p{n_estimators, max_samples, max_features, seed};
                        std::optional<Forest> f;
                        run_native(
                            v.rows, [&](const CancelCheck& c) { f.emplace(Forest::train(v, p, n_jobs, c)); }, progress);
                        return std::move(*f);
                    },
                    py::arg("X"), py::arg("n_estimators"), py::arg("max_samples"), py::arg("max_features"),
                    py::arg("seed"), py::arg("n_jobs"), py::arg("progress") = py::none(),
                    "Grow a forest; progress(fraction of trees grown) is called from this thread, at most every 50 ms.")
        .def("score", [](const Forest& f, const py::array& X, int n_jobs) { return score_impl(f, X, n_jobs, false); },
             py::arg("X"), py::arg("n_jobs") = 1)
        .def("path_length_sum",
             [](const Forest& f, const py::array& X, int n_jobs) { return score_impl(f, X, n_jobs, true); },
             py::arg("X"), py::arg("n_jobs") = 1)
        .def_property_readonly("n_features", [](const Forest& f) { return f.nodes().n_features; })
        .def_property_readonly("psi", [](const Forest& f) { return f.nodes().psi; })
        .def_property_readonly("n_trees", [](const Forest& f) { return f.nodes().n_trees(); })
        .def_property_readonly("depth", [](const Forest& f) { return f.depth(); })
        .def_property_readonly("memory_bytes", [](const Forest& f) { return f.memory_bytes(); },
                               "Bytes held: node arrays and compiled scoring layouts.")
        .def_property_readonly("layout", [](const Forest& f) { return f.uses_complete_layout() ? "complete" : "sparse"; })
        .def("arrays", [](const Forest& f) {
            const ForestNodes& n = f.nodes();
            py::dict d;
            d["tree_offset"] = to_numpy(n.tree_offset);
            d["feature"] = to_numpy(n.feature);
            d["threshold"] = to_numpy(n.threshold);
            d["left"] = to_numpy(n.left);
            d["leaf_value"] = to_numpy(n.leaf_value);
            return d;
        }, "Copies of the defining node arrays (see ForestNodes).");

    // The distributed fit (pynomaly.dask): plan every tree from n alone, gather the planned rows
    // where they live, grow trees from those rows, merge with Forest(...). Same forest as train.
    m.def("forest_plan",
          [](int64_t n, int64_t d, int n_estimators, int64_t max_samples, int64_t max_features, uint64_t seed) {
              const ForestParams p{n_estimators, max_samples, max_features, seed};
              const int64_t k = check_train_params(n, d, p), psi = max_samples;
              py::array_t<int64_t> features({static_cast<py::ssize_t>(n_estimators), static_cast<py::ssize_t>(k)});
              py::array_t<int64_t> rows({static_cast<py::ssize_t>(n_estimators), static_cast<py::ssize_t>(psi)});
              py::array_t<uint64_t> state(n_estimators);
              int64_t* f = features.mutable_data();
              int64_t* r = rows.mutable_data();
              uint64_t* s = state.mutable_data();
              {
                  py::gil_scoped_release release;
                  for (int t = 0; t < n_estimators; ++t) {
                      const TreePlan plan = plan_tree(p, n, d, t);
                      std::copy(plan.features.begin(), plan.features.end(), f + t * k);
                      std::copy(plan.rows.begin(), plan.rows.end(), r + t * psi);
                      s[t] = plan.rng_state;
                  }
              }
              py::dict out;
              out["features"] = features;
              out["rows"] = rows;
              out["rng_state"] = state;
              return out;
          },
          py::arg("n"), py::arg("d"), py::arg("n_estimators"), py::arg("max_samples"), py::arg("max_features"),
          py::arg("seed"),
          "Each tree's features (T x k), rows in draw order (T x psi) and random state, as Forest.train draws them.");
    m.def("forest_grow",
          [](const py::array& X, const py::array& x_rows, const py::array& rows, const py::array& features,
             const py::array& rng_state) {
              const MatrixView v = matrix_view(X);
              using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
              const I64 xr = I64::ensure(x_rows), gr = I64::ensure(rows), fs = I64::ensure(features);
              const auto st = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(rng_state);
              if (!xr || !gr || !fs || !st || xr.ndim() != 2 || gr.ndim() != 2 || fs.ndim() != 2 || st.ndim() != 1 ||
                  xr.shape(0) != st.shape(0) || gr.shape(0) != st.shape(0) || fs.shape(0) != st.shape(0) ||
                  xr.shape(1) != gr.shape(1))
                  throw InvalidInput("forest_grow: x_rows and rows (T x psi), features (T x k), rng_state (T)");
              const int64_t T = st.shape(0), psi = xr.shape(1), k = fs.shape(1);
              // As Forest::train requires of its plan: trees, at least 2 rows each, a feature.
              if (T < 1 || psi < 2 || k < 1)
                  throw InvalidInput("forest_grow: at least 1 tree, 2 rows per tree and 1 feature");
              for (int64_t i = 0; i < T * psi; ++i)
                  if (xr.data()[i] < 0 || xr.data()[i] >= v.rows) throw InvalidInput("forest_grow: x_rows out of range");
              for (int64_t i = 0; i < T * k; ++i)
                  if (fs.data()[i] < 0 || fs.data()[i] >= v.cols) throw InvalidInput("forest_grow: features out of range");
              std::vector<TreeNodes> trees(T);
              int64_t bad_row = -1, bad_col = 0;
              double bad_value = 0.0;
              {
                  py::gil_scoped_release release;
                  for (int64_t t = 0; t < T; ++t) {
                      TreePlan plan;
                      plan.features.assign(fs.data() + t * k, fs.data() + (t + 1) * k);
                      plan.rows.assign(gr.data() + t * psi, gr.data() + (t + 1) * psi);
                      plan.rng_state = st.data()[t];
                      const std::vector<int64_t> local(xr.data() + t * psi, xr.data() + (t + 1) * psi);
                      const int64_t at = grow_tree(v, local, plan, trees[t]);
                      // As Forest::train reports: the lowest row among each tree's first bad value.
                      if (at >= 0 && (bad_row < 0 || plan.rows[at / k] < bad_row)) {
                          bad_row = plan.rows[at / k];
                          bad_col = plan.features[at % k];
                          const int64_t off = local[at / k] * v.row_stride + bad_col * v.col_stride;
                          bad_value = v.is_float32 ? v.ptr<float>()[off] : v.ptr<double>()[off];
                      }
                  }
              }
              if (bad_row >= 0) throw InvalidInput(bad_value_message(bad_value, bad_row, bad_col));
              const ForestNodes n = merge_trees(v.cols, psi, trees);
              py::dict d;
              d["tree_offset"] = to_numpy(n.tree_offset);
              d["feature"] = to_numpy(n.feature);
              d["threshold"] = to_numpy(n.threshold);
              d["left"] = to_numpy(n.left);
              d["leaf_value"] = to_numpy(n.leaf_value);
              return d;
          },
          py::arg("X"), py::arg("x_rows"), py::arg("rows"), py::arg("features"), py::arg("rng_state"),
          "Grow the planned trees from their gathered rows: row x_rows[t, i] of X is tree t's sampled row "
          "rows[t, i]. Returns the trees' node arrays (as Forest.arrays()); a non-finite value is reported at "
          "its row in `rows`.");

    m.def("average_path_length", &average_path_length, py::arg("n"));

    bind_scores(m);  // scores: normalisation, thresholds (cpp/scores.hpp)
    bind_explain(m);  // explanations: TreeSHAP and path attributions (cpp/explain.hpp)

    // ---- k-nearest neighbours (cpp/knn.hpp): pynomaly.knn, LOF and KNN ---------------------
    m.def("knn",
          [](const py::array& X, int64_t k, const py::object& Y, const std::string& metric,
             const std::string& algorithm, int n_jobs) {
              const MatrixView xv = matrix_view(X);
              std::optional<MatrixView> yv;
              if (!Y.is_none()) yv = matrix_view(Y.cast<py::array>());
              const Metric me = metric_from_name(metric);
              KnnAlgorithm al = knn_algorithm_from_name(algorithm);
              const int64_t nq = yv ? yv->rows : xv.rows;
              const int64_t available = yv ? xv.rows : xv.rows - 1;
              if (k < 1 || k > available)  // let the core word the error before allocating q x k
                  knn_search(xv, yv ? &*yv : nullptr, k, me, al, n_jobs, CancelCheck{}, nullptr, nullptr);
              py::array_t<double> dist({nq, k});
              py::array_t<int64_t> idx({nq, k});
              double* dp = dist.mutable_data();
              int64_t* ip = idx.mutable_data();
              run_native(nq + xv.rows, [&](const CancelCheck& c) {
                  al = knn_search(xv, yv ? &*yv : nullptr, k, me, al, n_jobs, c, dp, ip);
              });
              return py::make_tuple(dist, idx, knn_algorithm_name(al));
          },
          py::arg("X"), py::arg("k"), py::arg("Y") = py::none(), py::arg("metric") = "euclidean",
          py::arg("algorithm") = "auto", py::arg("n_jobs") = 1,
          "Exact k nearest neighbours: (distances, indices, algorithm used); see cpp/knn.hpp.");
    m.def("knn_choose_algorithm",
          [](int64_t n, int64_t d, const std::string& metric) {
              return std::string(knn_algorithm_name(choose_knn_algorithm(n, d, metric_from_name(metric))));
          },
          py::arg("n"), py::arg("d"), py::arg("metric") = "euclidean");
    // ---- end of k-nearest neighbours ---------------------------------------------------------

    register_fastpath(m);
    register_netloop(m);
    bind_drift(m);
    bind_stream(m);

    // PYNOMALY_SIMD forces a lower target for every kernel. Applied here, when the core loads,
    // rather than by `import pynomaly`: the package loads the core lazily (a socket client never
    // loads it), so this is the one moment every user of the core goes through.
    if (const char* env = std::getenv("PYNOMALY_SIMD")) {
        std::string want;
        for (const char* c = env; *c; ++c)
            if (!std::isspace(static_cast<unsigned char>(*c))) want.push_back(static_cast<char>(std::tolower(*c)));
        if (!want.empty()) {
            if (want != "baseline" && want != "avx2" && want != "avx512" && want != "neon")
                throw py::import_error("PYNOMALY_SIMD='" + want +
                                       "' is not a SIMD target; accepted: baseline, avx2, avx512, neon");
            try {
                set_active_simd(simd_from_name(want));
            } catch (const InvalidInput& e) {  // a valid name this CPU cannot run: keep the best
                const std::string msg = "PYNOMALY_SIMD='" + want + "' ignored: " + e.what();
                if (PyErr_WarnEx(PyExc_RuntimeWarning, msg.c_str(), 1) < 0) throw py::error_already_set();
            }
        }
    }
}
