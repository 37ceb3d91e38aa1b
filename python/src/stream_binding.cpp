// Binding of the streaming detectors (cpp/stream_*.hpp): pynomaly.estimators.stream wraps
// these classes. Records arrive as float64 C-ordered arrays (converted by the Python layer) or
// as dicts read here directly (the per-record path, where a NumPy conversion would cost more
// than the trees). Every input is checked whole before any learning, so a bad record leaves
// the detector as it was.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <optional>
#include <string>

#include "stream_hst.hpp"
#include "stream_oif.hpp"

namespace py = pybind11;
using namespace pynomaly;

namespace {

constexpr int64_t kSmall = 64;  // rows below which the GIL is kept (releasing costs more)
using Rows = py::array_t<double, py::array::c_style>;

// A (rows x d) float64 C-ordered array of finite values, or a clear InvalidInput.
Rows checked_rows(const py::handle& X, int64_t d) {
    if (!py::isinstance<Rows>(X) || !(py::reinterpret_borrow<py::array>(X).flags() & py::array::c_style))
        throw InvalidInput("X must be a C-ordered float64 array");
    auto a = py::reinterpret_borrow<Rows>(X);
    if (a.ndim() != 2 || a.shape(1) != d)
        throw InvalidInput("X must be 2-dimensional with " + std::to_string(d) + " columns (the detector's features)");
    const int64_t bad = first_non_finite(a.data(), a.shape(0), d);
    if (bad >= 0)
        throw InvalidInput("X has a non-finite value (" + std::to_string(a.data()[bad]) + ") at row " +
                           std::to_string(bad / d) + ", column " + std::to_string(bad % d) +
                           "; streaming detectors accept finite numbers only");
    return a;
}

// One record from a dict, in the order of `keys` (a tuple of the detector's feature names).
void record_from_dict(const py::handle& x, const py::tuple& keys, double* out) {
    if (!PyDict_Check(x.ptr())) throw InvalidInput("a record must be a dict of feature name -> number");
    const Py_ssize_t d = PyTuple_GET_SIZE(keys.ptr());
    if (PyDict_Size(x.ptr()) != d)
        throw InvalidInput("a record must have exactly the detector's " + std::to_string(d) + " features, got " +
                           std::to_string(PyDict_Size(x.ptr())));
    for (Py_ssize_t j = 0; j < d; ++j) {
        PyObject* key = PyTuple_GET_ITEM(keys.ptr(), j);
        PyObject* v = PyDict_GetItemWithError(x.ptr(), key);
        if (v == nullptr) {
            if (PyErr_Occurred()) throw py::error_already_set();
            throw InvalidInput("a record lacks feature " + std::string(py::repr(key)));
        }
        double value;
        if (PyFloat_CheckExact(v)) {
            value = PyFloat_AS_DOUBLE(v);
        } else if (PyLong_Check(v) || (PyNumber_Check(v) && !PyUnicode_Check(v) && !PyBytes_Check(v) && !PyComplex_Check(v))) {
            value = PyFloat_AsDouble(v);
            if (value == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                throw InvalidInput("feature " + std::string(py::repr(key)) + " is not a real number");
            }
        } else {
            throw InvalidInput("feature " + std::string(py::repr(key)) + " is a " + Py_TYPE(v)->tp_name +
                               ", not a number");
        }
        if (!std::isfinite(value))
            throw InvalidInput("feature " + std::string(py::repr(key)) + " is " + std::to_string(value) +
                               "; streaming detectors accept finite numbers only");
        out[j] = value;
    }
}

template <class Fn>
void maybe_released(int64_t rows, Fn&& fn) {
    if (rows <= kSmall) {
        fn();
    } else {
        py::gil_scoped_release release;
        fn();
    }
}

// One record read from a dict in the detector's feature order: on the stack up to 256
// features, on the heap past them.
struct Record {
    double stack[256];
    std::vector<double> heap;
    double* row = stack;
    Record(const py::handle& x, const py::tuple& keys, int64_t d) {
        if (static_cast<int64_t>(keys.size()) != d) throw InvalidInput("keys do not match the features");
        if (d > 256) row = (heap.resize(d), heap.data());
        record_from_dict(x, keys, row);
    }
    Record(const Record&) = delete;  // row may point into this object
    Record& operator=(const Record&) = delete;
};

// The methods both detectors share, over their native class D.
template <class D>
void bind_common(py::class_<D>& c) {
    c.def("score_many", [](const D& m, const py::handle& X, int n_jobs) {
         Rows a = checked_rows(X, m.n_features());
         py::array_t<double> out(a.shape(0));
         double* o = out.mutable_data();
         maybe_released(a.shape(0), [&] { m.score(a.data(), a.shape(0), o, n_jobs); });
         return out;
     }, py::arg("X"), py::arg("n_jobs") = 1)
        .def("learn_many", [](D& m, const py::handle& X) {
            Rows a = checked_rows(X, m.n_features());
            maybe_released(a.shape(0), [&] { m.learn(a.data(), a.shape(0)); });
        }, py::arg("X"))
        .def("score_learn_many", [](D& m, const py::handle& X) {
            Rows a = checked_rows(X, m.n_features());
            py::array_t<double> out(a.shape(0));
            double* o = out.mutable_data();
            maybe_released(a.shape(0), [&] { m.score_learn(a.data(), a.shape(0), o); });
            return out;
        }, py::arg("X"))
        .def("score_one", [](const D& m, const py::handle& x, const py::tuple& keys) {
            const Record r(x, keys, m.n_features());
            double out;
            m.score(r.row, 1, &out, 1);
            return out;
        }, py::arg("x"), py::arg("keys"))
        .def("learn_one", [](D& m, const py::handle& x, const py::tuple& keys) {
            const Record r(x, keys, m.n_features());
            m.learn(r.row, 1);
        }, py::arg("x"), py::arg("keys"))
        .def("to_bytes", [](const D& m) { return py::bytes(m.to_bytes()); })
        .def_static("from_bytes", [](const py::bytes& b) {
            const std::string_view s = b;
            std::optional<D> out;
            {
                py::gil_scoped_release release;
                out.emplace(D::from_bytes(s.data(), s.size()));
            }
            return std::move(*out);
        }, py::arg("blob"))
        .def_property_readonly("n_features", &D::n_features)
        .def_property_readonly("memory_bytes", &D::memory_bytes, "Bytes of native state held (grows with the trees and window, not the stream).");
}

template <class T>
std::vector<T> vec(const py::handle& a, const char* name) {
    auto arr = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!arr || arr.ndim() != 1) throw InvalidInput(std::string(name) + " must be a 1-dimensional array");
    return std::vector<T>(arr.data(), arr.data() + arr.size());
}

