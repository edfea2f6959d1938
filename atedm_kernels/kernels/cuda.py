"""Launch wrappers of the CUDA extension ``atedm_kernels._C`` (the pruning path).

Shapes: B batch, N tokens, K kept tokens, C channels; ``elt`` is the element size of the floating-point input.

``gwpr_cuda``
    ``s_0 = 1/N``; ``s_{t+1}[j] = (1-d) * sum_i A[b,i,j] s_t[i] + d/N`` (float32 accumulation); returns ``s_T``
    [B, N] float32. Reads the map once per iteration: ``T*B*N*N*elt`` bytes, ``2*T*B*N*N`` FLOPs.
``select_tokens_cuda``
    keep_idx [B, K], prune_idx [B, N-K] (int64, ascending): the top-``keep`` scores, ties to the lower index.
    ``B*N*elt`` bytes read (five passes, four of them from cache), ``8*B*N`` written.
``similarity_sources_cuda``
    ``src[b,m] = argmax_j A[b, keep_idx[b,j], prune_idx[b,m]]``, ties to the lowest j. ``B*K*(N-K)*elt`` bytes
    compared, fetched in 32-byte sectors of the kept rows (about ``B*K*N*elt``); ``8*B*(N-K)`` written.
``gather_tokens_cuda``
    ``out[b,j] = x[b, idx[b,j]]`` -> [B, K, C]: ``2*B*K*C*elt`` bytes.
``recover_tokens_cuda``
    ``out[b, keep_idx[b,j]] = x_kept[b,j]``, ``out[b, prune_idx[b,m]] = x_kept[b, src[b,m]]`` -> [B, N, C]:
    ``2*B*N*C*elt`` bytes.

Exact semantics are those of :mod:`atedm_kernels.reference` (select, sources, gather and recover are bitwise equal
to it, NaN maps included; gwpr agrees to float32 rounding and is bitwise deterministic run to run). On inputs outside
the ops' contract, out-of-range indices are skipped by the copies instead of raising. Kernel designs are documented in ``csrc/*.cu``.

Each wrapper makes its tensor inputs contiguous (``.contiguous()``: a copy only for non-contiguous views), allocates
its outputs with ``torch.empty`` on the input's device (or checks and fills the preallocated ``out=`` tensors, which
must be contiguous, of the exact shape and dtype and on the same device), and launches on that device's current
stream. These wrappers are private: :mod:`atedm_kernels.ops` validates shapes, dtypes and devices before calling them; code
that calls them directly (the kernel benchmark, to time them without dispatch) must pass valid inputs.
"""

from __future__ import annotations

import torch

from .. import _C
from .dtype_codes import DTYPE_CODES


def _dtype_code(name: str, t: torch.Tensor) -> int:
    code = DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    return code


