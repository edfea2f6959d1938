// Similarity sources for token recovery (atedm.similarity_sources).
//
//   src[b, m] = argmax_j A[b, keep_idx[b, j], prune_idx[b, m]]     j in [0, K), ties to the lowest j
//
// Grid: (ceil((N-K) / 32), B); block: 16 warps. Lane l of every warp owns pruned column m = 32*blockIdx.x + l, and
// warp w scans the kept rows j = w, w + 16, ... in ascending order (8 rows in flight per lane), so its running
// maximum with a strict `>` keeps the lowest j. The warps' (value, j) pairs are then merged in shared memory (larger
// value, then lower j). A max with that tie rule is order-independent, so the result is exact and deterministic.
// Values are compared as floats after an exact widening, so equal stored values tie.
//
// Memory: a warp reads row keep_idx[j] at 32 ascending pruned columns, a few 32-byte sectors. B*K*(N-K) map
// elements are compared; in sectors that is B*K*(N-K)*elt bytes at least and about B*K*N*elt (whole kept rows) when
// the pruned columns are dense, as at 63% pruning; plus B*(N-K)*8 written. No FLOPs beyond the comparisons.
//
// NaN entries never win a comparison and a column with no entry above -inf gets 0, exactly as in the reference. Indices outside [0, N) are the caller's contract: a kept
// row outside it is skipped, and a pruned column outside it gets 0 without any read.
#include <algorithm>

#include "common.cuh"
#include "ops.h"

namespace atedm {
namespace {

constexpr int kSourcesWarps = 16;  // warps per block, each scanning every 16th kept row
constexpr int kSourcesThreads = kSourcesWarps * kWarpSize;
constexpr int kSourcesColumns = kWarpSize;  // pruned columns per block, one per lane
constexpr int kSourcesUnroll = 8;  // kept rows a lane loads before comparing, to keep memory requests in flight

// Grid: (ceil((N-K) / kSourcesColumns), batch rows of this launch); block: kSourcesThreads. Static shared memory:
// 16 x 32 (float, int) pairs = 4 KiB.
template <typename T>
__global__ void __launch_bounds__(kSourcesThreads)
    similarity_sources_kernel(const T* __restrict__ amap,             // [b, N, N]
                              const int64_t* __restrict__ keep_idx,   // [b, K]
                              const int64_t* __restrict__ prune_idx,  // [b, N-K]
                              int64_t* __restrict__ src,              // [b, N-K]
                              int64_t n, int64_t keep) {
  __shared__ float s_best[kSourcesWarps][kSourcesColumns];
  __shared__ int s_best_j[kSourcesWarps][kSourcesColumns];

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int64_t batch = blockIdx.y;
  const int64_t pruned = n - keep;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kSourcesColumns + lane;

  int64_t column = -1;
  if (m < pruned) column = prune_idx[batch * pruned + m];
  const bool valid = column >= 0 && column < n;
  const T* map_b = amap + batch * n * n;
  const int64_t* keep_b = keep_idx + batch * keep;

  float best = -INFINITY;
  int best_j = 0;
  for (int64_t j0 = warp; j0 < keep; j0 += kSourcesWarps * kSourcesUnroll) {
    float v[kSourcesUnroll];
#pragma unroll
    for (int u = 0; u < kSourcesUnroll; ++u) {
      const int64_t j = j0 + u * kSourcesWarps;
      v[u] = -INFINITY;
      if (valid && j < keep) {
        const int64_t row = keep_b[j];  // the same address across the warp: one broadcast load
        if (row >= 0 && row < n) v[u] = to_float(map_b[row * n + column]);
      }
    }
#pragma unroll
    for (int u = 0; u < kSourcesUnroll; ++u) {
      if (v[u] > best) {
        best = v[u];
        best_j = static_cast<int>(j0 + u * kSourcesWarps);
      }
    }
  }

  s_best[warp][lane] = best;
  s_best_j[warp][lane] = best_j;
  __syncthreads();
  if (warp == 0 && m < pruned) {
    for (int w = 1; w < kSourcesWarps; ++w) {
      const float v = s_best[w][lane];
      const int j = s_best_j[w][lane];
      if (v > best || (v == best && j < best_j)) {
        best = v;
        best_j = j;
      }
    }
    src[batch * pruned + m] = best_j;
  }
}

}  // namespace

void similarity_sources(std::uintptr_t amap, std::uintptr_t keep_idx, std::uintptr_t prune_idx, std::uintptr_t src,
                        int64_t batch, int64_t n, int64_t keep, int dtype, std::uintptr_t stream) {
  constexpr const char* kName = "similarity_sources";
  require(batch >= 0, kName, "batch must be >= 0, got " + std::to_string(batch));
  require(n >= 1 && n <= INT32_MAX, kName, "n must be in 1..2^31-1, got " + std::to_string(n));
  require(keep >= 1 && keep <= n, kName,
          "keep must be in 1..n=" + std::to_string(n) + ", got " + std::to_string(keep));
  const DType dt = as_dtype(dtype);
  const int64_t pruned = n - keep;
  require_ptr(amap, batch * pruned, kName, "amap");
  require_ptr(keep_idx, batch * pruned, kName, "keep_idx");
  require_ptr(prune_idx, batch * pruned, kName, "prune_idx");
  require_ptr(src, batch * pruned, kName, "src");
  if (batch == 0 || pruned == 0) return;

  dispatch_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridYZ) {
      const int64_t rows = std::min(kMaxGridYZ, batch - b0);
      const dim3 grid(static_cast<unsigned>(ceil_div(pruned, kSourcesColumns)), static_cast<unsigned>(rows));
      launch_kernel("similarity_sources_kernel", similarity_sources_kernel<T>, grid, kSourcesThreads, 0,
                    as_stream(stream), as_ptr<const T>(amap) + b0 * n * n, as_ptr<const int64_t>(keep_idx) + b0 * keep,
                    as_ptr<const int64_t>(prune_idx) + b0 * pruned, as_ptr<int64_t>(src) + b0 * pruned, n, keep);
    }
  });
}

}  // namespace atedm
