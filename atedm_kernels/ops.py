"""The op table: every ``torch.ops.atedm.*`` op, declared once with its checks, fake implementation and backends.

Shapes: B batch, H heads, N query tokens, M key tokens, D head dim, C channels, K kept tokens, L text tokens.

==================  =====================================================  =========================================
op                  inputs -> outputs                                       meaning
==================  =====================================================  =========================================
attention_with_map  q [B,H,N,D], k, v [B,H,M,D] -> out [B,H,N,D],          ``out = softmax(q k^T * scale) v``;
                    amap [B,N,M]                                            ``amap = mean_h softmax(q_h k_h^T * scale)``
attention           q, k, v -> out [B,H,N,D]                                the same kernel without the map
gwpr                amap [B,N,N], num_iters, damping -> scores [B,N] f32    ``s <- (1-d) A^T s + d/N`` from ``1/N``
select_tokens       scores [B,N], keep -> keep_idx [B,K], prune_idx         top-``keep`` (ties to the lower index),
                    [B,N-K] int64                                           both lists ascending
similarity_sources  amap [B,N,N], keep_idx, prune_idx -> src [B,N-K]        ``argmax_j amap[keep_idx[j], p]``
gather_tokens       x [B,N,C], idx [B,K] -> [B,K,C]                         ``out[b,j] = x[b, idx[b,j]]``
recover_tokens      x_kept [B,K,C], keep_idx, prune_idx, src -> [B,N,C]     kept tokens in place, pruned ones copy
                                                                            ``x_kept[src]``
gwpr_cross          ca_map [B,N,L], num_iters, kind -> scores [B,N] f32     CA-based G-WPR (reference only)
sito_select         x [B,N,C], grid h, w, patch sx, sy, prune_ratio ->      SiTo's base/pruned/source selection
                    keep_idx, prune_idx, src                                (formulas: :mod:`atedm_kernels.sito`)
==================  =====================================================  =========================================

Each op takes a trailing ``backend`` string ("auto", "reference", "triton", "cuda", "cpu"; see :mod:`.backends`). The
public functions of the same names in :mod:`atedm_kernels` are thin keyword-friendly wrappers around these ops.
"""

from __future__ import annotations

import math

import torch

from . import reference
from ._validation import (
    FLOAT_DTYPES,
    MAP_DTYPES,
    check_float,
    check_index,
    check_int,
    check_same_device,
    check_tensor,
)
from .backends import backends_line, check_backend, kernel, resolve
from .reference.gwpr import GWPR_CROSS_KINDS

DEFAULT_MAP_DTYPE = torch.float16  # probabilities live in [0, 1], where fp16 resolves finer than bf16


REFERENCES = {  # the PyTorch reference that defines each op, run by backend "reference"
    "attention_with_map": reference.attention_with_map_reference,
    "attention": reference.attention_reference,
    "gwpr": reference.gwpr_reference,
    "gwpr_cross": reference.gwpr_cross_reference,
    "select_tokens": reference.select_tokens_reference,
    "similarity_sources": reference.similarity_sources_reference,
    "gather_tokens": reference.gather_tokens_reference,
    "recover_tokens": reference.recover_tokens_reference,
}


def _run(op: str, backend: str, device: torch.device, *args, reference=None):
    """``op`` on the backend ``resolve`` picks for ``device``: its reference (``REFERENCES``, or ``reference``), or
    the kernel ``backends.KERNELS`` names for that family, called with the op's checked arguments."""
    chosen = resolve(op, backend, device)
    if chosen == "reference":
        return (reference or REFERENCES[op])(*args)
    return kernel(op, chosen)(*args)


# --------------------------------------------------------------------------------------------------------------
# attention_with_map / attention
# --------------------------------------------------------------------------------------------------------------


