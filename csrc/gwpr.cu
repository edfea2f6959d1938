// G-WPR power iteration on a self-attention map (atedm.gwpr).
//
//   s_0[j]     = 1/N
//   s_{t+1}[j] = (1 - d) * sum_i A[b, i, j] * s_t[i] + d/N        A: [B, N, N] fp16/bf16/fp32, s: float32
//
// Each iteration is a column-oriented matrix-vector product s^T A with coalesced row reads. The map is split into
// tiles of (32 lanes x V columns) x (rows_per_split rows); one block per tile and batch row. A lane reads V
// consecutive columns of a row with one 16-byte load, the block's 8 warps take interleaved rows, and the block's
// column sums go to a partial-sum workspace P_t [B, S, N] (S = row splits). The next iteration's blocks rebuild
// their slice of s_t from P_t in their prologue (s_t[i] = (1-d) * sum_s P_t[s, i] + d/N, in split order), so an
// iteration is one launch, and a last tiny kernel writes s_T. P ping-pongs between two buffers.
//
// Determinism: every sum runs in a fixed order (rows of a warp in order, warps 0..7, splits 0..S-1; no atomics) and
// the tiling depends only on N and the dtype, so scores are bitwise identical run to run, across batch sizes and
// across GPUs running the same build.
//
// Cost per iteration: B*N*N*elt bytes of map reads (the floor: the map is read once per iteration) plus the
// partial-sum traffic, B*S*N*4 bytes written and B*T_c*S*N*4 re-read from L2 by the T_c = N/(32*V) column tiles
// (S/128 of the map bytes: at most 1/8, by the choice of S below); 2*B*N*N FLOPs. One launch per iteration is
// cheap next to that: an SD-XL map (N = 4096, fp16) is 32 MiB per batch row. When the whole map does not fit the
// GPU's L2 cache but one batch row's does (B = 2 at N = 4096 on an H100's 50 MB L2), batch rows run one after the
// other, all iterations each, so iterations 2..T can hit L2 instead of HBM; otherwise one launch covers all rows.
#include <algorithm>

#include "common.cuh"
#include "ops.h"

