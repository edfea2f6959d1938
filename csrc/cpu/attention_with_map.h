// CPU kernels of atedm_kernels._cpu (declarations; bound in python_bindings/cpu_module.cpp).
//
// Conventions: host pointers; sizes and strides are element counts; a tensor's last dimension is contiguous and its
// other strides are given. Kernels check their arguments and throw std::invalid_argument. Design notes live at the
// top of each .cpp file.
#pragma once

#include <cstdint>

namespace atedm::cpu {

// Element strides of a [B, H, T, D] tensor's first three dimensions (D is contiguous).
struct Strides {
  int64_t batch, head, row;
};

// Whether this CPU runs the kernels (AVX2, FMA and F16C).
bool supported();

// Query rows per task for n_keys keys: up to kTaskFloats (1 MiB) of logits and as much of map sums per task.
int64_t task_rows(int64_t n_keys);

// out [B, H, N, D] <- softmax(scale * q k^T) v per head, amap [B, N, M] (contiguous, dtype code map_dtype as in
// common.h) <- its mean over heads; q [B, H, N, D], k and v [B, H, M, D], all float32; `threads` workers (the
// calling thread included).
void attention_with_map_f32(const float* q, Strides qs, const float* k, Strides ks, const float* v, Strides vs,
                            float* out, Strides os, void* amap, int map_dtype, int64_t batch, int64_t heads,
                            int64_t n_q, int64_t n_k, int64_t d, float scale, int threads);

}  // namespace atedm::cpu
