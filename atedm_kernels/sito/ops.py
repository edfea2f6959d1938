"""``torch.ops.atedm.sito_select``: SiTo's token split as one custom op, with its checks and fake implementation.

==============  ==========================================================  ==========================================
op              inputs -> outputs                                           meaning
==============  ==========================================================  ==========================================
sito_select     x [B,N,C], h, w, sx, sy, prune_ratio, noise [B,N]?,         base token per ``sy x sx`` patch, prune
                noise_alpha -> keep_idx [B,K], prune_idx [B,N-K],           the ``N-K`` tokens closest to a base
                src [B,N-K] int64                                           token, ``src`` = most similar kept token
==============  ==========================================================  ==========================================

``K = N - min(round(prune_ratio * N), N - P)`` with ``P = ceil(h / sy) * ceil(w / sx)`` depends on the arguments
only, so the fake implementation has static shapes and ``torch.compile`` sees one graph per grid. The op draws no
random numbers: the caller passes ``noise`` (e.g. ``torch.randn(B, N)``), which keeps it deterministic and
``opcheck``-able. See :mod:`atedm_kernels.sito.reference` for the formulas; the reference is the only backend
(its cost is two batched matrix products that cuBLAS already runs well).
"""

from __future__ import annotations

import math

import torch

from .._validation import FLOAT_DTYPES, check_same_device, check_tensor
from ..backends import check_backend
from .reference import sito_kept_tokens, sito_select_reference

def _check_real(name: str, value, low: float, high: float | None = None, *, open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    above = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or value < low or above:
        bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a finite float in {bound}, got {value}")
    return value


def _check_int(name: str, value, low: int) -> None:
    # torch.SymInt too: under torch.compile with dynamic shapes a grid size derived from a tensor shape is symbolic.
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")


def check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend="auto") -> int:
    """Validate ``sito_select``'s arguments (metadata only: runs on fake tensors); returns K."""
    check_backend("sito_select", backend)
    check_tensor("x", x, 3, FLOAT_DTYPES, layout="[B, N, C]")
    _check_int("h", h, 1)
    _check_int("w", w, 1)
    _check_int("sx", sx, 1)
    _check_int("sy", sy, 1)
    prune_ratio = _check_real("prune_ratio", prune_ratio, 0.0, 1.0, open_high=True)
    _check_real("noise_alpha", noise_alpha, 0.0)
    batch, n, channels = x.shape
    if n != h * w:
        raise ValueError(f"x must hold N = h * w = {h} * {w} = {h * w} tokens (dim 1), got shape {tuple(x.shape)}")
    if channels < 1:
        raise ValueError(f"x must have C >= 1 channels, got shape {tuple(x.shape)}")
    if noise is not None:
        check_tensor("noise", noise, 2, FLOAT_DTYPES, layout="[B, N]")
        if tuple(noise.shape) != (batch, n):
            raise ValueError(f"noise must have shape [B, N] = {(batch, n)}, got {tuple(noise.shape)}")
        check_same_device(x=x, noise=noise)
    return sito_kept_tokens(h, w, sx, sy, prune_ratio)


@torch.library.custom_op("atedm::sito_select", mutates_args=())
def _sito_select(
    x: torch.Tensor,
    h: int,
    w: int,
    sx: int = 2,
    sy: int = 2,
    prune_ratio: float = 0.5,
    noise: torch.Tensor | None = None,
    noise_alpha: float = 0.1,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend)
    return sito_select_reference(x, h, w, sx, sy, prune_ratio, noise, noise_alpha)


@_sito_select.register_fake
def _(x, h, w, sx=2, sy=2, prune_ratio=0.5, noise=None, noise_alpha=0.1, backend="auto"):
    kept = check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend)
    batch, n = x.shape[0], h * w
    return (
        x.new_empty((batch, kept), dtype=torch.int64),
        x.new_empty((batch, n - kept), dtype=torch.int64),
        x.new_empty((batch, n - kept), dtype=torch.int64),
    )


def sito_select(x, h, w, sx=2, sy=2, prune_ratio=0.5, noise=None, noise_alpha=0.1, *, backend="auto"):
    """SiTo's token split of ``x [B, N, C]`` on its ``h x w`` grid (``N = h * w``, row-major).

    1. ``score_i = sum_j cos(x_i, x_j) + noise_alpha * noise_i``; each ``sy x sx``
       patch (partial last row/column patches included) keeps its best-scoring token as a base token.
    2. The ``min(round(prune_ratio * N), N - P)`` non-base tokens with the highest max-cosine to a base token are
       pruned (ties: lower index first).
    3. ``src[b, m]``: position in ``keep_idx`` of the kept token most similar to pruned token ``prune_idx[b, m]``
       (ties to the lowest position).

    Args:
        x: ``[B, N, C]`` tokens (fp16, bf16 or fp32; similarities are computed in fp32).
        h, w: the token grid (``N = h * w``); sx, sy: patch width and height, ints >= 1.
        prune_ratio: fraction of tokens to prune, in [0, 1).
        noise: optional ``[B, N]`` float tensor (e.g. ``torch.randn``) added as ``noise_alpha * noise``.
        noise_alpha: scale of ``noise``, >= 0.
        backend: "auto" or "reference" (the only implementation).

    Returns:
        ``(keep_idx [B, K], prune_idx [B, N-K], src [B, N-K])``, int64; both index lists ascending.
    """
    check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend)
    return torch.ops.atedm.sito_select(x, h, w, sx, sy, float(prune_ratio), noise, float(noise_alpha), backend)
