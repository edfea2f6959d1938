"""Tests of the CUDA kernels of ``csrc/`` and their wrappers.

The kernel cases run on two builds of the same sources:

- ``emulated``: the CPU test build of ``tests/cuda_host`` (the unmodified kernels and launchers compiled by the host
  C++ compiler, blocks run one after another, threads as fibers, ``__syncthreads()`` and warp intrinsics as real
  exchanges) on CPU tensors. Always runs where a C++ compiler exists; at CPU-friendly sizes plus the SD-XL sizes
  (N = 4096 and 1024) once per launcher.
- ``gpu``: the nvcc-built ``atedm_kernels._C`` on a CUDA GPU (marker ``gpu``), at the full sizes, plus the dispatcher
  and compute-sanitizer runs.

Every kernel is judged on fresh random inputs, odd sizes, ties, poisoned (NaN/-1 filled) outputs and every storage
dtype: ``gwpr`` against float64, the exact ops against their references and, at small sizes, ``tests/brute_force.py``.
The launchers' argument checks run against both extensions; the build, module surface and dispatcher checks on CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
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

from . import brute_force
from .cuda_host.build import build, compiler
from .cuda_host.extension import HostExtension
from .cuda_host.kernels import HostKernels

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


@pytest.fixture(scope="session")
def host_extension():
    """The CPU test build of csrc/ (compiled on first use, cached under build/cuda_host/); a sanitizer build when
    ATEDM_CUDA_HOST_SANITIZER names one (python -m tests.cuda_host.sanitize sets it)."""
    if compiler() is None:
        pytest.skip("no C++ compiler ($CXX or g++): the CPU test build of csrc/ cannot be made")
    return HostExtension(build(os.environ.get("ATEDM_CUDA_HOST_SANITIZER") or None))


@pytest.fixture(params=["nvcc", "emulated"])
def ext(request):
    """The launchers of each build: atedm_kernels._C (nvcc) and the CPU test build; same calls, same errors."""
    if request.param == "nvcc":
        if _C is None:
            pytest.skip("atedm_kernels._C is not built")
        return _C
    return request.getfixturevalue("host_extension")


@dataclass
class Target:
    """Where the kernel cases run: ``device`` of the tensors, ``kernels`` the wrappers (gwpr_cuda, ...)."""

    device: str
    kernels: object


@pytest.fixture
def target(request):
    if request.param == "gpu":
        from atedm_kernels.kernels import cuda

        return Target("cuda", cuda)
    return Target("cpu", HostKernels(request.getfixturevalue("host_extension")))


def _case_id(target: str, case: tuple) -> str:
    return "-".join([target, *(str(v).removeprefix("torch.") for v in case)])


def _on_targets(emulated: list[tuple], on_gpu: list[tuple]) -> list:
    """Parameters (target first, indirect) of the emulated cases and the GPU cases."""
    return [pytest.param("emulated", *case, id=_case_id("emulated", case)) for case in emulated] + [
        pytest.param("gpu", *case, marks=(gpu, needs_gpu), id=_case_id("gpu", case)) for case in on_gpu
    ]


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


def test_every_launcher_is_bound(ext):
    for name in LAUNCHERS:
        assert callable(getattr(ext, name)), name
    assert not hasattr(ext, "iota_int64"), "the smoke launcher must be gone once real kernels exist"


# Each call has one bad argument and otherwise plausible values; it must raise before any CUDA call.
_BAD_CALLS = {
    "gwpr batch<0": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, -1, 8, 2, 0.0, 0, 0),
    "gwpr n<0": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, -8, 2, 0.0, 0, 0),
    "gwpr num_iters<0": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, -1, 0.0, 0, 0),
    "gwpr damping>1": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 1.5, 0, 0),
    "gwpr damping nan": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, float("nan"), 0, 0),
    "gwpr dtype code": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 0.0, 3, 0),
    "gwpr workspace too small": lambda C: C.gwpr(FAKE_PTR, FAKE_PTR, FAKE_PTR, 0, 1, 8, 2, 0.0, 0, 0),
    "gwpr null amap": lambda C: C.gwpr(0, FAKE_PTR, FAKE_PTR, 1 << 20, 1, 8, 2, 0.0, 0, 0),
    "workspace batch<0": lambda C: C.gwpr_workspace_floats(-1, 8, 0),
    "workspace dtype code": lambda C: C.gwpr_workspace_floats(1, 8, 5),
    "select keep=0": lambda C: C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 0, 2, 0),
    "select keep>n": lambda C: C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 11, 2, 0),
    "select n=0": lambda C: C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 0, 1, 2, 0),
    "select batch<0": lambda C: C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, -2, 10, 3, 2, 0),
    "select dtype code": lambda C: C.select_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 2, 10, 3, -1, 0),
    "select null keep_idx": lambda C: C.select_tokens(FAKE_PTR, 0, FAKE_PTR, 2, 10, 3, 2, 0),
    "sources keep=0": lambda C: C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 0, 0, 0),
    "sources keep>n": lambda C: C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 12, 0, 0),
    "sources batch<0": lambda C: C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, -1, 10, 3, 0, 0),
    "sources dtype code": lambda C: C.similarity_sources(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 9, 0),
    "gather channels<0": lambda C: C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, -4, 0, 0),
    "gather k<0": lambda C: C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, -3, 4, 0, 0),
    "gather dtype code": lambda C: C.gather_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 4, 3, 0),
    "gather null out": lambda C: C.gather_tokens(FAKE_PTR, FAKE_PTR, 0, 1, 10, 3, 4, 0, 0),
    "recover keep=0": lambda C: C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 0, 4, 0, 0),
    "recover keep>n": lambda C: C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 11, 4, 0, 0),
    "recover n=0": lambda C: C.recover_tokens(FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 0, 1, 4, 0, 0),
    "recover channels<0": lambda C: C.recover_tokens(
        FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, -4, 0, 0
    ),
    "recover dtype code": lambda C: C.recover_tokens(
        FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, FAKE_PTR, 1, 10, 3, 4, 4, 0
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
def test_launchers_reject_bad_arguments_before_the_gpu(case, ext):
    with pytest.raises(ValueError, match="atedm_kernels._C"):
        _BAD_CALLS[case](ext)


def test_empty_problems_launch_nothing(ext):
    # Null pointers are fine when nothing is touched, and no CUDA call is made (this runs without a GPU).
    assert ext.gwpr(0, 0, 0, 0, 0, 16, 3, 0.0, 0, 0) is None
    assert ext.gwpr(0, 0, 0, 0, 4, 0, 3, 0.0, 0, 0) is None
    assert ext.select_tokens(0, 0, 0, 0, 16, 4, 2, 0) is None
    assert ext.similarity_sources(0, 0, 0, 0, 3, 16, 16, 1, 0) is None  # keep == n: nothing pruned
    assert ext.gather_tokens(0, 0, 0, 2, 16, 0, 8, 0, 0) is None
    assert ext.gather_tokens(0, 0, 0, 2, 16, 4, 0, 0, 0) is None
    assert ext.recover_tokens(0, 0, 0, 0, 0, 0, 16, 4, 8, 2, 0) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, n", [(1, 1), (2, 7), (3, 1000), (2, 4096)])
def test_gwpr_workspace_is_two_partial_buffers(batch, n, dtype, ext):
    floats = ext.gwpr_workspace_floats(batch, n, CODES[dtype])
    assert floats % (2 * batch * n) == 0
    assert 1 <= floats // (2 * batch * n) <= n  # row splits S
    assert ext.gwpr_workspace_floats(0, n, CODES[dtype]) == 0


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
    # gwpr on CPU tensors runs the cpu kernel where it exists: its sums in float64, the reference's in float32
    torch.testing.assert_close(calls["gwpr"](), gwpr_reference(amap, 3, 0.0), rtol=1e-6, atol=0)
    for got, want in zip(calls["select_tokens"](), (keep_idx, prune_idx)):
        assert torch.equal(got, want)
    assert torch.equal(calls["similarity_sources"](), src)
    assert torch.equal(calls["gather_tokens"](), x_kept)
    assert torch.equal(calls["recover_tokens"](), recover_tokens_reference(x_kept, keep_idx, prune_idx, src))


# ----------------------------------------------------------------------------------------------------------------
# Kernels against float64 and the references: the CPU test build ("emulated") and a GPU ("gpu")
# ----------------------------------------------------------------------------------------------------------------

ODD_N = (1, 7, 100, 1000, 4097)  # on a GPU
HOST_N = (1, 7, 100, 1000)  # in the CPU test build; the SD-XL sizes 4096 and 1024 are added per launcher
BRUTE_FORCE_N = 100  # largest N also checked against tests/brute_force.py (Python loops)


def _map(batch: int, n: int, dtype: torch.dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A [B, N, N] map on the generator's device: a row-softmax of random logits, or one with planted ties."""
    device = gen.device
    logits = torch.randn(batch, n, n, generator=gen, device=device)
    amap = torch.softmax(logits, dim=-1)
    if kind == "dup_cols":  # every column copies one of 3: ties along the kept rows of each pruned column
        amap = amap[:, :, torch.arange(n, device=device) % min(n, 3)]
    elif kind == "dup_rows":  # every row copies one of 3: ties between kept rows
        amap = amap[:, torch.arange(n, device=device) % min(n, 3), :]
    elif kind == "quantised":  # four levels
        amap = torch.floor(amap * n * 2).clamp(max=3) / 4
    elif kind == "constant":
        amap = torch.full_like(amap, 1.0 / n)
    return amap.to(dtype).contiguous()


