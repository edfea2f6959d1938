"""The ``"cpu"`` kernels (attention with the map, native C++ and blocked PyTorch; GEMV G-WPR; block-argmax
similarity sources) against the float64 brute force of tests/brute_force.py, with the error judged against the
reference's error at the same precision; block and task tails, padding, ties, NaN, poisoned outputs, half-precision
inputs and maps; and opcheck on the cpu backend."""

import os
import platform

import pytest
import torch

import atedm_kernels as ak
from atedm_kernels import backends
from atedm_kernels.kernels import cpu_attention, cpu_pruning
from tests import brute_force as bf


def max_err(actual, expected) -> float:
    return (actual.double() - expected).abs().max().item()


def test_auto_on_cpu_picks_the_cpu_kernels_where_they_exist():
    cpu = torch.device("cpu")
    for op, kernels in backends.OP_KERNELS.items():
        assert backends.resolve(op, "auto", cpu) == ("cpu" if "cpu" in kernels else "reference"), op


def test_cpu_backend_refuses_cuda_tensors_with_a_reason():
    with pytest.raises(ak.BackendUnavailableError, match="cpu kernels are for CPU"):
        backends.resolve("gwpr", "cpu", torch.device("cuda"))


needs_native = pytest.mark.skipif(not cpu_attention.native_available(),
                                  reason="atedm_kernels._cpu is not built here or this CPU lacks AVX2/FMA")


@pytest.fixture(params=["native", "torch"])
def cpu_impl(request, monkeypatch):
    """Which implementation the cpu backend runs: the C++ kernels of atedm_kernels._cpu, or the PyTorch fallbacks."""
    if request.param == "native":
        if not cpu_attention.native_available():
            pytest.skip("atedm_kernels._cpu is not built here or this CPU lacks AVX2/FMA/F16C")
    else:
        monkeypatch.setattr(cpu_attention, "native_available", lambda: False)
        monkeypatch.setattr(cpu_pruning, "native_available", lambda: False)
    return request.param


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or os.environ.get("ATEDM_BUILD_CPU") == "0",
                    reason="_cpu is built on x86-64 only, and not with ATEDM_BUILD_CPU=0")
def test_native_module_is_built_on_x86():
    # the install builds it on every x86-64 machine with a C++ compiler: a silent fallback would hide a broken build
    assert cpu_attention._cpu is not None, "atedm_kernels._cpu missing: the CPU build failed at install"


def test_python_dtype_codes_are_the_headers():
    """atedm_kernels/kernels/dtype_codes.py and csrc/dtype_codes.h say the same: a code changed on one side only would
    make every native kernel read the wrong element type."""
    import re
    from pathlib import Path

    from atedm_kernels.kernels.dtype_codes import DTYPE_CODES

    header = (Path(__file__).resolve().parent.parent / "csrc" / "dtype_codes.h").read_text()
    body = re.search(r"enum class DType : int \{([^}]*)\}", header).group(1)
    codes = {name.strip(): int(value) for name, value in re.findall(r"k(\w+) = (\d+)", body)}
    names = {torch.float16: "Float16", torch.bfloat16: "BFloat16", torch.float32: "Float32"}
    assert {names[dtype]: code for dtype, code in DTYPE_CODES.items()} == codes


@pytest.mark.parametrize("block_bytes", [None, 1])  # None: the default blocks; 1: 16-row blocks, odd tails
@pytest.mark.parametrize("shape", [(1, 1, 5, 7, 8), (2, 3, 37, 37, 16), (2, 2, 33, 20, 40), (3, 5, 70, 49, 64)])
def test_attention_with_map_matches_float64(gen, monkeypatch, cpu_impl, shape, block_bytes):
    if block_bytes is not None:
        monkeypatch.setattr(cpu_attention, "BLOCK_BYTES", block_bytes)
    batch, heads, n, m, d = shape
    q, k, v = (torch.randn(batch, heads, s, d, generator=gen) * 2 for s in (n, m, m))
    out, amap = ak.attention_with_map(q, k, v, map_dtype=torch.float32, backend="cpu")
    ref_out, ref_map = ak.attention_with_map(q, k, v, map_dtype=torch.float32, backend="reference")
    exact_out, exact_map = bf.attention_with_map(q, k, v)
    assert out.shape == q.shape and amap.shape == (batch, n, m) and amap.dtype == torch.float32
    # FlashAttention-style bound: at most twice the fp32 reference's own error, plus float32 rounding of the result
    assert max_err(out, exact_out) <= 2 * max_err(ref_out, exact_out) + 1e-6
    assert max_err(amap, exact_map) <= 2 * max_err(ref_map, exact_map) + 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("map_dtype", [None, torch.bfloat16])