template <class T>
py::array_t<T> arr(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

}  // namespace

void bind_stream(py::module_& m) {
    py::class_<HalfSpaceTrees> hst(m, "HalfSpaceTreesState");
    hst.def_static("grow",
                   [](int n_trees, int height, int64_t window_size, const py::handle& lo, const py::handle& hi,
                      const py::handle& mt_state) {
                       const auto state = vec<uint32_t>(mt_state, "mt_state");
                       if (state.size() != PyRandom::N + 1 || state[PyRandom::N] > PyRandom::N)
                           throw InvalidInput("mt_state must be random.Random().getstate()[1] (625 words)");
                       PyRandom rng;
                       std::copy(state.begin(), state.begin() + PyRandom::N, rng.mt);
                       rng.index = static_cast<int>(state[PyRandom::N]);
                       const auto l = vec<double>(lo, "lo"), h = vec<double>(hi, "hi");
                       return HalfSpaceTrees(HstParams{n_trees, height, window_size}, static_cast<int64_t>(l.size()), l, h, rng);
                   },
                   py::arg("n_trees"), py::arg("height"), py::arg("window_size"), py::arg("lo"), py::arg("hi"),
                   py::arg("mt_state"),
                   "Grow River's trees over limits [lo, hi) per feature, drawing from a Python random state.")
        .def(py::init([](int n_trees, int height, int64_t window_size, int64_t n_features, const py::handle& feature,
                         const py::handle& threshold, const py::handle& l_mass, const py::handle& r_mass,
                         int64_t counter, bool first_window) {
                 return HalfSpaceTrees(HstParams{n_trees, height, window_size}, n_features, vec<int32_t>(feature, "feature"),
                                       vec<double>(threshold, "threshold"), vec<Mass>(l_mass, "l_mass"),
                                       vec<Mass>(r_mass, "r_mass"), counter, first_window);
             }),
             py::arg("n_trees"), py::arg("height"), py::arg("window_size"), py::arg("n_features"), py::arg("feature"),
             py::arg("threshold"), py::arg("l_mass"), py::arg("r_mass"), py::arg("counter"), py::arg("first_window"),
             "Trees given node by node, heap order per tree (from River's trees).")
        .def("arrays", [](const HalfSpaceTrees& h) {
            py::dict d;
            d["feature"] = arr(h.feature());
            d["threshold"] = arr(h.threshold());
            d["l_mass"] = arr(h.l_mass());
            d["r_mass"] = arr(h.r_mass());
            d["counter"] = h.counter();
            d["first_window"] = h.first_window();
            return d;
        })
        .def_property_readonly("params", [](const HalfSpaceTrees& h) {
            py::dict d;
            d["n_trees"] = h.params().n_trees;
            d["height"] = h.params().height;
            d["window_size"] = h.params().window_size;
            return d;
        });
    bind_common(hst);

    py::class_<OnlineIsolationForest> oif(m, "OnlineIsolationForestState");
    oif.def(py::init([](int n_trees, int64_t max_leaf_samples, int64_t window_size, bool adaptive, uint64_t seed,
                        int64_t n_features) {
               return OnlineIsolationForest(OifParams{n_trees, max_leaf_samples, window_size, adaptive, seed}, n_features);
           }),
           py::arg("n_trees"), py::arg("max_leaf_samples"), py::arg("window_size"), py::arg("adaptive"), py::arg("seed"),
           py::arg("n_features"))
        .def_property_readonly("window_count", &OnlineIsolationForest::window_count)
        .def_property_readonly("n_nodes", &OnlineIsolationForest::n_nodes)
        .def_property_readonly("params", [](const OnlineIsolationForest& f) {
            py::dict d;
            d["n_trees"] = f.params().n_trees;
            d["max_leaf_samples"] = f.params().max_leaf_samples;
            d["window_size"] = f.params().window_size;
            d["adaptive"] = f.params().adaptive;
            d["seed"] = f.params().seed;
            return d;
        });
    bind_common(oif);
}