def _split(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep_idx, prune_idx = select_tokens_reference(scores.cpu(), keep)
    return keep_idx.to(scores.device), prune_idx.to(scores.device)


def _keeps(n: int) -> list[int]:
    return sorted({1, max(1, round(0.37 * n)), n})


def _gwpr_float64(amap: torch.Tensor, num_iters: int, damping: float) -> torch.Tensor:
    batch, n, _ = amap.shape
    weights = amap.double()
    s = torch.full((batch, n), 1.0 / n, dtype=torch.float64, device=amap.device)
    for _ in range(num_iters):
        s = (1.0 - damping) * torch.bmm(s.unsqueeze(1), weights).squeeze(1) + damping / n
    return s


def _assert_gwpr_close(got: torch.Tensor, amap: torch.Tensor, num_iters: int, damping: float) -> None:
    # Map values are exact in float64, so only the kernel's float32 sums differ.
    want = _gwpr_float64(amap, num_iters, damping)
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=atol)


_ITERS = [(1, 0.0), (10, 0.0), (10, 0.15)]


@pytest.mark.parametrize(
    "target, n, dtype, num_iters, damping",
    _on_targets(
        [(n, d, t, dmp) for n in HOST_N for d in DTYPES for t, dmp in _ITERS]
        + [(4096, torch.float16, 10, 0.0), (1024, torch.bfloat16, 10, 0.15), (1024, torch.float32, 10, 0.0)],
        [(n, d, t, dmp) for n in ODD_N for d in DTYPES for t, dmp in _ITERS],
    ),
    indirect=["target"],
)
def test_gwpr_matches_float64(target, n, dtype, num_iters, damping):
    gen = torch.Generator(device=target.device).manual_seed(n)
    batch = 3 if n <= 1000 else 2
    amap = _map(batch, n, dtype, "random", gen)
    out = torch.full((batch, n), float("nan"), device=target.device)  # poisoned: every score must be written
    got = target.kernels.gwpr_cuda(amap, num_iters, damping, out=out)
    assert got.data_ptr() == out.data_ptr() and got.dtype == torch.float32
    _assert_gwpr_close(got, amap, num_iters, damping)


