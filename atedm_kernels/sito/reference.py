"""Pure-PyTorch references of SiTo's three stages (Zhang et al., AAAI 2025), on any device.

Shapes: B batch, N = h * w tokens of a row-major ``h x w`` latent grid, C channels, P patches, K kept tokens.
``xn`` is ``x`` with every token scaled to unit L2 norm, so ``xn_i . xn_j = cos(x_i, x_j)``.

1. **Base tokens.** The grid is cut into patches of ``sy`` rows by ``sx`` columns, left to right and top to bottom;
   when ``sy`` does not divide ``h`` (``sx`` does not divide ``w``) the last patch row (column) is shorter and is a
   patch of its own, so ``P = ceil(h / sy) * ceil(w / sx)``. Every token gets the similarity score

       score_i = sum_j cos(x_i, x_j) + noise_alpha * noise_i = xn_i . (sum_j xn_j) + noise_alpha * noise_i

   (O(N*C), not O(N^2*C)), and each patch keeps its highest-scoring token as its base token (ties to the lower
   token index).
2. **Pruned tokens.** Each non-base token ``t`` is rated by its best match among the base tokens,
   ``m_t = max_{b in base} cos(x_t, x_b)``; the ``r = min(round(prune_ratio * N), N - P)`` non-base tokens with the
   highest ``m_t`` are pruned (equal ``m_t``: the lower index first). Python's ``round`` (half to even) is the one
   :class:`atedm_kernels.sdxl.AtEdmConfig` uses too. The kept set is every other token, the base tokens included,
   so ``K = N - r >= P``.
3. **Recovery sources.** Each pruned token ``p`` copies the output of its most similar kept token,
   ``src_m = argmax_j cos(x_{prune_idx[m]}, x_{keep_idx[j]})``, a position in ``keep_idx`` (ties to the lowest
   ``j``, which, ``keep_idx`` being ascending, is the lowest token index).

Similarities are computed in float32 (float64 inputs stay float64). The heavy work is two batched matrix products,
``[N, C] x [C, P]`` (stage 2) and ``[N-K, C] x [C, K]`` (stage 3), plus an ``[N, C]`` normalisation and a sort of
``N`` values: cuBLAS/cuDNN-class library calls that a custom kernel would only re-implement, so SiTo's selection
runs through these references on every device and has no CUDA or Triton backend. (No GPU timing backs or refutes
this yet; measure before adding a kernel.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def num_patches(h: int, w: int, sx: int, sy: int) -> int:
    """``P = ceil(h / sy) * ceil(w / sx)``: partial patch rows and columns count as patches."""
    return -(-h // sy) * -(-w // sx)


def num_pruned(n: int, prune_ratio: float, patches: int) -> int:
    """``r = min(round(prune_ratio * n), n - patches)``: the pruned-token count, capped to keep every base token."""
    return max(0, min(round(prune_ratio * n), n - patches))


def sito_kept_tokens(h: int, w: int, sx: int, sy: int, prune_ratio: float) -> int:
    """``K = N - min(round(prune_ratio * N), N - P)`` with ``N = h * w``: the static kept-token count."""
    n = h * w
    return n - num_pruned(n, prune_ratio, num_patches(h, w, sx, sy))


def normalize_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x [B, N, C]`` -> unit-norm tokens ``[B, N, C]`` in float32 (float64 stays float64); zero tokens stay zero."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F.normalize(x.to(dtype), p=2.0, dim=-1)


def similarity_scores_reference(
    xn: torch.Tensor,  # [B, N, C] unit-norm tokens
    noise: torch.Tensor | None = None,  # [B, N]
    noise_alpha: float = 0.0,
) -> torch.Tensor:
    """``score_i = xn_i . sum_j xn_j + noise_alpha * noise_i`` -> ``[B, N]`` in ``xn``'s dtype."""
    total = xn.sum(dim=1, keepdim=True)  # [B, 1, C]
    scores = (xn * total).sum(dim=-1)  # [B, N]
    if noise is not None and noise_alpha != 0.0:
        scores = scores + noise_alpha * noise.to(scores.dtype)
    return scores


