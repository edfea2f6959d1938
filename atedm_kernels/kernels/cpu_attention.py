"""Attention with the head-averaged map for CPU tensors: cache-blocked over query rows, one pass over the logits.

For each batch element and each block of R query rows, all H heads at once::

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

# Bytes of one block's float32 [H, R, M] logits (the probabilities take as many again): measured on a 2-core AMD
# EPYC (32 MiB L3), 8-32 MiB per block ran within 5% of each other and 4 MiB or less lost 10-40% to per-call overhead.
BLOCK_BYTES = 16 * 2**20
MIN_BLOCK_ROWS = 16


def block_rows(heads: int, n_keys: int) -> int:
    """Query rows per block: as many as keep ``heads * rows * n_keys`` float32 logits near ``BLOCK_BYTES``."""
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * heads * n_keys))


def attention_with_map_cpu(
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