@pytest.mark.parametrize(
    "target, n, dtype, kind",
    _on_targets(
        [(n, d, k) for n in (100, 1000) for d in DTYPES for k in ("constant", "quantised", "dup_rows")],
        [(n, d, k) for n in (100, 4096) for d in DTYPES for k in ("constant", "quantised", "dup_rows")],
    ),
    indirect=["target"],
)
def test_gwpr_on_tied_maps_matches_float64(target, n, dtype, kind):
    # Constant maps are where a float32 reference drifts (~3e-5): the kernel must stay at float32 rounding of
    # float64.
    gen = torch.Generator(device=target.device).manual_seed(n + 1)
    amap = _map(2, n, dtype, kind, gen)
    got = target.kernels.gwpr_cuda(amap, 10, 0.05, out=torch.full((2, n), float("nan"), device=target.device))
    _assert_gwpr_close(got, amap, 10, 0.05)


@pytest.mark.parametrize(
    "target, n, dtype, num_iters",
    _on_targets(
        [(4096, torch.float16, 3), (1024, torch.float32, 10), (1024, torch.bfloat16, 10)],
        [(4096, d, 10) for d in DTYPES],
    ),
    indirect=["target"],
)
def test_gwpr_is_deterministic_and_batch_independent(target, n, dtype, num_iters):
    # N = 4096, B = 2 at fp16 is the SD-XL shape (64 MiB of map: batch rows run one after the other with an H100's
    # L2, which the CPU test build models); at N = 1024 both rows run in one launch.
    gen = torch.Generator(device=target.device).manual_seed(1)
    amap = _map(2, n, dtype, "random", gen)
    first = target.kernels.gwpr_cuda(amap, num_iters, 0.1)
    second = target.kernels.gwpr_cuda(amap, num_iters, 0.1)
    assert torch.equal(first, second)
    for b in range(2):
        assert torch.equal(target.kernels.gwpr_cuda(amap[b : b + 1], num_iters, 0.1)[0], first[b])


