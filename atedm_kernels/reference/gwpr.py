"""Reference G-WPR (generalised weighted PageRank) on attention maps.

Self-attention form (AT-EDM's default), power iteration on the head-averaged map ``A`` [B, N, N]::

    s_0 = 1/N
    s_{t+1}[j] = (1 - d) * sum_i A[i, j] * s_t[i] + d / N

A token is important when important tokens attend to it. A row-stochastic ``A`` keeps ``sum(s) = 1``.

Cross-attention form (the paper's CA-based WPR, supplementary eqs. 2-4) on ``A`` [B, N, L] (N image queries,
L text keys)::

    s_Q = 1/N;  repeat:  s_K = A^T s_Q;  s_Q = f(A, s_K) / sum(f(A, s_K))

with ``f`` one of ``hard_clip`` (eta 0.2), ``soft_clip`` (sigmoid, eta 0.2), ``power`` (alpha 5, beta L/2) and
``entropy`` (``sum_j A_ij s_K[j] / (H(A_i) + eps)``, ``H`` the row entropy).
"""

from __future__ import annotations

import torch

GWPR_CROSS_KINDS = ("entropy", "hard_clip", "soft_clip", "power")
CLIP_ETA = 0.2  # attention threshold of the clip-based f (supplementary eqs. 2, 3)
POWER_ALPHA = 5.0  # exponent scale of the power-based f (supplementary eq. 4)
ENTROPY_EPS = 1e-6  # keeps the entropy-based f finite on one-hot rows


def gwpr_reference(amap: torch.Tensor, num_iters: int, damping: float) -> torch.Tensor:
    batch, n, _ = amap.shape
    weights = amap.float()  # [B, N, N]
    scores = torch.full((batch, n), 1.0 / n, dtype=torch.float32, device=amap.device)  # [B, N]
    for _ in range(num_iters):
        scores = (1.0 - damping) * torch.bmm(scores.unsqueeze(1), weights).squeeze(1) + damping / n
    return scores


def _cross_query_scores(weights: torch.Tensor, key_scores: torch.Tensor, kind: str) -> torch.Tensor:
    """``f(A, s_K)`` for ``A`` [B, N, L] and ``s_K`` [B, L] -> [B, N] (unnormalised)."""
    if kind == "hard_clip":
        return torch.bmm((weights >= CLIP_ETA).float(), key_scores.unsqueeze(-1)).squeeze(-1)
    if kind == "soft_clip":
        return torch.bmm(torch.sigmoid(weights - CLIP_ETA), key_scores.unsqueeze(-1)).squeeze(-1)
    if kind == "power":
        beta = weights.shape[-1] / 2.0
        return torch.pow((beta * key_scores).unsqueeze(1), POWER_ALPHA * weights).sum(-1)
    # entropy
    row_entropy = -(weights * torch.log(weights.clamp_min(1e-30))).sum(-1)  # [B, N]
    return torch.bmm(weights, key_scores.unsqueeze(-1)).squeeze(-1) / (row_entropy + ENTROPY_EPS)


def gwpr_cross_reference(ca_map: torch.Tensor, num_iters: int, kind: str) -> torch.Tensor:
    batch, n, _ = ca_map.shape
    weights = ca_map.float()  # [B, N, L]
    query_scores = torch.full((batch, n), 1.0 / n, dtype=torch.float32, device=ca_map.device)  # [B, N]
    for _ in range(num_iters):
        key_scores = torch.bmm(query_scores.unsqueeze(1), weights).squeeze(1)  # [B, L]
        query_scores = _cross_query_scores(weights, key_scores, kind)
        query_scores = query_scores / query_scores.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return query_scores
