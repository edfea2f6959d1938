// Device and host helpers shared by the kernels of atedm_kernels._C: storage-dtype dispatch, conversion to float,
// ceil-division, the grid-dimension limit and a warp-level inclusive sum.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "launch.h"

namespace atedm {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;
// Hardware limit of gridDim.y and gridDim.z; launchers split larger batch counts into several launches.
constexpr int64_t kMaxGridYZ = 65535;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Carries a storage type through a generic lambda: dispatch_dtype(d, [&](auto tag) { using T = typename
// decltype(tag)::type; ... }).
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the device storage type of `dtype` (__half, __nv_bfloat16 or float).
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      f(TypeTag<__half>{});
      return;
    case DType::kBFloat16:
      f(TypeTag<__nv_bfloat16>{});
      return;
    case DType::kFloat32:
      f(TypeTag<float>{});
      return;
  }
  throw std::invalid_argument("atedm_kernels._C: unknown dtype");
}

// Bytes per element of a storage dtype.
inline int64_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Exact widening of a stored element to float (every fp16/bf16 value is a float).
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

// Inclusive prefix sum across the 32 lanes of a full warp (lane l gets v_0 + ... + v_l).
__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t v) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const uint32_t other = __shfl_up_sync(kFullWarpMask, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

}  // namespace atedm