@pytest.mark.parametrize("target, dtype", _on_targets([(d,) for d in DTYPES], [(d,) for d in DTYPES]),
                         indirect=["target"])
def test_gwpr_unaligned_and_strided_maps(target, dtype):
    gen = torch.Generator(device=target.device).manual_seed(2)
    amap = _map(2, 1024, dtype, "random", gen)
    want = target.kernels.gwpr_cuda(amap, 5, 0.0)
    # One element of offset: the base address is not 16-byte aligned, so the scalar-load path runs; it sums in the
    # same order, hence bitwise equal.
    storage = torch.empty(amap.numel() + 1, dtype=dtype, device=target.device)
    shifted = storage[1:].view_as(amap)
    shifted.copy_(amap)
    assert torch.equal(target.kernels.gwpr_cuda(shifted, 5, 0.0), want)
    # A transposed view is made contiguous by the wrapper.
    transposed = amap.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(target.kernels.gwpr_cuda(transposed, 5, 0.0), want)
    _assert_gwpr_close(want, amap, 5, 0.0)


def _scores(batch: int, n: int, dtype: torch.dtype, kind: str, gen: torch.Generator) -> torch.Tensor:
    device = gen.device
    if kind == "random":
        s = torch.randn(batch, n, generator=gen, device=device)
    elif kind == "constant":
        s = torch.full((batch, n), 0.25, device=device)
    elif kind == "quantised":
        s = torch.randint(0, 3, (batch, n), generator=gen, device=device).float() / 2
    else:  # "special": NaN of both signs, infinities and signed zeros among random values
        s = torch.randn(batch, n, generator=gen, device=device)
        pick = torch.rand(batch, n, generator=gen, device=device)
        s = torch.where(pick < 0.1, float("nan"), s)
        s = torch.where((pick >= 0.1) & (pick < 0.15), -torch.tensor(float("nan"), device=device), s)
        s = torch.where((pick >= 0.15) & (pick < 0.2), float("inf"), s)
        s = torch.where((pick >= 0.2) & (pick < 0.25), float("-inf"), s)
        s = torch.where((pick >= 0.25) & (pick < 0.35), 0.0, s)
        s = torch.where((pick >= 0.35) & (pick < 0.45), -0.0, s)
    return s.to(dtype)


_SCORE_KINDS = ("random", "constant", "quantised", "special")


