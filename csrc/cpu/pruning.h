// G-WPR and similarity sources of atedm_kernels._cpu (bound in python_bindings/cpu_module.cpp; conventions in
// attention_with_map.h). Maps are contiguous [B, N, N] of dtype code `dtype` (the CUDA module's codes).
#pragma once

#include <cstdint>

#include "common.h"  // MapDtype

namespace atedm::cpu {

// scores [B, N] f32 <- G-WPR of amap: s_0 = 1/N, s_{t+1} = (1 - damping) A^T s_t + damping / N, num_iters steps.
void gwpr(const void* amap, int dtype, float* scores, int64_t batch, int64_t n, int64_t num_iters, double damping,
          int threads);

// src [B, N-keep] <- argmax_j amap[b, keep_idx[b, j], prune_idx[b, m]] (ties to the lowest j, NaN never wins);
// keep_idx [B, keep] and prune_idx [B, N-keep] int64, each in [0, n).
void similarity_sources(const void* amap, int dtype, const int64_t* keep_idx, const int64_t* prune_idx, int64_t* src,
                        int64_t batch, int64_t n, int64_t keep, int threads);

}  // namespace atedm::cpu
