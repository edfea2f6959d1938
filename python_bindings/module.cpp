// pybind11 module atedm_kernels._C: the launchers of csrc/, taking raw pointers, sizes and a stream.
//
// Pointers and streams are Python ints (torch's data_ptr() and Stream.cuda_stream). std::invalid_argument from a
// launcher's argument checks surfaces as ValueError, std::runtime_error (CUDA errors) as RuntimeError. Launchers
// only enqueue work, so they run with the GIL released.
#include <pybind11/pybind11.h>

#include "ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "atedm-kernels CUDA launchers (raw device pointers + cudaStream_t; no libtorch)";
  using release_gil = py::call_guard<py::gil_scoped_release>;

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

  m.def("gwpr_workspace_floats", &atedm::gwpr_workspace_floats, py::arg("batch"), py::arg("n"), py::arg("dtype"),
        "Float32 elements of workspace gwpr() needs for a [batch, n, n] map of dtype code `dtype`.");

  m.def("gwpr", &atedm::gwpr, py::arg("amap"), py::arg("scores"), py::arg("workspace"), py::arg("workspace_floats"),
        py::arg("batch"), py::arg("n"), py::arg("num_iters"), py::arg("damping"), py::arg("dtype"), py::arg("stream"),
        release_gil(),
        "scores [B, N] f32 <- G-WPR power iteration on amap [B, N, N]: s_0 = 1/N, "
        "s_{t+1}[j] = (1 - damping) * sum_i amap[i, j] s_t[i] + damping / N.");

  m.def("select_tokens", &atedm::select_tokens, py::arg("scores"), py::arg("keep_idx"), py::arg("prune_idx"),
        py::arg("batch"), py::arg("n"), py::arg("keep"), py::arg("dtype"), py::arg("stream"), release_gil(),
        "keep_idx [B, keep], prune_idx [B, N-keep] (int64, ascending) <- top-keep scores [B, N], ties to the lower "
        "index.");

  m.def("similarity_sources", &atedm::similarity_sources, py::arg("amap"), py::arg("keep_idx"), py::arg("prune_idx"),
        py::arg("src"), py::arg("batch"), py::arg("n"), py::arg("keep"), py::arg("dtype"), py::arg("stream"),
        release_gil(),
        "src [B, N-keep] int64 <- argmax_j amap[b, keep_idx[b, j], prune_idx[b, m]], ties to the lowest j.");

  m.def("gather_tokens", &atedm::gather_tokens, py::arg("x"), py::arg("idx"), py::arg("out"), py::arg("batch"),
        py::arg("n"), py::arg("k"), py::arg("channels"), py::arg("dtype"), py::arg("stream"), release_gil(),
        "out [B, K, C] <- x [B, N, C] at rows idx [B, K].");

  m.def("recover_tokens", &atedm::recover_tokens, py::arg("x_kept"), py::arg("keep_idx"), py::arg("prune_idx"),
        py::arg("src"), py::arg("out"), py::arg("batch"), py::arg("n"), py::arg("keep"), py::arg("channels"),
        py::arg("dtype"), py::arg("stream"), release_gil(),
        "out [B, N, C] <- x_kept [B, keep, C] at rows keep_idx, and x_kept rows src at rows prune_idx.");
}