def _cuda_input(name: str, t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
        where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a CUDA tensor for the CUDA extension, got {where}")
    return t.contiguous()


def _output(name: str, out, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if (
        not isinstance(out, torch.Tensor)
        or tuple(out.shape) != shape
        or out.dtype != dtype
        or out.device != device
        or not out.is_contiguous()
    ):
        got = f"{tuple(out.shape)} {out.dtype} on {out.device}" if isinstance(out, torch.Tensor) else repr(out)
        raise ValueError(f"{name} must be a contiguous {dtype} tensor of shape {shape} on {device}, got {got}")
    return out


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def gwpr_cuda(amap: torch.Tensor, num_iters: int, damping: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """G-WPR scores [B, N] float32 of ``amap`` [B, N, N]; one launch per iteration plus a final write."""
    amap = _cuda_input("amap", amap)
    batch, n, _ = amap.shape
    code = _dtype_code("amap", amap)
    with torch.cuda.device(amap.device):
        scores = _output("out", out, (batch, n), torch.float32, amap.device)
        ws_floats = _C.gwpr_workspace_floats(batch, n, code) if num_iters > 0 else 0
        workspace = torch.empty(ws_floats, dtype=torch.float32, device=amap.device)
        _C.gwpr(
            amap.data_ptr(),
            scores.data_ptr(),
            workspace.data_ptr(),
            ws_floats,
            batch,
            n,
            num_iters,
            float(damping),
            code,
            _stream(amap.device),
        )
    return scores


def select_tokens_cuda(
    scores: torch.Tensor, keep: int, *, out: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep_idx [B, keep], prune_idx [B, N-keep])`` int64, ascending: the top-``keep`` scores, ties to the lower
    index. ``out``: optional preallocated ``(keep_idx, prune_idx)``."""
    scores = _cuda_input("scores", scores)
    batch, n = scores.shape
    code = _dtype_code("scores", scores)
    keep_out, prune_out = out if out is not None else (None, None)
    with torch.cuda.device(scores.device):
        keep_idx = _output("out[0] (keep_idx)", keep_out, (batch, keep), torch.int64, scores.device)
        prune_idx = _output("out[1] (prune_idx)", prune_out, (batch, n - keep), torch.int64, scores.device)
        _C.select_tokens(
            scores.data_ptr(), keep_idx.data_ptr(), prune_idx.data_ptr(), batch, n, keep, code, _stream(scores.device)
        )
    return keep_idx, prune_idx


def similarity_sources_cuda(
    amap: torch.Tensor, keep_idx: torch.Tensor, prune_idx: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``src [B, N-K]`` int64: for each pruned token, the position in ``keep_idx`` of the kept token attending to it
    most (ties to the lowest position)."""
    amap = _cuda_input("amap", amap)
    keep_idx = _cuda_input("keep_idx", keep_idx)
    prune_idx = _cuda_input("prune_idx", prune_idx)
    batch, n, _ = amap.shape
    keep = keep_idx.shape[1]
    code = _dtype_code("amap", amap)
    with torch.cuda.device(amap.device):
        src = _output("out", out, (batch, prune_idx.shape[1]), torch.int64, amap.device)
        _C.similarity_sources(
            amap.data_ptr(),
            keep_idx.data_ptr(),
            prune_idx.data_ptr(),
            src.data_ptr(),
            batch,
            n,
            keep,
            code,
            _stream(amap.device),
        )
    return src


def gather_tokens_cuda(x: torch.Tensor, idx: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, j] = x[b, idx[b, j]]``: x [B, N, C], idx [B, K] -> [B, K, C]."""
    x = _cuda_input("x", x)
    idx = _cuda_input("idx", idx)
    batch, n, channels = x.shape
    k = idx.shape[1]
    code = _dtype_code("x", x)
    with torch.cuda.device(x.device):
        result = _output("out", out, (batch, k, channels), x.dtype, x.device)
        _C.gather_tokens(
            x.data_ptr(), idx.data_ptr(), result.data_ptr(), batch, n, k, channels, code, _stream(x.device)
        )
    return result


def recover_tokens_cuda(
    x_kept: torch.Tensor,
    keep_idx: torch.Tensor,
    prune_idx: torch.Tensor,
    src: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, N, C]: kept tokens scattered back to ``keep_idx``, each pruned token a copy of ``x_kept[src]``."""
    x_kept = _cuda_input("x_kept", x_kept)
    keep_idx = _cuda_input("keep_idx", keep_idx)
    prune_idx = _cuda_input("prune_idx", prune_idx)
    src = _cuda_input("src", src)
    batch, keep, channels = x_kept.shape
    n = keep + prune_idx.shape[1]
    code = _dtype_code("x_kept", x_kept)
    with torch.cuda.device(x_kept.device):
        result = _output("out", out, (batch, n, channels), x_kept.dtype, x_kept.device)
        _C.recover_tokens(
            x_kept.data_ptr(),
            keep_idx.data_ptr(),
            prune_idx.data_ptr(),
            src.data_ptr(),
            result.data_ptr(),
            batch,
            n,
            keep,
            channels,
            code,
            _stream(x_kept.device),
        )
    return result
