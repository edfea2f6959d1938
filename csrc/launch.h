// Shared launcher conventions for atedm_kernels._C.
//
// Every launcher takes raw device pointers (as uintptr_t from torch's data_ptr()), sizes, and the cudaStream_t of
// the caller's current torch stream (as uintptr_t), and reports failure by throwing std::runtime_error, which
// pybind11 turns into a Python RuntimeError. No libtorch types appear anywhere.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "dtype_codes.h"

namespace atedm {

// Throws with the CUDA error string if `status` is not cudaSuccess.
inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("atedm_kernels._C: ") + what + ": " + cudaGetErrorString(status));
  }
}

// Checks the launch that was just issued (configuration errors surface here, asynchronous faults later).
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// kernel<<<grid, block, dynamic_shared, stream>>>(args...), then check_launch(name). Every launch of csrc/ goes
// through here: under nvcc it is the triple-chevron launch; the CPU test build of tests/cuda_host/ (host compiler,
// ATEDM_CUDA_HOST) runs the same kernel on host memory with its scheduler instead.
template <typename... Params, typename... Args>
inline void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared,
                          cudaStream_t stream, Args&&... args) {
#if defined(ATEDM_CUDA_HOST)
  cuda_host::launch(name, kernel, grid, block, dynamic_shared, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, dynamic_shared, stream>>>(std::forward<Args>(args)...);
#endif
  check_launch(name);
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

template <typename T>
inline T* as_ptr(std::uintptr_t ptr) {
  return reinterpret_cast<T*>(ptr);
}


inline DType as_dtype(int code) {
  if (code < 0 || code > 2) throw std::invalid_argument("atedm_kernels._C: unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

// Argument checks of the launchers: std::invalid_argument (Python ValueError) naming the launcher and the argument.
inline void require(bool ok, const char* launcher, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("atedm_kernels._C.") + launcher + ": " + what);
}

// A device buffer that will be touched (elements > 0) must not be a null pointer.
inline void require_ptr(std::uintptr_t ptr, int64_t elements, const char* launcher, const char* name) {
  require(ptr != 0 || elements == 0, launcher, std::string(name) + " is a null pointer");
}

}  // namespace atedm
