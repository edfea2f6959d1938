// Host-side launchers of atedm_kernels._C (declarations; bound in python_bindings/module.cpp).
//
// Conventions (csrc/launch.h): device pointers and the cudaStream_t arrive as uintptr_t; every tensor is contiguous
// (row-major, the shapes below); sizes are element counts; `dtype` is a DType code (0 fp16, 1 bf16, 2 fp32) of the
// floating-point input; indices are int64. Launchers check their arguments before any CUDA call and throw
// std::invalid_argument (bad argument) or std::runtime_error (CUDA error); they enqueue on `stream` and never
// synchronise. Kernel design and cost notes live at the top of each .cu file.
#pragma once

#include <cstdint>

namespace atedm {

int cuda_runtime_version();

// Floats of workspace gwpr() needs for a [batch, n, n] map of `dtype` (two ping-pong partial-sum buffers).
int64_t gwpr_workspace_floats(int64_t batch, int64_t n, int dtype);

// scores [B, N] f32 <- G-WPR of amap [B, N, N]: s_0 = 1/N, s_{t+1} = (1-d) A^T s_t + d/N, num_iters steps.
// workspace: >= gwpr_workspace_floats(batch, n, dtype) floats (unused, may be 0, when num_iters == 0).
void gwpr(std::uintptr_t amap, std::uintptr_t scores, std::uintptr_t workspace, int64_t workspace_floats,
          int64_t batch, int64_t n, int64_t num_iters, double damping, int dtype, std::uintptr_t stream);

// keep_idx [B, keep], prune_idx [B, N-keep] (ascending) <- top-keep of scores [B, N], ties to the lower index.
void select_tokens(std::uintptr_t scores, std::uintptr_t keep_idx, std::uintptr_t prune_idx, int64_t batch,
                   int64_t n, int64_t keep, int dtype, std::uintptr_t stream);

// src [B, N-keep] <- argmax_j amap[b, keep_idx[b, j], prune_idx[b, m]] (ties to the lowest j); amap [B, N, N].
void similarity_sources(std::uintptr_t amap, std::uintptr_t keep_idx, std::uintptr_t prune_idx, std::uintptr_t src,
                        int64_t batch, int64_t n, int64_t keep, int dtype, std::uintptr_t stream);

// out [B, K, C] <- x [B, N, C] rows idx [B, K].
void gather_tokens(std::uintptr_t x, std::uintptr_t idx, std::uintptr_t out, int64_t batch, int64_t n, int64_t k,
                   int64_t channels, int dtype, std::uintptr_t stream);

// out [B, N, C] <- x_kept [B, keep, C] scattered to keep_idx, and rows src copied to prune_idx.
void recover_tokens(std::uintptr_t x_kept, std::uintptr_t keep_idx, std::uintptr_t prune_idx, std::uintptr_t src,
                    std::uintptr_t out, int64_t batch, int64_t n, int64_t keep, int64_t channels, int dtype,
                    std::uintptr_t stream);

}  // namespace atedm
