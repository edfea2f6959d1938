// Build information of atedm_kernels._C.
#include "launch.h"
#include "ops.h"

namespace atedm {

int cuda_runtime_version() {
  int version = 0;
  check_cuda(cudaRuntimeGetVersion(&version), "cudaRuntimeGetVersion");
  return version;
}

}  // namespace atedm