def base_tokens_reference(scores: torch.Tensor, h: int, w: int, sx: int, sy: int) -> torch.Tensor:
    """Per patch, the index of its highest score (ties to the lower index): ``scores [B, N]`` -> ``[B, P]``,
    ascending."""
    batch = scores.shape[0]
    rows, cols = -(-h // sy), -(-w // sx)
    grid = scores.reshape(batch, h, w)
    # Pad the partial last patch row/column with -inf so that every patch is a full sy x sx tile.
    grid = F.pad(grid, (0, cols * sx - w, 0, rows * sy - h), value=float("-inf"))  # [B, rows*sy, cols*sx]
    tiles = grid.reshape(batch, rows, sy, cols, sx).permute(0, 1, 3, 2, 4).reshape(batch, rows, cols, sy * sx)
    local = tiles.argmax(dim=-1)  # [B, rows, cols]: row-major position in the tile; argmax returns the first max
    dy, dx = local // sx, local % sx
    row = torch.arange(rows, device=scores.device).view(1, rows, 1) * sy + dy
    col = torch.arange(cols, device=scores.device).view(1, 1, cols) * sx + dx
    base = (row * w + col).reshape(batch, rows * cols)  # [B, P]
    return base.sort(dim=-1).values


def pruned_tokens_reference(
    xn: torch.Tensor,  # [B, N, C] unit-norm tokens
    base_idx: torch.Tensor,  # [B, P]
    prune: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the ``prune`` non-base tokens most similar to a base token -> ``(keep_idx [B, N-prune], prune_idx
    [B, prune])``, int64, ascending. ``m_t = max_b xn_t . xn_b``; equal ``m_t`` prune the lower index first."""
    batch, n, channels = xn.shape
    base = xn.gather(1, base_idx.unsqueeze(-1).expand(-1, -1, channels))  # [B, P, C]
    best = torch.bmm(xn, base.transpose(1, 2)).amax(dim=-1)  # [B, N]
    best = best.scatter(1, base_idx, float("-inf"))  # base tokens are never pruned
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices  # [B, N]; stable: ties by index
    prune_idx = order[:, :prune].sort(dim=-1).values  # [B, r]
    keep_idx = order[:, prune:].sort(dim=-1).values  # [B, K]
    return keep_idx, prune_idx


def recovery_sources_reference(
    xn: torch.Tensor,  # [B, N, C] unit-norm tokens
    keep_idx: torch.Tensor,  # [B, K]
    prune_idx: torch.Tensor,  # [B, N-K]
) -> torch.Tensor:
    """``src[b, m] = argmax_j xn[b, prune_idx[b, m]] . xn[b, keep_idx[b, j]]`` (ties to the lowest j): ``[B, N-K]``
    positions in ``keep_idx``."""
    channels = xn.shape[-1]
    kept = xn.gather(1, keep_idx.unsqueeze(-1).expand(-1, -1, channels))  # [B, K, C]
    pruned = xn.gather(1, prune_idx.unsqueeze(-1).expand(-1, -1, channels))  # [B, N-K, C]
    return torch.bmm(pruned, kept.transpose(1, 2)).argmax(dim=-1)  # [B, N-K]; argmax returns the first max


def sito_select_reference(
    x: torch.Tensor,  # [B, N, C], N = h * w
    h: int,
    w: int,
    sx: int = 2,
    sy: int = 2,
    prune_ratio: float = 0.5,
    noise: torch.Tensor | None = None,  # [B, N]
    noise_alpha: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SiTo's token split: ``(keep_idx [B, K], prune_idx [B, N-K], src [B, N-K])``, int64, index lists ascending.

    ``K = N - min(round(prune_ratio * N), N - P)`` (:func:`sito_kept_tokens`); ``src`` indexes ``keep_idx``, as
    :func:`atedm_kernels.recover_tokens` expects. Without ``noise`` the base tokens are chosen on similarity alone.
    """
    xn = normalize_tokens(x)  # [B, N, C]
    scores = similarity_scores_reference(xn, noise, noise_alpha)  # [B, N]
    base_idx = base_tokens_reference(scores, h, w, sx, sy)  # [B, P]
    prune = num_pruned(h * w, prune_ratio, base_idx.shape[1])
    keep_idx, prune_idx = pruned_tokens_reference(xn, base_idx, prune)  # [B, K], [B, N-K]
    src = recovery_sources_reference(xn, keep_idx, prune_idx)  # [B, N-K]
    return keep_idx, prune_idx, src
