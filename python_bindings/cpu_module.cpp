// pybind11 module atedm_kernels._cpu: the CPU kernels of csrc/cpu/, taking raw host pointers (Python ints from
// torch's data_ptr()), element strides and sizes; no libtorch. std::invalid_argument surfaces as ValueError. The
// kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include "cpu/attention_with_map.h"

namespace py = pybind11;
using atedm::cpu::Strides;

namespace {
Strides strides_of(const py::tuple& t) {
  if (t.size() != 3) throw std::invalid_argument("strides must be a (batch, head, row) tuple");
  return Strides{t[0].cast<int64_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>()};
}
const float* in_ptr(std::uintptr_t p) { return reinterpret_cast<const float*>(p); }
float* out_ptr(std::uintptr_t p) { return reinterpret_cast<float*>(p); }
}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "atedm-kernels CPU kernels (raw host pointers; no libtorch)";

  m.def("supported", &atedm::cpu::supported, "Whether this CPU runs the kernels (AVX2 and FMA).");
  m.def("task_rows", &atedm::cpu::task_rows, py::arg("n_keys"),
        "Query rows per task of attention_with_map_f32 for n_keys keys.");
  m.def(
      "attention_with_map_f32",
      [](std::uintptr_t q, py::tuple qs, std::uintptr_t k, py::tuple ks, std::uintptr_t v, py::tuple vs,
         std::uintptr_t out, py::tuple os, std::uintptr_t amap, int64_t batch, int64_t heads, int64_t n_q,
         int64_t n_k, int64_t d, float scale, int threads) {
        const Strides q_s = strides_of(qs), k_s = strides_of(ks), v_s = strides_of(vs), o_s = strides_of(os);
        py::gil_scoped_release release;
        atedm::cpu::attention_with_map_f32(in_ptr(q), q_s, in_ptr(k), k_s, in_ptr(v), v_s, out_ptr(out), o_s,
                                           out_ptr(amap), batch, heads, n_q, n_k, d, scale, threads);
      },
      py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"), py::arg("v_strides"),
      py::arg("out"), py::arg("out_strides"), py::arg("amap"), py::arg("batch"), py::arg("heads"), py::arg("n_q"),
      py::arg("n_k"), py::arg("d"), py::arg("scale"), py::arg("threads"),
      "out [B, H, N, D] <- softmax(scale q k^T) v per head; amap [B, N, M] (contiguous) <- its mean over heads; "
      "float32, strides (batch, head, row) in elements.");
}