@pytest.mark.parametrize(
    "target, n, kind, dtype",
    _on_targets(
        [(n, k, d) for n in HOST_N + (1024, 4096) for k in _SCORE_KINDS for d in DTYPES],
        [(n, k, d) for n in ODD_N + (16384,) for k in _SCORE_KINDS for d in DTYPES],
    ),
    indirect=["target"],
)
def test_select_tokens_matches_reference(target, n, kind, dtype):
    gen = torch.Generator(device=target.device).manual_seed(n)
    batch = 8 if n <= 1000 else 2
    scores = _scores(batch, n, dtype, kind, gen)
    for keep in sorted({1, max(1, round(0.37 * n)), max(1, n - 1), n}):
        keep_out = torch.full((batch, keep), -1, dtype=torch.int64, device=target.device)
        prune_out = torch.full((batch, n - keep), -1, dtype=torch.int64, device=target.device)
        keep_idx, prune_idx = target.kernels.select_tokens_cuda(scores, keep, out=(keep_out, prune_out))
        want_keep, want_prune = select_tokens_reference(scores.cpu(), keep)
        assert torch.equal(keep_idx.cpu(), want_keep), (n, keep, kind)
        assert torch.equal(prune_idx.cpu(), want_prune), (n, keep, kind)
        if n <= BRUTE_FORCE_N and kind != "special":  # the brute force ranks with Python's NaN-blind comparisons
            brute_keep, brute_prune = brute_force.select_tokens(scores.cpu(), keep)
            assert torch.equal(keep_idx.cpu(), brute_keep) and torch.equal(prune_idx.cpu(), brute_prune)


_MAP_KINDS = ("random", "dup_cols", "dup_rows", "quantised", "constant")


@pytest.mark.parametrize(
    "target, n, kind, dtype",
    _on_targets(
        [(n, k, d) for n in HOST_N for k in _MAP_KINDS for d in DTYPES]
        + [(4096, "random", torch.float16), (1024, "dup_rows", torch.bfloat16), (1024, "random", torch.float32)],
        [(n, k, d) for n in ODD_N for k in _MAP_KINDS for d in DTYPES],
    ),
    indirect=["target"],
)
def test_similarity_sources_matches_reference(target, n, kind, dtype):
    gen = torch.Generator(device=target.device).manual_seed(n + 17)
    batch = 8 if n <= 100 else 2
    amap = _map(batch, n, dtype, kind, gen)
    scores = torch.rand(batch, n, generator=gen, device=target.device)
    for keep in _keeps(n):
        keep_idx, prune_idx = _split(scores, keep)
        out = torch.full((batch, n - keep), -1, dtype=torch.int64, device=target.device)
        src = target.kernels.similarity_sources_cuda(amap, keep_idx, prune_idx, out=out)
        want = similarity_sources_reference(amap.cpu(), keep_idx.cpu(), prune_idx.cpu())
        assert torch.equal(src.cpu(), want), (n, keep, kind)
        if n <= BRUTE_FORCE_N and keep < n:
            assert torch.equal(src.cpu(), brute_force.similarity_sources(amap.cpu(), keep_idx.cpu(), prune_idx.cpu()))


_CHANNELS = (1, 3, 8, 77, 640, 1280)


@pytest.mark.parametrize(
    "target, n, channels, dtype",
    _on_targets(
        [(n, c, d) for n in HOST_N for c in _CHANNELS for d in DTYPES]
        + [(4096, 640, torch.float16), (1024, 1280, torch.bfloat16), (1024, 1280, torch.float32)],
        [(n, c, d) for n in (1, 7, 100, 1000) for c in _CHANNELS for d in DTYPES],
    ),
    indirect=["target"],
)
def test_gather_and_recover_match_reference(target, n, channels, dtype):
    gen = torch.Generator(device=target.device).manual_seed(n * channels)
    batch = 8 if n <= 100 else 2
    kernels = target.kernels
    x = torch.randn(batch, n, channels, generator=gen, device=target.device).to(dtype)
    scores = torch.rand(batch, n, generator=gen, device=target.device)
    for keep in _keeps(n):
        keep_idx, prune_idx = _split(scores, keep)
        poison = torch.full((batch, keep, channels), float("nan"), dtype=dtype, device=target.device)
        x_kept = kernels.gather_tokens_cuda(x, keep_idx, out=poison)
        assert torch.equal(x_kept, gather_tokens_reference(x, keep_idx))
        src = torch.randint(0, keep, (batch, n - keep), generator=gen, device=target.device)
        poison = torch.full((batch, n, channels), float("nan"), dtype=dtype, device=target.device)
        out = kernels.recover_tokens_cuda(x_kept, keep_idx, prune_idx, src, out=poison)
        assert torch.equal(out, recover_tokens_reference(x_kept, keep_idx, prune_idx, src))
        if n <= BRUTE_FORCE_N and channels <= 77:
            assert torch.equal(x_kept.cpu(), brute_force.gather_tokens(x.cpu(), keep_idx.cpu()))
            brute = brute_force.recover_tokens(x_kept.cpu(), keep_idx.cpu(), prune_idx.cpu(), src.cpu())
            assert torch.equal(out.cpu(), brute)


