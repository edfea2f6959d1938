// CUDA on the CPU: the test build of csrc/ (README.md, "Verification"; built by tests/cuda_host/build.py).
//
// The unmodified csrc/*.cu compile with the host C++ compiler against this header (`g++ -x c++ -include
// cuda_host.h -I tests/cuda_host/include`), and their launchers run the kernels on host memory:
//
//   - a launch runs its blocks one after another (in order, or shuffled: CUDA_HOST_SHUFFLE=<seed>); the threads of a
//     block are cooperative fibers (glibc ucontext) that switch only where CUDA threads can wait for each other;
//   - __syncthreads() is a barrier over the block's live (not exited) threads, reached at one call site;
//   - warp intrinsics are exchanges among the 32 lanes of a warp: every lane named in the mask must arrive with the
//     same intrinsic and mask before any returns, and a shuffle may only read lanes named in the mask;
//   - __shared__ variables have static storage (`thread_local`: one instance per OS thread, shared by the fibers of
//     the block running on it), filled with 0xff bytes before every block; `extern __shared__` arrays are aliases of
//     one dynamic shared-memory buffer, and bytes past the launch's dynamic size are checked after every block;
//   - the runtime calls csrc/ makes (last error, device attributes, version, memset) and a device of compute
//     capability 9.0 with an H100's 50 MiB L2 and the default 48 KiB of dynamic shared memory per block.
//
// Misuse aborts the process with one line naming the kernel, block, thread and call site: a barrier or warp
// exchange that can never complete, threads of a block at different barriers, a lane missing from its own mask, a
// mask naming exited or absent lanes, lanes disagreeing on the intrinsic or the mask, a shuffle reading a lane the
// mask does not name, a write past the launch's dynamic shared memory. Launch configuration errors (block size,
// grid size, dynamic shared memory) are reported through cudaGetLastError() as on a GPU.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define ATEDM_CUDA_HOST 1

// ---- Qualifiers -------------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Static storage that also combines with `extern` (`extern __shared__ T a[];`); compile with -fno-extern-tls-init.
#define __shared__ thread_local

// ---- Built-in types ---------------------------------------------------------------------------------------------

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// Storage types: the bits only; conversions are exact widenings.
struct alignas(2) __half {
  uint16_t bits;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(2) __nv_bfloat16 {
  uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // infinity, or NaN with its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;  // zero or subnormal: exact in float
    std::memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = static_cast<uint32_t>(b.bits) << 16;  // bfloat16 is the top half of a float
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__bfloat162float(b.x), __bfloat162float(b.y)}; }

// ---- Arithmetic intrinsics --------------------------------------------------------------------------------------

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// Device atomics are relaxed read-modify-writes (fibers of one block can interleave only at their switch points,
// but the sanitizers must see atomic accesses).
inline int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* address, float value) {
  float old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  float sum;
  do {
    sum = old + value;
  } while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

// ---- Runtime API (the subset csrc/ uses; values as in the CUDA runtime) -----------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrL2CacheSize = 38,
};

typedef struct CUstream_st* cudaStream_t;  // any value: launches run synchronously, in call order

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream = nullptr);

// ---- Kernel execution -------------------------------------------------------------------------------------------

namespace cuda_host {

// Dynamic shared memory a launch may ask for: the default per-block limit of every GPU since sm_70 (more needs
// cudaFuncSetAttribute, which csrc/ does not use).
constexpr size_t kMaxDynamicShared = 48 * 1024;

// The running thread's coordinates; the scheduler points `current_index` at the running fiber's.
struct ThreadIndex {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};

namespace detail {

extern const ThreadIndex* current_index;

// The warp exchanges, one code each; the scheduler computes every lane's result when the last named lane arrives.
enum class WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kMatchAny, kBallot, kSyncWarp };

struct Site {
  const char* file;
  int line;
};

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int arg, int width, Site site);
void sync_threads(Site site);

// Runs `body(closure)` as every thread of every block of the grid; configuration errors become the last error.
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared, void (*body)(void*), void* closure);

template <typename T>
uint64_t to_bits(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp exchanges move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

template <typename T>
T shuffle(WarpOp op, unsigned mask, T value, int arg, int width, Site site) {
  return from_bits<T>(warp_exchange(op, mask, to_bits(value), arg, width, site));
}

template <typename F>
void invoke(void* closure) {
  (*static_cast<F*>(closure))();
}

}  // namespace detail

// kernel<<<grid, block, dynamic_shared, stream>>>(args...): the arguments are converted to the kernel's parameter
// types once, and every thread calls the kernel with its own copies, as a GPU thread gets its own parameters.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t,
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  auto body = [&]() { std::apply(kernel, params); };
  detail::run_grid(name, grid, block, dynamic_shared, &detail::invoke<decltype(body)>, &body);
}

}  // namespace cuda_host

#define threadIdx (::cuda_host::detail::current_index->thread)
#define blockIdx (::cuda_host::detail::current_index->block)
#define blockDim (::cuda_host::detail::current_index->block_dim)
#define gridDim (::cuda_host::detail::current_index->grid_dim)

// ---- Synchronisation and warp intrinsics (call sites recorded for the misuse messages) -------------------------

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_host::detail::sync_threads({file, line});
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::cuda_host::detail::warp_exchange(::cuda_host::detail::WarpOp::kSyncWarp, mask, 0, 0, 32, {file, line});
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return ::cuda_host::detail::shuffle(::cuda_host::detail::WarpOp::kShflIdx, mask, value, src_lane, width,
                                      {file, line});
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return ::cuda_host::detail::shuffle(::cuda_host::detail::WarpOp::kShflUp, mask, value, static_cast<int>(delta),
                                      width, {file, line});
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return ::cuda_host::detail::shuffle(::cuda_host::detail::WarpOp::kShflDown, mask, value, static_cast<int>(delta),
                                      width, {file, line});
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return ::cuda_host::detail::shuffle(::cuda_host::detail::WarpOp::kShflXor, mask, value, lane_mask, width,
                                      {file, line});
}

template <typename T>
unsigned __match_any_sync(unsigned mask, T value, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<unsigned>(::cuda_host::detail::warp_exchange(
      ::cuda_host::detail::WarpOp::kMatchAny, mask, ::cuda_host::detail::to_bits(value), 0, 32, {file, line}));
}

inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(::cuda_host::detail::warp_exchange(::cuda_host::detail::WarpOp::kBallot, mask,
                                                                  predicate != 0, 0, 32, {file, line}));
}
