"""G-WPR and similarity sources for CPU tensors.

On a CPU that runs ``atedm_kernels._cpu`` (see :func:`.cpu_attention.native_available`) both are its C++ kernels
(``csrc/cpu/pruning.cpp``: the map read in its own dtype, G-WPR's sums in float64, one batch element per thread).
Otherwise, plain PyTorch, one batch element at a time, as matrix-vector products:

``gwpr``: ``s_0 = 1/N``, ``s_{t+1} = (1 - d) A_b^T s_t + d/N`` for each batch element ``b``. The reference's
``bmm([B, 1, N], [B, N, N])`` takes a general batched-GEMM path that on CPU ran 30x slower than the GEMV
``A_b^T s`` used here at N=1024 (1.6x at N=4096); the map is read ``num_iters`` times either way
(``2 N^2`` FLOPs and ``4 N^2`` bytes per iteration in float32), so this is memory-bound at the map's size.

``similarity_sources``: ``src[b, m] = argmax_j A[b, keep_idx[b, j], prune_idx[b, m]]`` (ties to the lowest ``j``,
NaN counts as -inf). One ``[K, N-K]`` block per batch element, gathered with ``index_select``, NaN replaced in
place, then ``argmax`` over ``j``, which returns the first maximal index.
"""

from __future__ import annotations

import torch

from .cpu_attention import native_available
from .dtype_codes import DTYPE_CODES
from .cpu_attention import _cpu  # None when not built


def _native(amap: torch.Tensor) -> bool:
    return amap.device.type == "cpu" and native_available()


def gwpr_cpu(amap: torch.Tensor, num_iters: int, damping: float) -> torch.Tensor:
    batch, n, _ = amap.shape
    if _native(amap):
        amap = amap.contiguous()
        scores = torch.empty(batch, n, dtype=torch.float32)  # [B, N]
        _cpu.gwpr(amap.data_ptr(), DTYPE_CODES[amap.dtype], scores.data_ptr(), batch, n, num_iters, float(damping),
                  torch.get_num_threads())
        return scores
    scores = torch.empty(batch, n, dtype=torch.float32, device=amap.device)  # [B, N]
    for b in range(batch):
        weights = amap[b].float()  # [N, N], converted once for all iterations
        s = torch.full((n,), 1.0 / n, dtype=torch.float32, device=amap.device)  # [N]
        for _ in range(num_iters):
            s = torch.mv(weights.t(), s)
            if damping:
                s = s.mul_(1.0 - damping).add_(damping / n)
        scores[b] = s
    return scores


def similarity_sources_cpu(
    amap: torch.Tensor,  # [B, N, N]
    keep_idx: torch.Tensor,  # [B, K]
    prune_idx: torch.Tensor,  # [B, N-K]
) -> torch.Tensor:
    batch, n, _ = amap.shape
    src = torch.empty_like(prune_idx)  # [B, N-K]
    if _native(amap):
        amap, keep_idx, prune_idx = amap.contiguous(), keep_idx.contiguous(), prune_idx.contiguous()
        _cpu.similarity_sources(amap.data_ptr(), DTYPE_CODES[amap.dtype], keep_idx.data_ptr(), prune_idx.data_ptr(),
                                src.data_ptr(), batch, n, keep_idx.shape[1], torch.get_num_threads())
        return src
    for b in range(batch):
        block = amap[b].index_select(0, keep_idx[b]).index_select(1, prune_idx[b]).float()  # [K, N-K]
        block.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        src[b] = block.argmax(dim=0)
    return src