@pytest.mark.parametrize("target, dtype", _on_targets([(d,) for d in DTYPES], [(d,) for d in DTYPES]),
                         indirect=["target"])
def test_copies_with_unaligned_and_strided_inputs(target, dtype):
    gen = torch.Generator(device=target.device).manual_seed(3)
    kernels = target.kernels
    n, channels, keep = 300, 64, 111
    x = torch.randn(2, n, channels, generator=gen, device=target.device).to(dtype)
    keep_idx, prune_idx = _split(torch.rand(2, n, generator=gen, device=target.device), keep)
    storage = torch.empty(x.numel() + 1, dtype=dtype, device=target.device)
    shifted = storage[1:].view_as(x)  # base address off 16-byte alignment: narrower words
    shifted.copy_(x)
    want = gather_tokens_reference(x, keep_idx)
    assert torch.equal(kernels.gather_tokens_cuda(shifted, keep_idx), want)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous view
    assert torch.equal(kernels.gather_tokens_cuda(strided, keep_idx), want)
    src = torch.randint(0, keep, prune_idx.shape, generator=gen, device=target.device)
    kept = want[:, :, 1:]  # rows of 63 elements: odd pitch, narrowest words
    assert torch.equal(
        kernels.recover_tokens_cuda(kept, keep_idx, prune_idx, src),
        recover_tokens_reference(kept, keep_idx, prune_idx, src),
    )


@pytest.mark.parametrize("target", _on_targets([()], [()]), indirect=True)
def test_out_of_range_indices_are_skipped(target):
    kernels, device = target.kernels, target.device
    x = torch.randn(1, 10, 8, device=device)
    idx = torch.tensor([[3, -1, 10, 9]], device=device)
    out = kernels.gather_tokens_cuda(x, idx, out=torch.full((1, 4, 8), float("nan"), device=device))
    assert torch.equal(out[0, 0], x[0, 3]) and torch.equal(out[0, 3], x[0, 9])
    assert out[0, 1:3].isnan().all()  # skipped rows keep the buffer's contents
    keep_idx = torch.tensor([[0, 2, 99]], device=device)
    prune_idx = torch.tensor([[1, 3, 4, 5, 6, 7, 8]], device=device)
    src = torch.tensor([[0, 1, 2, 3, -1, 0, 1]], device=device)
    x_kept = torch.randn(1, 3, 8, device=device)
    poison = torch.full((1, 10, 8), float("nan"), device=device)
    out = kernels.recover_tokens_cuda(x_kept, keep_idx, prune_idx, src, out=poison)
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

SANITIZER_WORKLOAD = ROOT / "tests" / "cuda_sanitizer_workload.py"


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found is None and Path("/usr/local/cuda/bin/compute-sanitizer").is_file():
        found = "/usr/local/cuda/bin/compute-sanitizer"
    return found


@gpu
@needs_gpu
@pytest.mark.skipif(_sanitizer() is None, reason="compute-sanitizer not found")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
def test_compute_sanitizer(tool):
    sanitizer = _sanitizer()
    command = [sanitizer, "--tool", tool, "--error-exitcode", "1"]
    help_text = subprocess.run([sanitizer, "--help"], capture_output=True, text=True).stdout
    if "--kernel-name" in help_text:  # check only this package's kernels (namespace atedm), not torch's
        command += ["--kernel-name", "kns=atedm"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        command + [sys.executable, str(SANITIZER_WORKLOAD)], capture_output=True, text=True, env=env, timeout=900
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "sanitizer workload done" in log
    assert not re.search(r"ERROR SUMMARY: [1-9]", log), log[-6000:]
    assert not re.search(r"RACECHECK SUMMARY: [1-9]", log), log[-6000:]
