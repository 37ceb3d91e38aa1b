// The typed detector object the daemon's native paths score (fastpath.cpp, netloop_binding.cpp):
// built by pynomaly.service.Scorer, it keeps the Python Forest that owns the trees alive.
#pragma once

#include <pybind11/pybind11.h>

#include "fastpath_serve.hpp"

namespace pynomaly {

// One detector version as the native path serves it; immutable once built.
struct ServedForest {
    pybind11::object owner;  // the Python Forest object, kept alive while this exists
    fastwire::Served s;
};

// The rows a native path kept for drift, for the host: None when nothing was served, else
// (float64 rows (k, d), their scores (k,), rows served, float32 rows (k32, d), their scores)
// (fastpath.cpp).
pybind11::object sample_object(const fastwire::Sample& sample, int64_t d);

}  // namespace pynomaly
