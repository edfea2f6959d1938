"""Reference attention with the head-averaged probability map.

``P_h = softmax(q_h k_h^T * scale)`` (row-wise, over the M keys), ``out_h = P_h v_h``, ``amap = mean_h P_h``.
Computed in float32 (inputs upcast), one head at a time so the peak extra memory is one ``[B, N, M]`` float32
buffer, not ``[B, H, N, M]``.
"""

from __future__ import annotations

import torch


def _head_probs(q: torch.Tensor, k: torch.Tensor, scale: float, h: int) -> torch.Tensor:
    logits = torch.matmul(q[:, h].float(), k[:, h].float().transpose(-1, -2)) * scale  # [B, N, M]
    return torch.softmax(logits, dim=-1)


def attention_with_map_reference(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    map_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, n_q, _ = q.shape
    out = torch.empty_like(q)  # [B, H, N, D]
    amap = torch.zeros(batch, n_q, k.shape[2], dtype=torch.float32, device=q.device)  # [B, N, M]
    for h in range(heads):
        probs = _head_probs(q, k, scale, h)  # [B, N, M]
        out[:, h] = torch.matmul(probs, v[:, h].float()).to(q.dtype)
        amap += probs
    return out, (amap / heads).to(map_dtype)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)  # [B, H, N, D]
    for h in range(q.shape[1]):
        out[:, h] = torch.matmul(_head_probs(q, k, scale, h), v[:, h].float()).to(q.dtype)
    return out