def test_attention_with_map_half_inputs_and_maps(gen, cpu_impl, dtype, map_dtype):
    q, k, v = (torch.randn(2, 3, 29, 24, generator=gen).to(dtype) for _ in range(3))
    out, amap = ak.attention_with_map(q, k, v, scale=0.2, map_dtype=map_dtype, backend="cpu")
    ref_out, ref_map = ak.attention_with_map(q, k, v, scale=0.2, map_dtype=map_dtype, backend="reference")
    exact_out, exact_map = bf.attention_with_map(q, k, v, scale=0.2)
    assert out.dtype == dtype and amap.dtype == (map_dtype or torch.float16)
    assert max_err(out, exact_out) <= 2 * max_err(ref_out, exact_out) + 1e-6
    assert max_err(amap, exact_map) <= 2 * max_err(ref_map, exact_map) + 1e-7


def test_attention_with_map_noncontiguous_inputs(gen, cpu_impl):
    # SD-XL hands the op [B, N, H, D] views transposed to [B, H, N, D]
    q, k, v = (torch.randn(2, 19, 4, 16, generator=gen).transpose(1, 2) for _ in range(3))
    out, amap = ak.attention_with_map(q, k, v, map_dtype=torch.float32, backend="cpu")
    exact_out, exact_map = bf.attention_with_map(q, k, v)
    torch.testing.assert_close(out.double(), exact_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(amap.double(), exact_map, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("map_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_with_map_propagates_nan(gen, cpu_impl, map_dtype):
    q, k, v = (torch.randn(1, 2, 9, 8, generator=gen) for _ in range(3))
    q[0, 1, 4, 0] = float("nan")
    out, amap = ak.attention_with_map(q, k, v, map_dtype=map_dtype, backend="cpu")
    assert out[0, 1, 4].isnan().all() and amap[0, 4].isnan().all()
    assert not out[0, 0].isnan().any() and not amap[0, :4].isnan().any()


def _native_call(q, k, v, scale, threads, out, amap):
    strides = lambda t: (t.stride(0), t.stride(1), t.stride(2))  # noqa: E731
    batch, heads, n_q, head_dim = q.shape
    cpu_attention._cpu.attention_with_map_f32(
        q.data_ptr(), strides(q), k.data_ptr(), strides(k), v.data_ptr(), strides(v), out.data_ptr(), strides(out),
        amap.data_ptr(), cpu_attention.DTYPE_CODES[amap.dtype], batch, heads, n_q, k.shape[2], head_dim, scale,
        threads)


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("shape", [
    (1, 1, 1, 1, 1),  # one key, one column: everything is padding
    (2, 3, 131, 33, 40),  # 96-row tasks with a 35-row tail; M and D padded to 64
    (1, 2, 130, 4100, 8),  # 63-row tasks at ~4096 keys (the SD-XL size), a 4-row tail, 4 padded keys
    (3, 2, 7, 77, 80),  # SD-XL's 77 text tokens; D = 80 (SD 1.x's mid levels) padded to 96
])
def test_native_kernel_writes_every_output_and_matches_float64(gen, threads, shape):
    batch, heads, n, m, d = shape
    q, k, v = (torch.randn(batch, heads, s, d, generator=gen) * 2 for s in (n, m, m))
    out = torch.full_like(q, float("nan"))  # poisoned: an element left unwritten stays NaN
    amap = torch.full((batch, n, m), float("nan"))
    _native_call(q, k, v, 0.3, threads, out, amap)
    ref_out, ref_map = ak.attention_with_map(q, k, v, scale=0.3, map_dtype=torch.float32, backend="reference")
    exact_out, exact_map = bf.attention_with_map(q, k, v, scale=0.3)
    assert max_err(out, exact_out) <= 2 * max_err(ref_out, exact_out) + 1e-6
    assert max_err(amap, exact_map) <= 2 * max_err(ref_map, exact_map) + 1e-7
    # the result does not depend on how tasks fall to threads
    out_1, amap_1 = torch.empty_like(out), torch.empty_like(amap)
    _native_call(q, k, v, 0.3, 1, out_1, amap_1)
    assert torch.equal(out, out_1) and torch.equal(amap, amap_1)


@needs_native
def test_native_kernel_wide_logits_and_strided_output(gen):
    # logits spread over hundreds: most exps underflow (the kernel clamps at -87.3), the row maxima must still win
    q, k, v = (torch.randn(2, 2, 40, 16, generator=gen) * 6 for _ in range(3))
    out = torch.full((2, 40, 2, 16), float("nan")).transpose(1, 2)  # [B, H, N, D] view of [B, N, H, D] storage
    amap = torch.full((2, 40, 40), float("nan"))
    _native_call(q, k, v, 1.0, 2, out, amap)
    ref_out, ref_map = ak.attention_with_map(q, k, v, scale=1.0, map_dtype=torch.float32, backend="reference")
    exact_out, exact_map = bf.attention_with_map(q, k, v, scale=1.0)
    assert max_err(out, exact_out) <= 2 * max_err(ref_out, exact_out) + 1e-6
    assert max_err(amap, exact_map) <= 2 * max_err(ref_map, exact_map) + 1e-7


@needs_native
def test_native_kernel_rejects_bad_sizes():
    x = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="sizes must be positive"):
        _native_call(x, x, x, 1.0, 0, torch.empty_like(x), torch.empty(1, 2, 2))


@pytest.mark.parametrize("batch,n,iters,damping",
                         [(1, 1, 3, 0.0), (2, 13, 5, 0.0), (3, 31, 10, 0.15), (2, 64, 1, 1.0), (1, 300, 3, 0.0),
                          (1, 1029, 4, 0.0)])
@pytest.mark.parametrize("map_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gwpr_matches_float64(gen, cpu_impl, batch, n, iters, damping, map_dtype):
    amap = torch.softmax(torch.randn(batch, n, n, generator=gen) * 3, -1).to(map_dtype)
    scores = ak.gwpr(amap, iters, damping, backend="cpu")
    assert scores.dtype == torch.float32 and scores.shape == (batch, n)
    exact = bf.gwpr(amap, iters, damping)
    # relative error: within 1e-6, or twice the float32 reference's own (its N-term sums lose more at large N)
    rel = lambda x: ((x.double() - exact).abs() / exact.abs()).max().item()  # noqa: E731
    assert rel(scores) <= max(1e-6, 2 * rel(ak.gwpr(amap, iters, damping, backend="reference")))


def test_gwpr_constant_map_stays_uniform(cpu_impl):
    # every row the same: the exact scores are 1/N; fp32 rounding may not drift by more than a few ulps
    amap = torch.full((2, 50, 50), 1.0 / 50)
    torch.testing.assert_close(ak.gwpr(amap, 10, backend="cpu").double(), torch.full((2, 50), 1 / 50, dtype=torch.float64),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("map_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,n,keep", [(1, 2, 1), (2, 17, 5), (3, 40, 39), (2, 61, 23), (1, 9, 9)])
def test_similarity_sources_matches_float64_with_ties_and_nan(gen, cpu_impl, batch, n, keep, map_dtype):
    amap = torch.softmax(torch.randn(batch, n, n, generator=gen), -1)
    amap = (amap * 8).round() / 8  # heavy ties: the lowest position must win
    amap = amap.to(map_dtype)
    amap[0, :, n // 2] = float("nan")  # a NaN column: falls back to position 0
    if n > 3:
        amap[-1, 1, :] = float("nan")  # a NaN row: never wins
    keep_idx, prune_idx = ak.select_tokens(torch.rand(batch, n, generator=gen), keep)
    src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="cpu")
    assert torch.equal(src, bf.similarity_sources(amap, keep_idx, prune_idx))
    assert torch.equal(src, ak.similarity_sources(amap, keep_idx, prune_idx, backend="reference"))


def _cpu_calls(gen):
    amap = torch.softmax(torch.randn(2, 21, 21, generator=gen), -1)
    keep_idx, prune_idx = ak.select_tokens(torch.rand(2, 21, generator=gen), 8)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (13, 9, 9))
    return {
        "attention_with_map": (q, k, v, None, torch.float32, "cpu"),
        "gwpr": (amap, 5, 0.1, "cpu"),
        "similarity_sources": (amap, keep_idx, prune_idx, "cpu"),
    }


@pytest.mark.parametrize("name", ["attention_with_map", "gwpr", "similarity_sources"])
def test_opcheck_cpu_backend(gen, cpu_impl, name):
    torch.library.opcheck(getattr(torch.ops.atedm, name).default, _cpu_calls(gen)[name])