def _check_attention(op, q, k, v, scale, backend) -> float:
    check_backend(op, backend)
    check_tensor("q", q, 4, FLOAT_DTYPES, layout="[B, H, N, D]")
    check_tensor("k", k, 4, FLOAT_DTYPES, layout="[B, H, M, D]")
    check_tensor("v", v, 4, FLOAT_DTYPES, layout="[B, H, M, D]")
    check_same_device(q=q, k=k, v=v)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    batch, heads, n_q, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != head_dim:
        raise ValueError(f"k must have shape [B={batch}, H={heads}, M, D={head_dim}], got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if batch == 0 or heads == 0 or n_q == 0 or k.shape[2] == 0 or head_dim == 0:
        raise ValueError(
            f"q and k must have B, H, N, M and D >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if scale is None:
        return head_dim**-0.5
    return check_float("scale", scale, 0.0, math.inf, open_low=True)  # symbolic under torch.compile(dynamic=True)


def _map_dtype(map_dtype) -> torch.dtype:
    if map_dtype is None:
        return DEFAULT_MAP_DTYPE
    if not isinstance(map_dtype, torch.dtype) or map_dtype not in MAP_DTYPES:
        raise TypeError(f"map_dtype must be one of {MAP_DTYPES} or None, got {map_dtype!r}")
    return map_dtype


@torch.library.custom_op("atedm::attention_with_map", mutates_args=())
def _attention_with_map(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    map_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = _check_attention("attention_with_map", q, k, v, scale, backend)
    map_dtype = _map_dtype(map_dtype)
    return _run("attention_with_map", backend, q.device, q, k, v, scale, map_dtype)


@_attention_with_map.register_fake
def _(q, k, v, scale=None, map_dtype=None, backend="auto"):
    _check_attention("attention_with_map", q, k, v, scale, backend)
    map_dtype = _map_dtype(map_dtype)
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], k.shape[2]), dtype=map_dtype)


@torch.library.custom_op("atedm::attention", mutates_args=())
def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto"
) -> torch.Tensor:
    scale = _check_attention("attention", q, k, v, scale, backend)
    return _run("attention", backend, q.device, q, k, v, scale)


@_attention.register_fake
def _(q, k, v, scale=None, backend="auto"):
    _check_attention("attention", q, k, v, scale, backend)
    return torch.empty_like(q)


# --------------------------------------------------------------------------------------------------------------
# gwpr / gwpr_cross
# --------------------------------------------------------------------------------------------------------------


def _check_square_map(name: str, amap) -> None:
    check_tensor(name, amap, 3, MAP_DTYPES, layout="[B, N, N]")
    if amap.shape[1] != amap.shape[2]:
        raise ValueError(f"{name} must be a square self-attention map [B, N, N], got shape {tuple(amap.shape)}")
    if amap.shape[1] == 0:
        raise ValueError(f"{name} must have N >= 1 tokens, got shape {tuple(amap.shape)}")


def _check_gwpr(amap, num_iters, damping, backend) -> None:
    check_backend("gwpr", backend)
    _check_square_map("amap", amap)
    check_int("num_iters", num_iters, 1)  # 0 iterations would return the uniform start: no ranking at all
    check_float("damping", damping, 0.0, 1.0)


@torch.library.custom_op("atedm::gwpr", mutates_args=())
def _gwpr(amap: torch.Tensor, num_iters: int, damping: float = 0.0, backend: str = "auto") -> torch.Tensor:
    _check_gwpr(amap, num_iters, damping, backend)
    return _run("gwpr", backend, amap.device, amap, num_iters, damping)


@_gwpr.register_fake
def _(amap, num_iters, damping=0.0, backend="auto"):
    _check_gwpr(amap, num_iters, damping, backend)
    return amap.new_empty(amap.shape[:2], dtype=torch.float32)


def _check_gwpr_cross(ca_map, num_iters, kind, backend) -> None:
    check_backend("gwpr_cross", backend)
    check_tensor("ca_map", ca_map, 3, MAP_DTYPES, layout="[B, N, L]")
    if ca_map.shape[1] == 0 or ca_map.shape[2] == 0:
        raise ValueError(f"ca_map must have N >= 1 and L >= 1, got shape {tuple(ca_map.shape)}")
    check_int("num_iters", num_iters, 1)
    if not isinstance(kind, str) or kind not in GWPR_CROSS_KINDS:
        raise ValueError(f"kind must be one of {GWPR_CROSS_KINDS}, got {kind!r}")


