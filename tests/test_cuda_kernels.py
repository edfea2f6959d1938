"""Tests of the CUDA extension ``atedm_kernels._C`` and its wrappers ``atedm_kernels.kernels.cuda``.

CPU part (always runs): the extension is built wherever ``nvcc`` is, reports its build, exposes every launcher,
rejects bad arguments before touching a GPU, and the dispatcher says why the "cuda" backend cannot take CPU tensors.
GPU part (``gpu`` marker, skipped without CUDA): every kernel against the references on fresh random inputs at odd
sizes, ties, poisoned outputs, all storage dtypes, G-WPR determinism, and compute-sanitizer runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import atedm_kernels
from atedm_kernels import BackendUnavailableError
from atedm_kernels.reference import (
    gather_tokens_reference,
    gwpr_reference,
    recover_tokens_reference,
    select_tokens_reference,
    similarity_sources_reference,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ("gwpr_workspace_floats", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
FAKE_PTR = 1 << 20  # a non-null "device pointer" for argument checks that must fail before any CUDA call


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and Path("/usr/local/cuda/bin/nvcc").is_file():
        found = "/usr/local/cuda/bin/nvcc"
    return found


def _extension():
    try:
        from atedm_kernels import _C
    except ImportError:
        return None
    return _C


_C = _extension()
needs_extension = pytest.mark.skipif(_C is None, reason="atedm_kernels._C is not built")
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(
    _C is None or not torch.cuda.is_available(), reason="needs a CUDA GPU and the built extension"
)


# ----------------------------------------------------------------------------------------------------------------
# CPU: build, module surface, argument checks, dispatcher
# ----------------------------------------------------------------------------------------------------------------


def test_extension_is_built_where_nvcc_exists():
    if _nvcc() is None:
        pytest.skip("nvcc not found: the package installs without the extension")
    from atedm_kernels import _C as ext  # must import wherever nvcc exists

    info = ext.info()
    assert info["version"] == atedm_kernels.__version__
    archs = info["cuda_archs"].split(",")
    assert archs and all(re.fullmatch(r"\d+[a-z]?(-real|-virtual)?", a.strip()) for a in archs), info
    assert info["cuda_runtime_version"] >= 11000, info


@needs_extension
def test_every_launcher_is_bound():
    for name in LAUNCHERS:
        assert callable(getattr(_C, name)), name
    assert not hasattr(_C, "iota_int64"), "the smoke launcher must be gone once real kernels exist"


# Each call has one bad argument and otherwise plausible values; it must raise before any CUDA call.
_BAD_CALLS = {
    "gwpr batch<0": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, -1, 8, 2, 0.0, 0, 0),
    "gwpr n<0": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, -8, 2, 0.0, 0, 0),
    "gwpr num_iters<0": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, -1, 0.0, 0, 0),
    "gwpr damping>1": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 1.5, 0, 0),
    "gwpr damping nan": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, float("nan"), 0, 0),
    "gwpr dtype code": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 0.0, 3, 0),
    "gwpr workspace too small": lambda: _C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 0, 1, 8, 2, 0.0, 0, 0),
    "gwpr null amap": lambda: _C.gwpr(0, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 0.0, 0, 0),
    "workspace batch<0": lambda: _C.gwpr_workspace_floats(-1, 8, 0),
    "workspace dtype code": lambda: _C.gwpr_workspace_floats(1, 8, 5),
    "select keep=0": lambda: _C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 0, 2, 0),
    "select keep>n": lambda: _C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 11, 2, 0),
    "select n=0": lambda: _C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 0, 1, 2, 0),
    "select batch<0": lambda: _C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, -2, 10, 3, 2, 0),
    "select dtype code": lambda: _C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 3, -1, 0),
    "select null keep_idx": lambda: _C.select_tokens(FAKE_PTR, 0, FAKE_PTR, 2, 10, 3, 2, 0),
    "sources keep=0": lambda: _C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 0, 0, 0),
    "sources keep>n": lambda: _C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 12, 0, 0),
    "sources batch<0": lambda: _C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, -1, 10, 3, 0, 0),
    "sources dtype code": lambda: _C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 9, 0),
    "gather channels<0": lambda: _C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, -4, 0, 0),
    "gather k<0": lambda: _C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, -3, 4, 0, 0),
    "gather dtype code": lambda: _C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 4, 3, 0),
    "gather null out": lambda: _C.gather_tokens(FAKE_PTR, FAKE_PTR, 0, 1, 10, 3, 4, 0, 0),
    "recover keep=0": lambda: _C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 0, 4, 0, 0),
    "recover keep>n": lambda: _C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 11, 4, 0, 0),
    "recover n=0": lambda: _C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 0, 1, 4, 0, 0),
    "recover channels<0": lambda: _C.recover_tokens(
        FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, -4, 0, 0
    ),
    "recover dtype code": lambda: _C.recover_tokens(
        FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 4, 4, 0
    ),
}


@needs_extension
@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_launchers_reject_bad_arguments_before_the_gpu(case):
    with pytest.raises(ValueError, match="atedm_kernels._C"):
        _BAD_CALLS[case]()


@needs_extension
def test_empty_problems_launch_nothing():
    # Null pointers are fine when nothing is touched, and no CUDA call is made (this runs without a GPU).
    assert _C.gwpr(0, 0, 0, 0, 0, 16, 3, 0.0, 0, 0) is None
    assert _C.gwpr(0, 0, 0, 0, 4, 0, 3, 0.0, 0, 0) is None
    assert _C.select_tokens(0, 0, 0, 0, 16, 4, 2, 0) is None
    assert _C.similarity_sources(0, 0, 0, 0, 3, 16, 16, 1, 0) is None  # keep == n: nothing pruned
    assert _C.gather_tokens(0, 0, 0, 2, 16, 0, 8, 0, 0) is None
    assert _C.gather_tokens(0, 0, 0, 2, 16, 4, 0, 0, 0) is None
    assert _C.recover_tokens(0, 0, 0, 0, 0, 0, 16, 4, 8, 2, 0) is None


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, n", [(1, 1), (2, 7), (3, 1000), (2, 4096)])
def test_gwpr_workspace_is_two_partial_buffers(batch, n, dtype):
    floats = _C.gwpr_workspace_floats(batch, n, CODES[dtype])
    assert floats % (2 * batch * n) == 0
    assert 1 <= floats // (2 * batch * n) <= n  # row splits S
    assert _C.gwpr_workspace_floats(0, n, CODES[dtype]) == 0


@needs_extension
def test_wrappers_reject_cpu_tensors():
    from atedm_kernels.kernels import cuda

    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda.gwpr_cuda(torch.rand(1, 4, 4), 2, 0.0)
    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda.gather_tokens_cuda(torch.rand(1, 4, 2), torch.zeros(1, 2, dtype=torch.int64))


def _small_problem():
    torch.manual_seed(0)
    amap = torch.softmax(torch.randn(2, 12, 12), dim=-1)
    scores = torch.rand(2, 12)
    keep_idx, prune_idx = select_tokens_reference(scores, 5)
    src = similarity_sources_reference(amap, keep_idx, prune_idx)
    x = torch.randn(2, 12, 6)
    return amap, scores, keep_idx, prune_idx, src, x


def _all_op_calls(backend):
    amap, scores, keep_idx, prune_idx, src, x = _small_problem()
    x_kept = gather_tokens_reference(x, keep_idx)
    return {
        "gwpr": lambda: atedm_kernels.gwpr(amap, 3, backend=backend),
        "select_tokens": lambda: atedm_kernels.select_tokens(scores, 5, backend=backend),
        "similarity_sources": lambda: atedm_kernels.similarity_sources(amap, keep_idx, prune_idx, backend=backend),
        "gather_tokens": lambda: atedm_kernels.gather_tokens(x, keep_idx, backend=backend),
        "recover_tokens": lambda: atedm_kernels.recover_tokens(x_kept, keep_idx, prune_idx, src, backend=backend),
    }


@pytest.mark.parametrize("op", ["gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens"])
def test_cuda_backend_on_cpu_tensors_says_why(op, monkeypatch):
    monkeypatch.delenv("ATEDM_BACKEND", raising=False)
    why = "the tensors are on 'cpu'" if _C is not None else "atedm_kernels._C is not built"
    with pytest.raises(BackendUnavailableError, match=re.escape(why)):
        _all_op_calls("cuda")[op]()


def test_auto_backend_on_cpu_tensors_is_the_reference(monkeypatch):
    monkeypatch.delenv("ATEDM_BACKEND", raising=False)
    amap, scores, keep_idx, prune_idx, src, x = _small_problem()
    x_kept = gather_tokens_reference(x, keep_idx)
    calls = _all_op_calls("auto")
    assert torch.equal(calls["gwpr"](), gwpr_reference(amap, 3, 0.0))
    for got, want in zip(calls["select_tokens"](), (keep_idx, prune_idx)):
        assert torch.equal(got, want)
    assert torch.equal(calls["similarity_sources"](), src)
    assert torch.equal(calls["gather_tokens"](), x_kept)
    assert torch.equal(calls["recover_tokens"](), recover_tokens_reference(x_kept, keep_idx, prune_idx, src))


# ----------------------------------------------------------------------------------------------------------------
# GPU: kernels against the references
# ----------------------------------------------------------------------------------------------------------------

ODD_N = (1, 7, 100, 1000, 4097)


def _cuda_module():
    from atedm_kernels.kernels import cuda

    return cuda


def _map(batch: int, n: int, dtype: torch.dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A [B, N, N] map on the GPU: a row-softmax of random logits, or one with planted ties."""
    logits = torch.randn(batch, n, n, generator=gen, device="cuda")
    amap = torch.softmax(logits, dim=-1)
    if kind == "dup_cols":  # every column copies one of 3: ties along the kept rows of each pruned column
        amap = amap[:, :, torch.arange(n, device="cuda") % min(n, 3)]
    elif kind == "dup_rows":  # every row copies one of 3: ties between kept rows
        amap = amap[:, torch.arange(n, device="cuda") % min(n, 3), :]
    elif kind == "quantised":  # four levels
        amap = torch.floor(amap * n * 2).clamp(max=3) / 4
    elif kind == "constant":
        amap = torch.full_like(amap, 1.0 / n)
    return amap.to(dtype).contiguous()


