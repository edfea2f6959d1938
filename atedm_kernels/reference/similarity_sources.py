"""Reference similarity sources for token recovery.

For pruned token ``p = prune_idx[b, m]``: ``src[b, m] = argmax_j amap[b, keep_idx[b, j], p]``, the position (in
``keep_idx``) of the kept token that gave ``p`` the most attention; ties go to the lowest ``j``. NaN entries never
win (they count as -inf), so a column with no finite maximum falls back to position 0, as the CUDA kernel does.
"""

from __future__ import annotations

import torch


def similarity_sources_reference(
    amap: torch.Tensor,  # [B, N, N]
    keep_idx: torch.Tensor,  # [B, K]
    prune_idx: torch.Tensor,  # [B, N-K]
) -> torch.Tensor:
    batch, n, _ = amap.shape
    kept, pruned = keep_idx.shape[1], prune_idx.shape[1]
    rows = amap.gather(1, keep_idx.unsqueeze(-1).expand(batch, kept, n))  # [B, K, N]
    block = rows.gather(2, prune_idx.unsqueeze(1).expand(batch, kept, pruned))  # [B, K, N-K]
    block = block.masked_fill(block.isnan(), float("-inf"))
    best = block.max(dim=1, keepdim=True).values  # [B, 1, N-K]
    positions = torch.arange(kept, device=amap.device).view(1, kept, 1)
    # The lowest position holding the maximum (explicit, not reliant on argmax's tie order).
    return torch.where(block == best, positions, kept).amin(dim=1)  # [B, N-K]