namespace atedm {
namespace {

constexpr int kGwprWarps = 8;  // warps per block; warp w reads rows w, w + 8, ... of the block's row slice
constexpr int kGwprThreads = kGwprWarps * kWarpSize;
constexpr int kVecBytes = 16;  // one 16-byte load per lane per row: 8 fp16/bf16 or 4 fp32 columns
constexpr int kRowUnroll = 4;  // rows a warp keeps in flight (independent loads) to cover memory latency
// Blocks per batch row the tiling aims for (about two resident waves of 8-warp blocks on a 108-132 SM GPU), so a
// single batch row, as in the batch-after-batch order, still fills the GPU.
constexpr int64_t kTargetBlocksPerBatch = 256;
// Most row splits: a block's prologue re-reads S partial sums per row (4*S bytes) next to the 32*V*elt = 512 map
// bytes per row it streams, so S <= 16 keeps that L2 traffic at most 1/8 of the map traffic.
constexpr int64_t kMaxSplits = 16;
// Fewest rows per split (8 per warp): below that the prologue and the block reduction outweigh the row loop.
constexpr int64_t kMinRowsPerSplit = 64;
// Most rows per split: bounds the block's shared copy of s_t to 16 KiB (4 bytes per row).
constexpr int64_t kMaxRowsPerSplit = 4096;
constexpr int kFinalizeThreads = 256;  // threads per block of the final write of s_T (one column each)

struct GwprPlan {
  int64_t col_tiles;       // ceil(N / (32 * V)): blocks along the columns
  int64_t splits;          // S: blocks along the rows
  int64_t rows_per_split;  // rows of one block, a multiple of kGwprWarps
};

GwprPlan plan_gwpr(int64_t n, int64_t elt) {
  const int64_t cols_per_tile = kWarpSize * (kVecBytes / elt);
  const int64_t col_tiles = ceil_div(n, cols_per_tile);
  const int64_t splits =
      std::min({ceil_div(kTargetBlocksPerBatch, col_tiles), ceil_div(n, kMinRowsPerSplit), kMaxSplits});
  const int64_t rows = std::min(ceil_div(ceil_div(n, splits), kGwprWarps) * kGwprWarps, kMaxRowsPerSplit);
  return {col_tiles, ceil_div(n, rows), rows};
}

// s_t[i] from the column sums P_t[b] ([S, N]) of the previous iteration; the same expression in the step prologue
// and in the final write, so both see bitwise the same scores.
__device__ __forceinline__ float score_from_partials(const float* __restrict__ partials, int64_t splits, int64_t n,
                                                     int64_t i, float scale, float bias) {
  float sum = 0.f;
  for (int64_t s = 0; s < splits; ++s) sum += partials[s * n + i];
  return __fmaf_rn(scale, sum, bias);
}

// 16 bytes (16 / sizeof(T) elements) at a 16-byte aligned address, widened to float.
__device__ __forceinline__ void load16(const float* p, float (&out)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

__device__ __forceinline__ void load16(const __half* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(h[k]);
    out[2 * k] = f.x;
    out[2 * k + 1] = f.y;
  }
}

__device__ __forceinline__ void load16(const __nv_bfloat16* p, float (&out)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    out[2 * k] = f.x;
    out[2 * k + 1] = f.y;
  }
}

// One power-iteration step for a tile of 32*V columns and rows_per_split rows of one batch row:
//   P_out[b, split, j] = sum_{i in split} A[b, i, j] * s_t[i]     (s_t rebuilt from P_in, or 1/N when P_in is null)
// kAligned: the map's base address and row pitch are multiples of 16 bytes, so every lane's V columns are one
// aligned 16-byte load and lie wholly inside or wholly outside the row (N is a multiple of V). Otherwise each
// column is loaded alone and bounds-checked.
// Grid: (col_tiles, S, batch rows of this launch); block: kGwprThreads; dynamic shared memory: rows_per_split floats.
template <typename T, bool kAligned>
__global__ void __launch_bounds__(kGwprThreads)
    gwpr_step_kernel(const T* __restrict__ amap,             // [b, N, N]
                     const float* __restrict__ partials_in,  // [b, S, N] sums of the previous step, or nullptr
                     float* __restrict__ partials_out,       // [b, S, N]
                     int64_t n, int64_t splits, int rows_per_split, float scale, float bias, float init) {
  constexpr int V = kVecBytes / sizeof(T);  // columns per lane
  extern __shared__ float s_rows[];         // [rows_per_split]: s_t of this block's rows
  __shared__ float s_red[kGwprWarps - 1][V][kWarpSize];  // column sums of warps 1..7, lane-minor (no bank conflict)

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t batch = blockIdx.z;
  const int64_t split = blockIdx.y;
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) * kWarpSize + lane) * V;  // this lane's first column
  const int64_t i0 = split * rows_per_split;                                     // the block's first row
  const int rows = static_cast<int>(n - i0 < rows_per_split ? n - i0 : rows_per_split);  // the last split is short

  for (int r = threadIdx.x; r < rows; r += kGwprThreads) {
    s_rows[r] = partials_in == nullptr
                    ? init
                    : score_from_partials(partials_in + batch * splits * n, splits, n, i0 + r, scale, bias);
  }
  __syncthreads();

  float acc[V] = {};
  if (j0 < n) {
    const T* a = amap + (batch * n + i0) * n + j0;  // row i0, column j0
#pragma unroll kRowUnroll
    for (int r = warp; r < rows; r += kGwprWarps) {
      const T* a_row = a + static_cast<int64_t>(r) * n;
      float v[V];
      if constexpr (kAligned) {
        load16(a_row, v);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = j0 + k < n ? to_float(a_row[k]) : 0.f;
      }
      const float s = s_rows[r];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = fmaf(v[k], s, acc[k]);
    }
  }

  if (warp > 0) {
#pragma unroll
    for (int k = 0; k < V; ++k) s_red[warp - 1][k][lane] = acc[k];
  }
  __syncthreads();
  if (warp == 0 && j0 < n) {
    for (int w = 0; w < kGwprWarps - 1; ++w) {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += s_red[w][k][lane];
    }
    float* out = partials_out + (batch * splits + split) * n + j0;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (j0 + k < n) out[k] = acc[k];
    }
  }
}

// scores[b, j] = s_T[j] (from P_T, or 1/N when no iteration ran). Grid: (ceil(N / 256), batch rows); 4 bytes
// written per column, 4*S read.
__global__ void __launch_bounds__(kFinalizeThreads)
    gwpr_finalize_kernel(const float* __restrict__ partials,  // [b, S, N], or nullptr when num_iters == 0
                         float* __restrict__ scores,          // [b, N]
                         int64_t n, int64_t splits, float scale, float bias, float init) {
  const int64_t batch = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (j >= n) return;
  scores[batch * n + j] =
      partials == nullptr ? init : score_from_partials(partials + batch * splits * n, splits, n, j, scale, bias);
}

void check_gwpr_sizes(const char* launcher, int64_t batch, int64_t n) {
  require(batch >= 0, launcher, "batch must be >= 0, got " + std::to_string(batch));
  require(n >= 0 && n <= INT32_MAX, launcher, "n must be in 0..2^31-1, got " + std::to_string(n));
}

}  // namespace