def _split(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep_idx, prune_idx = select_tokens_reference(scores.cpu(), keep)
    return keep_idx.to(scores.device), prune_idx.to(scores.device)


def _gwpr_float64(amap: torch.Tensor, num_iters: int, damping: float) -> torch.Tensor:
    batch, n, _ = amap.shape
    weights = amap.double()
    s = torch.full((batch, n), 1.0 / n, dtype=torch.float64, device=amap.device)
    for _ in range(num_iters):
        s = (1.0 - damping) * torch.bmm(s.unsqueeze(1), weights).squeeze(1) + damping / n
    return s


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", ODD_N)
@pytest.mark.parametrize("num_iters, damping", [(0, 0.0), (1, 0.0), (10, 0.0), (10, 0.15)])
def test_gwpr_matches_float64(n, dtype, num_iters, damping):
    gen = torch.Generator(device="cuda").manual_seed(n)
    batch = 3 if n <= 1000 else 2
    amap = _map(batch, n, dtype, "random", gen)
    out = torch.full((batch, n), float("nan"), device="cuda")  # poisoned: every score must be written
    got = _cuda_module().gwpr_cuda(amap, num_iters, damping, out=out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == torch.float32
    want = _gwpr_float64(amap, num_iters, damping)
    if num_iters == 0:
        assert torch.equal(got, torch.full_like(got, 1.0 / n))
    # Map values are exact in float64, so only the kernel's float32 sums differ.
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)
    torch.testing.assert_close(got, gwpr_reference(amap, num_iters, damping), rtol=1e-5, atol=atol)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gwpr_is_deterministic_and_batch_independent(dtype):
    # N = 4096, B = 2 at fp16 is the SD-XL shape (64 MiB of map: batch rows run one after the other on an H100).
    gen = torch.Generator(device="cuda").manual_seed(1)
    amap = _map(2, 4096, dtype, "random", gen)
    first = atedm_kernels.gwpr(amap, 10, 0.1, backend="cuda")
    second = atedm_kernels.gwpr(amap, 10, 0.1, backend="cuda")
    assert torch.equal(first, second)
    for b in range(2):
        assert torch.equal(atedm_kernels.gwpr(amap[b : b + 1], 10, 0.1, backend="cuda")[0], first[b])


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gwpr_unaligned_and_strided_maps(dtype):
    gen = torch.Generator(device="cuda").manual_seed(2)
    amap = _map(2, 1024, dtype, "random", gen)
    want = atedm_kernels.gwpr(amap, 5, backend="cuda")
    # One element of offset: the base address is not 16-byte aligned, so the scalar-load path runs; it sums in the
    # same order, hence bitwise equal.
    storage = torch.empty(amap.numel() + 1, dtype=dtype, device="cuda")
    shifted = storage[1:].view_as(amap)
    shifted.copy_(amap)
    assert torch.equal(atedm_kernels.gwpr(shifted, 5, backend="cuda"), want)
    # A transposed view is made contiguous by the wrapper.
    transposed = amap.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(atedm_kernels.gwpr(transposed, 5, backend="cuda"), want)


def _scores(batch: int, n: int, dtype: torch.dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "random":
        s = torch.randn(batch, n, generator=gen, device="cuda")
    elif kind == "constant":
        s = torch.full((batch, n), 0.25, device="cuda")
    elif kind == "quantised":
        s = torch.randint(0, 3, (batch, n), generator=gen, device="cuda").float() / 2
    else:  # "special": NaN of both signs, infinities and signed zeros among random values
        s = torch.randn(batch, n, generator=gen, device="cuda")
        pick = torch.rand(batch, n, generator=gen, device="cuda")
        s = torch.where(pick < 0.1, float("nan"), s)
        s = torch.where((pick >= 0.1) & (pick < 0.15), -torch.tensor(float("nan"), device="cuda"), s)
        s = torch.where((pick >= 0.15) & (pick < 0.2), float("inf"), s)
        s = torch.where((pick >= 0.2) & (pick < 0.25), float("-inf"), s)
        s = torch.where((pick >= 0.25) & (pick < 0.35), 0.0, s)
        s = torch.where((pick >= 0.35) & (pick < 0.45), -0.0, s)
    return s.to(dtype)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "constant", "quantised", "special"])
