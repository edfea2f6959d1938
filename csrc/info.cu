// Build information and the device-side smoke kernel that proves the launcher conventions end to end.
#include "launch.h"
#include "ops.h"

namespace atedm {

namespace {
__global__ void iota_int64_kernel(int64_t* out, int64_t n) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}
}  // namespace

int cuda_runtime_version() {
  int version = 0;
  check_cuda(cudaRuntimeGetVersion(&version), "cudaRuntimeGetVersion");
  return version;
}

void iota_int64(std::uintptr_t out, int64_t n, std::uintptr_t stream) {
  if (n < 0) throw std::invalid_argument("iota_int64: n must be >= 0");
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  iota_int64_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, as_stream(stream)>>>(as_ptr<int64_t>(out), n);
  check_launch("iota_int64_kernel");
}

}  // namespace atedm
