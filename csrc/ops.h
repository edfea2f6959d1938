// Host-side launchers of atedm_kernels._C (declarations; bound in python_bindings/module.cpp).
#pragma once

#include <cstdint>

namespace atedm {

int cuda_runtime_version();

// out[i] = i for i < n (int64). The smallest launcher: proves pointers, sizes and stream pass through.
void iota_int64(std::uintptr_t out, int64_t n, std::uintptr_t stream);

}  // namespace atedm
