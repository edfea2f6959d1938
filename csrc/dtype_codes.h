// The storage dtype codes every native kernel of the package takes (atedm_kernels._C's launchers and
// atedm_kernels._cpu's kernels): written once here and once in Python (atedm_kernels/kernels/dtype_codes.py);
// tests/test_cpu_kernels.py checks that the two agree.
#pragma once

namespace atedm {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

constexpr int dtype_code(DType dtype) { return static_cast<int>(dtype); }

}  // namespace atedm