int64_t gwpr_workspace_floats(int64_t batch, int64_t n, int dtype) {
  check_gwpr_sizes("gwpr_workspace_floats", batch, n);
  const DType dt = as_dtype(dtype);
  if (batch == 0 || n == 0) return 0;
  return 2 * batch * plan_gwpr(n, dtype_size(dt)).splits * n;  // two ping-pong buffers [B, S, N]
}

void gwpr(std::uintptr_t amap, std::uintptr_t scores, std::uintptr_t workspace, int64_t workspace_floats,
          int64_t batch, int64_t n, int64_t num_iters, double damping, int dtype, std::uintptr_t stream) {
  constexpr const char* kName = "gwpr";
  check_gwpr_sizes(kName, batch, n);
  require(num_iters >= 0, kName, "num_iters must be >= 0, got " + std::to_string(num_iters));
  require(damping >= 0.0 && damping <= 1.0, kName, "damping must be in [0, 1], got " + std::to_string(damping));
  const DType dt = as_dtype(dtype);
  const int64_t needed = num_iters > 0 ? gwpr_workspace_floats(batch, n, dtype) : 0;
  require(workspace_floats >= needed, kName,
          "workspace holds " + std::to_string(workspace_floats) + " floats, gwpr_workspace_floats() asks for " +
              std::to_string(needed));
  require_ptr(amap, num_iters > 0 ? batch * n * n : 0, kName, "amap");
  require_ptr(scores, batch * n, kName, "scores");
  require_ptr(workspace, needed, kName, "workspace");
  if (batch == 0 || n == 0) return;

  const int64_t elt = dtype_size(dt);
  const GwprPlan plan = plan_gwpr(n, elt);
  require(plan.splits <= kMaxGridYZ, kName, "n is too large for the row-split grid, got " + std::to_string(n));
  const float scale = static_cast<float>(1.0 - damping);
  const float bias = static_cast<float>(damping / static_cast<double>(n));
  const float init = static_cast<float>(1.0 / static_cast<double>(n));
  const cudaStream_t st = as_stream(stream);
  float* ws = as_ptr<float>(workspace);
  const int64_t buffer_floats = batch * plan.splits * n;  // one ping-pong buffer [B, S, N]

  // Batch after batch when one batch row's map fits L2 but all of them do not (see the file comment).
  int device = 0;
  int l2_bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute");
  const int64_t map_bytes = n * n * elt;
  // As many batch rows per launch as fit L2 together (at least one, at most the grid's z limit).
  const int64_t batch_chunk = std::clamp<int64_t>(map_bytes > 0 ? l2_bytes / map_bytes : kMaxGridYZ, 1, kMaxGridYZ);

  dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool aligned = amap % kVecBytes == 0 && (n * elt) % kVecBytes == 0;
    auto kernel = aligned ? gwpr_step_kernel<T, true> : gwpr_step_kernel<T, false>;
    const size_t smem = static_cast<size_t>(plan.rows_per_split) * sizeof(float);
    for (int64_t b0 = 0; b0 < batch; b0 += batch_chunk) {
      const int64_t rows = std::min(batch_chunk, batch - b0);
      const dim3 grid(static_cast<unsigned>(plan.col_tiles), static_cast<unsigned>(plan.splits),
                      static_cast<unsigned>(rows));
      const T* a = as_ptr<const T>(amap) + b0 * n * n;
      for (int64_t t = 0; t < num_iters; ++t) {
        const float* p_in = t == 0 ? nullptr : ws + ((t - 1) % 2) * buffer_floats + b0 * plan.splits * n;
        float* p_out = ws + (t % 2) * buffer_floats + b0 * plan.splits * n;
        launch_kernel("gwpr_step_kernel", kernel, grid, kGwprThreads, smem, st, a, p_in, p_out, n, plan.splits,
                      static_cast<int>(plan.rows_per_split), scale, bias, init);
      }
    }
  });

  const float* p_last = num_iters == 0 ? nullptr : ws + ((num_iters - 1) % 2) * buffer_floats;
  for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridYZ) {
    const int64_t rows = std::min(kMaxGridYZ, batch - b0);
    const dim3 grid(static_cast<unsigned>(ceil_div(n, kFinalizeThreads)), static_cast<unsigned>(rows));
    launch_kernel("gwpr_finalize_kernel", gwpr_finalize_kernel, grid, kFinalizeThreads, 0, st,
                  p_last == nullptr ? nullptr : p_last + b0 * plan.splits * n, as_ptr<float>(scores) + b0 * n, n,
                  plan.splits, scale, bias, init);
  }
}

}  // namespace atedm
