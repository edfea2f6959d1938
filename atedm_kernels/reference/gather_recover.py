"""Reference token gather and recovery scatter.

``gather_tokens``: ``out[b, j] = x[b, idx[b, j]]``.

``recover_tokens``: ``out[b, keep_idx[b, j]] = x_kept[b, j]`` and ``out[b, prune_idx[b, m]] = x_kept[b, src[b, m]]``
(each pruned token copies the final value of its most similar kept token). ``keep_idx`` and ``prune_idx`` together
must list every one of the N tokens once.
"""

from __future__ import annotations

import torch


def gather_tokens_reference(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [B, K, C]


def recover_tokens_reference(
    x_kept: torch.Tensor,  # [B, K, C]
    keep_idx: torch.Tensor,  # [B, K]
    prune_idx: torch.Tensor,  # [B, N-K]
    src: torch.Tensor,  # [B, N-K]
) -> torch.Tensor:
    batch, kept, channels = x_kept.shape
    n = kept + prune_idx.shape[1]
    out = x_kept.new_empty(batch, n, channels)  # [B, N, C]
    out.scatter_(1, keep_idx.unsqueeze(-1).expand(-1, -1, channels), x_kept)
    copies = gather_tokens_reference(x_kept, src)  # [B, N-K, C]
    out.scatter_(1, prune_idx.unsqueeze(-1).expand(-1, -1, channels), copies)
    return out
