"""pytest-benchmark cases for the fused attention at SD-XL shapes (fp16); skipped without CUDA.

    pytest benchmarks/test_benchmark_attention_with_map.py --benchmark-columns=median,iqr,rounds

For side-by-side ratios, TFLOP/s and JSON with raw timings, use ``benchmark_attention_with_map.py``.
"""

import pytest
import torch

from benchmark_attention_with_map import METHODS, SHAPES, make_inputs, make_methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=["A2-4096", "A10-1024", "A2-4096x77", "A10-1024x77"])
def test_attention_fp16(benchmark, shape, method):
    q, k, v = make_inputs(shape, torch.float16)
    fn = make_methods(q, k, v, shape[-1] ** -0.5, torch.float16)[method]
    fn()  # compile and autotune outside the timed rounds
    torch.cuda.synchronize()

    def step():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=50, warmup_rounds=5)
