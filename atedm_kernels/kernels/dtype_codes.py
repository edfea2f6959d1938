"""The storage dtype codes the native kernels take (``csrc/dtype_codes.h``, ``atedm::DType``), for every kernel
family that passes raw pointers: ``cuda`` (``atedm_kernels._C``), ``cpu`` (``atedm_kernels._cpu``) and the tests'
emulated-CUDA build. ``tests/test_cpu_kernels.py`` checks this table against the header."""

from __future__ import annotations

import torch

DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