@pytest.mark.parametrize("n", ODD_N + (16384,))
def test_select_tokens_matches_reference(n, kind, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n)
    batch = 8 if n <= 1000 else 2
    scores = _scores(batch, n, dtype, kind, gen)
    for keep in sorted({1, max(1, round(0.37 * n)), max(1, n - 1), n}):
        keep_out = torch.full((batch, keep), -1, dtype=torch.int64, device="cuda")
        prune_out = torch.full((batch, n - keep), -1, dtype=torch.int64, device="cuda")
        keep_idx, prune_idx = _cuda_module().select_tokens_cuda(scores, keep, out=(keep_out, prune_out))
        want_keep, want_prune = select_tokens_reference(scores.cpu(), keep)
        assert torch.equal(keep_idx.cpu(), want_keep), (n, keep, kind)
        assert torch.equal(prune_idx.cpu(), want_prune), (n, keep, kind)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "dup_cols", "dup_rows", "quantised", "constant"])
@pytest.mark.parametrize("n", ODD_N)
def test_similarity_sources_matches_reference(n, kind, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n + 17)
    batch = 8 if n <= 100 else 2
    amap = _map(batch, n, dtype, kind, gen)
    scores = torch.rand(batch, n, generator=gen, device="cuda")
    for keep in sorted({1, max(1, round(0.37 * n)), n}):
        keep_idx, prune_idx = _split(scores, keep)
        out = torch.full((batch, n - keep), -1, dtype=torch.int64, device="cuda")
        src = _cuda_module().similarity_sources_cuda(amap, keep_idx, prune_idx, out=out)
        want = similarity_sources_reference(amap.cpu(), keep_idx.cpu(), prune_idx.cpu())
        assert torch.equal(src.cpu(), want), (n, keep, kind)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3, 8, 77, 640, 1280])
