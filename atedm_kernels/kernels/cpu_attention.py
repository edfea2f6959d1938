"""Attention with the head-averaged map for CPU tensors: one pass over the logits, the map written once.

Two implementations of the same formula:

* ``native``: the C++ kernel of ``csrc/cpu/attention_with_map.cpp`` (module ``atedm_kernels._cpu``, AVX2 + FMA + F16C),
  used for host tensors (at least one key, ``D >= 1``) on a CPU that runs it; the map is summed in float32 and
  written once in its dtype. Register-tiled products on cache-resident tiles, the softmax and the
  head sum fused in between, tasks of (batch element, query-row block) spread over ``torch.get_num_threads()``
  threads. Its design and cost notes are at the top of that file.
* ``blocked``: plain PyTorch, described below; every other case, and wherever ``_cpu`` is not built.

Blocked: for each batch element and each block of R query rows, all H heads at once::

    P[h, r, :] = softmax_j(q[b, h, r] . k[b, h, j] * scale)         # [H, R, M], one fused softmax
    out[b, h, r] = P[h, r, :] @ v[b, h]                               # [H, R, D]
    amap[b, r, :] = (1 / H) * sum_h P[h, r, :]                        # [R, M], accumulated in float32

The reference (:mod:`atedm_kernels.reference.attention`) loops over heads and materialises a full ``[B, N, M]``
probability tensor per head, which at SD-XL's 4096 tokens (134 MB per head) streams through DRAM four times per
head. Here R is chosen so that one block's ``[H, R, M]`` logits stay within the last-level cache, every pass after
the ``q k^T`` matmul reads cached data, and the map is written once. The matrix FLOPs are those of plain attention
(``4 B H N M D``); the extra work over ``scaled_dot_product_attention`` is the head sum (``B H N M`` adds) and the map
write (``B N M`` elements).
"""

from __future__ import annotations

import torch

from .dtype_codes import DTYPE_CODES

try:
    from .. import _cpu
except ImportError:  # not built (ATEDM_BUILD_CPU=0, no C++ compiler, not x86-64): the blocked path alone
    _cpu = None


# Bytes of one block's float32 [H, R, M] logits (the probabilities take as many again): measured on a 2-core AMD
# EPYC (32 MiB L3), 8-32 MiB per block ran within 5% of each other and 4 MiB or less lost 10-40% to per-call overhead.
BLOCK_BYTES = 16 * 2**20
MIN_BLOCK_ROWS = 16


def block_rows(heads: int, n_keys: int) -> int:
    """Query rows per block: as many as keep ``heads * rows * n_keys`` float32 logits near ``BLOCK_BYTES``."""
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * heads * n_keys))


# asked once: a pybind11 call inside a torch.compile'd U-Net would break its graph
_NATIVE = _cpu is not None and _cpu.supported()


def native_available() -> bool:
    """Whether ``atedm_kernels._cpu`` is built and this CPU runs it."""
    return _NATIVE


def attention_with_map_cpu(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    map_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    native = q.device.type == "cpu" and k.shape[2] > 0 and q.shape[-1] > 0
    if native and native_available():
        return attention_with_map_native(q, k, v, scale, map_dtype)
    return attention_with_map_blocked(q, k, v, scale, map_dtype)


def _row_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def attention_with_map_native(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    map_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The C++ kernel: float32 inputs taken as they are when their last dimension is contiguous (SD-XL's transposed
    [B, N, H, D] views included), other dtypes converted once; the output in q's dtype."""

    def as_f32(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        return t if t.stride(-1) == 1 else t.contiguous()

    q32, k32, v32 = as_f32(q), as_f32(k), as_f32(v)
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = torch.empty_like(q32)  # [B, H, N, D], q's memory layout
    amap = torch.empty(batch, n_q, n_k, dtype=map_dtype, device=q.device)  # [B, N, M]
    _cpu.attention_with_map_f32(
        q32.data_ptr(), _row_strides(q32), k32.data_ptr(), _row_strides(k32), v32.data_ptr(), _row_strides(v32),
        out.data_ptr(), _row_strides(out), amap.data_ptr(), DTYPE_CODES[map_dtype], batch, heads, n_q, n_k,
        head_dim, float(scale), torch.get_num_threads(),
    )
    return out.to(q.dtype), amap


def attention_with_map_blocked(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    map_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    rows = min(n_q, block_rows(heads, n_k))
    out = torch.empty_like(q)  # [B, H, N, D]
    amap = torch.empty(batch, n_q, n_k, dtype=map_dtype, device=q.device)  # [B, N, M]
    # Flat buffers allocated once: a fresh softmax output per block cost 15-20% of the kernel's CPU time on the
    # 1024-token layers (page faults). Each block takes a contiguous prefix, so the tail block is contiguous too:
    # aten::_softmax.out writes a non-contiguous `out` as if it were contiguous (torch 2.13).
    logits_buf = torch.empty(heads * rows * n_k, dtype=torch.float32, device=q.device)  # [H * R * M]
    probs_buf = torch.empty_like(logits_buf)  # [H * R * M]
    # a float32 map takes the head sum in place; a 16-bit one is summed in float32 first, then rounded once
    head_sum = None if map_dtype == torch.float32 else torch.empty(rows, n_k, dtype=torch.float32, device=q.device)
    for b in range(batch):
        keys_t = k[b].float().transpose(1, 2)  # [H, D, M]
        values = v[b].float()  # [H, M, D]
        for start in range(0, n_q, rows):
            stop = min(n_q, start + rows)
            logits = logits_buf[: heads * (stop - start) * n_k].view(heads, stop - start, n_k)  # [H, R, M]
            probs = probs_buf[: logits.numel()].view_as(logits)  # [H, R, M]
            torch.baddbmm(logits, q[b, :, start:stop].float(), keys_t, beta=0.0, alpha=scale, out=logits)
            torch.ops.aten._softmax.out(logits, -1, False, out=probs)
            out[b, :, start:stop] = torch.bmm(probs, values)  # [H, R, D], cast to q's dtype
            if head_sum is None:
                torch.sum(probs, dim=0, out=amap[b, start:stop]).mul_(1.0 / heads)  # [R, M]
            else:
                amap[b, start:stop] = torch.sum(probs, dim=0, out=head_sum[: stop - start]).mul_(1.0 / heads)
    return out, amap
