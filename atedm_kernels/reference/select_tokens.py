"""Reference top-k token selection.

Token ``i`` is kept when fewer than ``keep`` tokens outrank it, where ``j`` outranks ``i`` if
``scores[j] > scores[i]`` or (``scores[j] == scores[i]`` and ``j < i``): ties go to the lower index. Both the kept
and the pruned index lists are returned in ascending (spatial) order.
"""

from __future__ import annotations

import torch


def select_tokens_reference(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable descending sort keeps equal scores in index order, which is exactly the tie rule.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # [B, N]
    keep_idx = torch.sort(order[:, :keep], dim=-1).values  # [B, K]
    prune_idx = torch.sort(order[:, keep:], dim=-1).values  # [B, N-K]
    return keep_idx, prune_idx