@pytest.mark.parametrize("n", (1, 7, 100, 1000))
def test_gather_and_recover_match_reference(n, channels, dtype):
    gen = torch.Generator(device="cuda").manual_seed(n * channels)
    batch = 8 if n <= 100 else 2
    cuda = _cuda_module()
    x = torch.randn(batch, n, channels, generator=gen, device="cuda").to(dtype)
    scores = torch.rand(batch, n, generator=gen, device="cuda")
    for keep in sorted({1, max(1, round(0.37 * n)), n}):
        keep_idx, prune_idx = _split(scores, keep)
        poison = torch.full((batch, keep, channels), float("nan"), dtype=dtype, device="cuda")
        x_kept = cuda.gather_tokens_cuda(x, keep_idx, out=poison)
        assert torch.equal(x_kept, gather_tokens_reference(x, keep_idx))
        src = torch.randint(0, keep, (batch, n - keep), generator=gen, device="cuda")
        poison = torch.full((batch, n, channels), float("nan"), dtype=dtype, device="cuda")
        out = cuda.recover_tokens_cuda(x_kept, keep_idx, prune_idx, src, out=poison)
        assert torch.equal(out, recover_tokens_reference(x_kept, keep_idx, prune_idx, src))


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_copies_with_unaligned_and_strided_inputs(dtype):
    gen = torch.Generator(device="cuda").manual_seed(3)
    n, channels, keep = 300, 64, 111
    x = torch.randn(2, n, channels, generator=gen, device="cuda").to(dtype)
    keep_idx, prune_idx = _split(torch.rand(2, n, generator=gen, device="cuda"), keep)
    storage = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
    shifted = storage[1:].view_as(x)  # base address off 16-byte alignment: narrower words
    shifted.copy_(x)
    want = gather_tokens_reference(x, keep_idx)
    assert torch.equal(atedm_kernels.gather_tokens(shifted, keep_idx, backend="cuda"), want)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous view
    assert torch.equal(atedm_kernels.gather_tokens(strided, keep_idx, backend="cuda"), want)
    src = torch.randint(0, keep, prune_idx.shape, generator=gen, device="cuda")
    kept = want[:, :, 1:]  # rows of 63 elements: odd pitch, narrowest words
    assert torch.equal(
        atedm_kernels.recover_tokens(kept, keep_idx, prune_idx, src, backend="cuda"),
        recover_tokens_reference(kept, keep_idx, prune_idx, src),
    )