@torch.library.custom_op("atedm::gwpr_cross", mutates_args=())
def _gwpr_cross(
    ca_map: torch.Tensor, num_iters: int, kind: str = "entropy", backend: str = "auto"
) -> torch.Tensor:
    _check_gwpr_cross(ca_map, num_iters, kind, backend)
    return _run("gwpr_cross", backend, ca_map.device, ca_map, num_iters, kind)


@_gwpr_cross.register_fake
def _(ca_map, num_iters, kind="entropy", backend="auto"):
    _check_gwpr_cross(ca_map, num_iters, kind, backend)
    return ca_map.new_empty(ca_map.shape[:2], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------------
# select_tokens / similarity_sources
# --------------------------------------------------------------------------------------------------------------


def _check_select(scores, keep, backend) -> None:
    check_backend("select_tokens", backend)
    check_tensor("scores", scores, 2, FLOAT_DTYPES, layout="[B, N]")
    check_int("keep", keep, 1, scores.shape[1])


@torch.library.custom_op("atedm::select_tokens", mutates_args=())
def _select_tokens(scores: torch.Tensor, keep: int, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    _check_select(scores, keep, backend)
    return _run("select_tokens", backend, scores.device, scores, keep)


@_select_tokens.register_fake
def _(scores, keep, backend="auto"):
    _check_select(scores, keep, backend)
    batch, n = scores.shape
    return (
        scores.new_empty((batch, keep), dtype=torch.int64),
        scores.new_empty((batch, n - keep), dtype=torch.int64),
    )


def _check_sources(amap, keep_idx, prune_idx, backend) -> None:
    check_backend("similarity_sources", backend)
    _check_square_map("amap", amap)
    batch, n, _ = amap.shape
    check_index("keep_idx", keep_idx, batch, "[B, K]")
    check_index("prune_idx", prune_idx, batch, "[B, N-K]")
    check_same_device(amap=amap, keep_idx=keep_idx, prune_idx=prune_idx)
    if keep_idx.shape[1] < 1 or keep_idx.shape[1] + prune_idx.shape[1] != n:
        raise ValueError(
            f"keep_idx [B, K] and prune_idx [B, N-K] must split N={n} tokens with K >= 1, "
            f"got K={keep_idx.shape[1]} and N-K={prune_idx.shape[1]}"
        )


@torch.library.custom_op("atedm::similarity_sources", mutates_args=())
def _similarity_sources(
    amap: torch.Tensor, keep_idx: torch.Tensor, prune_idx: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    _check_sources(amap, keep_idx, prune_idx, backend)
    return _run("similarity_sources", backend, amap.device, amap, keep_idx, prune_idx)


@_similarity_sources.register_fake
def _(amap, keep_idx, prune_idx, backend="auto"):
    _check_sources(amap, keep_idx, prune_idx, backend)
    return torch.empty_like(prune_idx)


# --------------------------------------------------------------------------------------------------------------
# gather_tokens / recover_tokens
# --------------------------------------------------------------------------------------------------------------


def _check_gather(x, idx, backend) -> None:
    check_backend("gather_tokens", backend)
    check_tensor("x", x, 3, FLOAT_DTYPES, layout="[B, N, C]")
    check_index("idx", idx, x.shape[0], "[B, K]")
    check_same_device(x=x, idx=idx)


@torch.library.custom_op("atedm::gather_tokens", mutates_args=())
def _gather_tokens(x: torch.Tensor, idx: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    _check_gather(x, idx, backend)
    return _run("gather_tokens", backend, x.device, x, idx)


@_gather_tokens.register_fake
def _(x, idx, backend="auto"):
    _check_gather(x, idx, backend)
    return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))


def _check_recover(x_kept, keep_idx, prune_idx, src, backend) -> None:
    check_backend("recover_tokens", backend)
    check_tensor("x_kept", x_kept, 3, FLOAT_DTYPES, layout="[B, K, C]")
    batch, kept, _ = x_kept.shape
    check_index("keep_idx", keep_idx, batch, "[B, K]")
    check_index("prune_idx", prune_idx, batch, "[B, N-K]")
    check_index("src", src, batch, "[B, N-K]")
    check_same_device(x_kept=x_kept, keep_idx=keep_idx, prune_idx=prune_idx, src=src)
    if keep_idx.shape[1] != kept:
        raise ValueError(f"keep_idx must have K={kept} columns like x_kept, got shape {tuple(keep_idx.shape)}")
    if kept < 1:
        raise ValueError(f"x_kept must hold K >= 1 tokens, got shape {tuple(x_kept.shape)}")
    if src.shape != prune_idx.shape:
        raise ValueError(f"src must have the shape of prune_idx {tuple(prune_idx.shape)}, got {tuple(src.shape)}")


@torch.library.custom_op("atedm::recover_tokens", mutates_args=())
def _recover_tokens(
    x_kept: torch.Tensor, keep_idx: torch.Tensor, prune_idx: torch.Tensor, src: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    _check_recover(x_kept, keep_idx, prune_idx, src, backend)
    return _run("recover_tokens", backend, x_kept.device, x_kept, keep_idx, prune_idx, src)


@_recover_tokens.register_fake
def _(x_kept, keep_idx, prune_idx, src, backend="auto"):
    _check_recover(x_kept, keep_idx, prune_idx, src, backend)
    batch, kept, channels = x_kept.shape
    return x_kept.new_empty((batch, kept + prune_idx.shape[1], channels))


# --------------------------------------------------------------------------------------------------------------
# sito_select: SiTo's token split (x [B,N,C], grid h x w, patch sx x sy, prune_ratio, noise [B,N]? -> keep_idx [B,K],
# prune_idx [B,N-K], src [B,N-K] int64). K = N - min(round(prune_ratio * N), N - P), P = ceil(h/sy) * ceil(w/sx),
# depends on the arguments only, so the fake has static shapes. The op draws no random numbers (the caller passes
# noise), which keeps it deterministic and opcheck-able; formulas in atedm_kernels.sito.reference.
# --------------------------------------------------------------------------------------------------------------


def check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend="auto") -> int:
    """Validate ``sito_select``'s arguments (metadata only: runs on fake tensors); returns K."""
    check_backend("sito_select", backend)
    check_tensor("x", x, 3, FLOAT_DTYPES, layout="[B, N, C]")
    for name, value in (("h", h), ("w", w), ("sx", sx), ("sy", sy)):
        check_int(name, value, 1)  # SymInts too: a grid derived from a tensor shape under torch.compile(dynamic)
    prune_ratio = check_float("prune_ratio", prune_ratio, 0.0, 1.0, open_high=True)
    check_float("noise_alpha", noise_alpha, 0.0, math.inf)
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
    from .sito.reference import sito_kept_tokens  # lazily: the sito package re-exports this module's op

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
    from .sito.reference import sito_select_reference

    return _run("sito_select", backend, x.device, x, h, w, sx, sy, prune_ratio, noise, noise_alpha,
                reference=sito_select_reference)


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
        backend: see the Backends line below.

    Returns:
        ``(keep_idx [B, K], prune_idx [B, N-K], src [B, N-K])``, int64; both index lists ascending.
    """
    check_sito_select(x, h, w, sx, sy, prune_ratio, noise, noise_alpha, backend)
    return torch.ops.atedm.sito_select(x, h, w, sx, sy, float(prune_ratio), noise, float(noise_alpha), backend)


# --------------------------------------------------------------------------------------------------------------
# Public functions (``atedm_kernels.<op>``): keyword-friendly, documented entry points to the ops above.
# --------------------------------------------------------------------------------------------------------------


def attention_with_map(q, k, v, scale=None, map_dtype=None, *, backend="auto"):
    """Attention and its head-averaged probability map in one call.

    ``out[b,h] = softmax(q[b,h] k[b,h]^T * scale) v[b,h]`` and ``amap[b,i,j] = mean_h softmax_j(...)[i,j]``.

    Args:
        q: ``[B, H, N, D]`` queries; k, v: ``[B, H, M, D]`` keys and values (fp16, bf16 or fp32, one dtype).
        scale: softmax scale, default ``D ** -0.5``.
        map_dtype: dtype of ``amap``: float16 (default), bfloat16 or float32.
        backend: see the Backends line below.

    Returns:
        ``(out [B, H, N, D] in q's dtype, amap [B, N, M] in map_dtype)``.
    """
    _check_attention("attention_with_map", q, k, v, scale, backend)
    _map_dtype(map_dtype)
    return torch.ops.atedm.attention_with_map(q, k, v, scale, map_dtype, backend)


def attention(q, k, v, scale=None, *, backend="auto"):
    """Plain attention ``softmax(q k^T * scale) v`` (``[B, H, N, D]``): the fused kernel with no map."""
    _check_attention("attention", q, k, v, scale, backend)
    return torch.ops.atedm.attention(q, k, v, scale, backend)


def gwpr(amap, num_iters, damping=0.0, *, backend="auto"):
    """G-WPR token scores ``[B, N]`` (float32) from a self-attention map ``[B, N, N]``.

    ``s_0 = 1/N``; ``s_{t+1}[j] = (1 - damping) * sum_i amap[i, j] * s_t[i] + damping / N``; returns ``s_T`` with
    ``T = num_iters >= 1`` (like ``AtEdmConfig.num_iters``).
    """
    _check_gwpr(amap, num_iters, damping, backend)
    return torch.ops.atedm.gwpr(amap, num_iters, damping, backend)


def gwpr_cross(ca_map, num_iters, kind="entropy", *, backend="auto"):
    """Cross-attention G-WPR query scores ``[B, N]`` from ``ca_map [B, N, L]``.

    ``s_Q = 1/N``; repeat ``num_iters >= 1`` times: ``s_K = ca_map^T s_Q``, ``s_Q = f(ca_map, s_K)``, normalised to sum
    1, with ``kind`` selecting ``f``: "entropy", "hard_clip", "soft_clip" or "power".
    """
    _check_gwpr_cross(ca_map, num_iters, kind, backend)
    return torch.ops.atedm.gwpr_cross(ca_map, num_iters, kind, backend)


def select_tokens(scores, keep, *, backend="auto"):
    """Split tokens by score: ``(keep_idx [B, keep], prune_idx [B, N - keep])``, int64, each ascending.

    The ``keep`` highest scores are kept; equal scores go to the lower token index.
    """
    _check_select(scores, keep, backend)
    return torch.ops.atedm.select_tokens(scores, keep, backend)


def similarity_sources(amap, keep_idx, prune_idx, *, backend="auto"):
    """For each pruned token, the position in ``keep_idx`` of the kept token that attends to it most.

    ``src[b, m] = argmax_j amap[b, keep_idx[b, j], prune_idx[b, m]]`` (ties to the lowest ``j``), int64
    ``[B, N-K]``.
    """
    _check_sources(amap, keep_idx, prune_idx, backend)
    return torch.ops.atedm.similarity_sources(amap, keep_idx, prune_idx, backend)


def gather_tokens(x, idx, *, backend="auto"):
    """``out[b, j] = x[b, idx[b, j]]``: ``x [B, N, C]``, ``idx [B, K]`` int64 -> ``[B, K, C]``."""
    _check_gather(x, idx, backend)
    return torch.ops.atedm.gather_tokens(x, idx, backend)


def recover_tokens(x_kept, keep_idx, prune_idx, src, *, backend="auto"):
    """Scatter kept tokens back to ``[B, N, C]`` and fill each pruned token with a copy of its source.

    ``out[b, keep_idx[b, j]] = x_kept[b, j]``; ``out[b, prune_idx[b, m]] = x_kept[b, src[b, m]]``.
    """
    _check_recover(x_kept, keep_idx, prune_idx, src, backend)
    return torch.ops.atedm.recover_tokens(x_kept, keep_idx, prune_idx, src, backend)


for _public in (attention_with_map, attention, gwpr, gwpr_cross, select_tokens, similarity_sources, gather_tokens,
                recover_tokens, sito_select):
    _public.__doc__ = _public.__doc__.rstrip() + "\n\n    " + backends_line(_public.__name__) + "\n"
