// pybind11 module atedm_kernels._C: the launchers of csrc/, taking raw pointers, sizes and a stream.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "atedm-kernels CUDA launchers (raw device pointers + cudaStream_t; no libtorch)";

  m.def(
      "info",
      []() {
        py::dict d;
        d["version"] = ATEDM_VERSION;
        d["cuda_archs"] = ATEDM_CUDA_ARCHS;
        d["cuda_runtime_version"] = atedm::cuda_runtime_version();
        return d;
      },
      "Build information: package version, CUDA architectures compiled for, CUDA runtime version.");

  m.def("iota_int64", &atedm::iota_int64, py::arg("out"), py::arg("n"), py::arg("stream"),
        "out[i] = i for i < n; out is an int64 device pointer, stream a cudaStream_t.");
}