@gpu
@needs_gpu
def test_out_of_range_indices_are_skipped():
    cuda = _cuda_module()
    x = torch.randn(1, 10, 8, device="cuda")
    idx = torch.tensor([[3, -1, 10, 9]], device="cuda")
    out = cuda.gather_tokens_cuda(x, idx, out=torch.full((1, 4, 8), float("nan"), device="cuda"))
    assert torch.equal(out[0, 0], x[0, 3]) and torch.equal(out[0, 3], x[0, 9])
    assert out[0, 1:3].isnan().all()  # skipped rows keep the buffer's contents
    keep_idx = torch.tensor([[0, 2, 99]], device="cuda")
    prune_idx = torch.tensor([[1, 3, 4, 5, 6, 7, 8]], device="cuda")
    src = torch.tensor([[0, 1, 2, 3, -1, 0, 1]], device="cuda")
    x_kept = torch.randn(1, 3, 8, device="cuda")
    poison = torch.full((1, 10, 8), float("nan"), device="cuda")
    out = cuda.recover_tokens_cuda(x_kept, keep_idx, prune_idx, src, out=poison)
    assert torch.equal(out[0, 0], x_kept[0, 0]) and torch.equal(out[0, 2], x_kept[0, 1])
    assert torch.equal(out[0, 1], x_kept[0, 0]) and torch.equal(out[0, 3], x_kept[0, 1])
    assert torch.equal(out[0, 4], x_kept[0, 2]) and torch.equal(out[0, 7], x_kept[0, 0])
    assert out[0, 5].isnan().all() and out[0, 6].isnan().all() and out[0, 9].isnan().all()


