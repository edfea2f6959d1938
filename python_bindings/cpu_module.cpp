// pybind11 module atedm_kernels._cpu: the CPU kernels of csrc/cpu/, taking raw host pointers (Python ints from
// torch's data_ptr()), element strides and sizes; no libtorch. std::invalid_argument surfaces as ValueError. The
// kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include "cpu/attention_with_map.h"
#include "cpu/pruning.h"

namespace py = pybind11;
using atedm::cpu::Strides;

namespace {
Strides strides_of(const py::tuple& t) {
  if (t.size() != 3) throw std::invalid_argument("strides must be a (batch, head, row) tuple");
  return Strides{t[0].cast<int64_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>()};
}
template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "atedm-kernels CPU kernels (raw host pointers; no libtorch)";

  m.def("supported", &atedm::cpu::supported, "Whether this CPU runs the kernels (AVX2, FMA and F16C).");
  m.def("task_rows", &atedm::cpu::task_rows, py::arg("n_keys"),
        "Query rows per task of attention_with_map_f32 for n_keys keys.");
  m.def(
      "attention_with_map_f32",
      [](std::uintptr_t q, py::tuple qs, std::uintptr_t k, py::tuple ks, std::uintptr_t v, py::tuple vs,
         std::uintptr_t out, py::tuple os, std::uintptr_t amap, int map_dtype, int64_t batch, int64_t heads,
         int64_t n_q, int64_t n_k, int64_t d, float scale, int threads) {
        const Strides q_s = strides_of(qs), k_s = strides_of(ks), v_s = strides_of(vs), o_s = strides_of(os);
        py::gil_scoped_release release;
        atedm::cpu::attention_with_map_f32(ptr<const float>(q), q_s, ptr<const float>(k), k_s, ptr<const float>(v), v_s,
                                           ptr<float>(out), o_s, ptr<void>(amap), map_dtype, batch, heads, n_q, n_k, d,
                                           scale, threads);
      },
      py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"), py::arg("v_strides"),
      py::arg("out"), py::arg("out_strides"), py::arg("amap"), py::arg("map_dtype"), py::arg("batch"), py::arg("heads"), py::arg("n_q"),
      py::arg("n_k"), py::arg("d"), py::arg("scale"), py::arg("threads"),
      "out [B, H, N, D] <- softmax(scale q k^T) v per head; amap [B, N, M] (contiguous; dtype code 0 f16, 1 bf16, "
      "2 f32) <- its mean over heads; q, k, v, out float32, strides (batch, head, row) in elements.");

  m.def(
      "gwpr",
      [](std::uintptr_t amap, int dtype, std::uintptr_t scores, int64_t batch, int64_t n, int64_t num_iters,
         double damping, int threads) {
        atedm::cpu::gwpr(ptr<const void>(amap), dtype, ptr<float>(scores), batch, n, num_iters, damping, threads);
      },
      py::arg("amap"), py::arg("dtype"), py::arg("scores"), py::arg("batch"), py::arg("n"), py::arg("num_iters"),
      py::arg("damping"), py::arg("threads"), py::call_guard<py::gil_scoped_release>(),
      "scores [B, N] f32 <- G-WPR on amap [B, N, N] (dtype code 0 f16, 1 bf16, 2 f32): s_0 = 1/N, "
      "s_{t+1} = (1 - damping) A^T s_t + damping / N.");
  m.def(
      "similarity_sources",
      [](std::uintptr_t amap, int dtype, std::uintptr_t keep_idx, std::uintptr_t prune_idx, std::uintptr_t src,
         int64_t batch, int64_t n, int64_t keep, int threads) {
        atedm::cpu::similarity_sources(ptr<const void>(amap), dtype, ptr<const int64_t>(keep_idx),
                                       ptr<const int64_t>(prune_idx), ptr<int64_t>(src), batch, n, keep, threads);
      },
      py::arg("amap"), py::arg("dtype"), py::arg("keep_idx"), py::arg("prune_idx"), py::arg("src"), py::arg("batch"),
      py::arg("n"), py::arg("keep"), py::arg("threads"), py::call_guard<py::gil_scoped_release>(),
      "src [B, N-keep] int64 <- argmax_j amap[b, keep_idx[b, j], prune_idx[b, m]], ties to the lowest j, NaN never "
      "wins.");
}