@gpu
@needs_gpu
def test_ops_dispatch_to_the_extension():
    amap = torch.softmax(torch.randn(2, 50, 50, device="cuda"), -1).half()
    scores = atedm_kernels.gwpr(amap, 4)  # "auto" on CUDA tensors picks the extension
    assert torch.equal(scores, atedm_kernels.gwpr(amap, 4, backend="cuda"))
    keep_idx, prune_idx = atedm_kernels.select_tokens(scores, 20)
    src = atedm_kernels.similarity_sources(amap, keep_idx, prune_idx)
    x = torch.randn(2, 50, 16, device="cuda")
    x_kept = atedm_kernels.gather_tokens(x, keep_idx)
    out = atedm_kernels.recover_tokens(x_kept, keep_idx, prune_idx, src)
    assert torch.equal(x_kept, gather_tokens_reference(x, keep_idx))
    assert torch.equal(out, recover_tokens_reference(x_kept, keep_idx, prune_idx, src))
    assert torch.equal(keep_idx, select_tokens_reference(scores.cpu(), 20)[0].cuda())
    assert torch.equal(src, similarity_sources_reference(amap, keep_idx, prune_idx))


# ----------------------------------------------------------------------------------------------------------------
# GPU: compute-sanitizer
# ----------------------------------------------------------------------------------------------------------------

_SANITIZER_SCRIPT = textwrap.dedent(
    """
    import torch
    import atedm_kernels as ak

    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for n, channels in ((1, 3), (7, 5), (100, 8), (1000, 77), (1025, 640)):
            amap = torch.softmax(torch.randn(3, n, n, device="cuda"), -1).to(dtype)
            keep = max(1, round(0.37 * n))
            scores = ak.gwpr(amap, 3, 0.1, backend="cuda")
            keep_idx, prune_idx = ak.select_tokens(scores.to(dtype), keep, backend="cuda")
            src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="cuda")
            x = torch.randn(3, n, channels, device="cuda").to(dtype)
            x_kept = ak.gather_tokens(x, keep_idx, backend="cuda")
            ak.recover_tokens(x_kept, keep_idx, prune_idx, src, backend="cuda")
            ak.select_tokens(torch.zeros(3, n, device="cuda"), n, backend="cuda")
        # out-of-range indices must be skipped, never dereferenced
        x = torch.randn(2, 10, 6, device="cuda").to(dtype)
        bad = torch.tensor([[0, -5, 10, 3], [12, 9, -1, 2]], device="cuda")
        ak.gather_tokens(x, bad, backend="cuda")
        ak.recover_tokens(x[:, :4], bad, torch.tensor([[1, 2, 4, 5, 6, 7], [0, 1, 3, 4, 5, 6]], device="cuda"),
                          torch.tensor([[0, 9, -1, 1, 2, 3], [3, 4, 0, 1, 2, 3]], device="cuda"), backend="cuda")
    torch.cuda.synchronize()
    print("sanitizer script done")
    """
)


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found is None and Path("/usr/local/cuda/bin/compute-sanitizer").is_file():
        found = "/usr/local/cuda/bin/compute-sanitizer"
    return found


@gpu
@needs_gpu
@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer not found")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool, tmp_path):
    sanitizer = _sanitizer()
    script = tmp_path / "exercise_kernels.py"
    script.write_text(_SANITIZER_SCRIPT)
    command = [sanitizer, "--tool", tool, "--error-exitcode", "1"]
    help_text = subprocess.run([sanitizer, "--help"], capture_output=True, text=True).stdout
    if "--kernel-name" in help_text:  # check only this package's kernels (namespace atedm), not torch's
        command += ["--kernel-name", "kns=atedm"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        command + [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "sanitizer script done" in log
    assert not re.search(r"ERROR SUMMARY: [1-9]", log), log[-6000:]
    assert not re.search(r"RACECHECK SUMMARY: [1-9]", log), log[-6000:]
