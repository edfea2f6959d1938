"""Fused attention that also emits the head-averaged attention map (Triton).

For each batch ``b`` and head ``h`` (``q [B, H, N, D]``, ``k, v [B, H, M, D]``)::

    S_h   = q_h k_h^T * scale                                   # [N, M] logits
    P_h   = softmax_j(S_h) = exp(S_h - lse_h[:, None])          # lse_h = log sum_j exp(S_h[:, j])
    out_h = P_h v_h                                             # [N, D]
    amap  = (1 / H) * sum_h P_h                                 # [N, M], the AT-EDM map

Two kernels, no per-head probabilities ever written to memory:

* **Pass 1** (``_attn_fwd_kernel``) is a flash-attention forward. A program owns one query tile of one
  (batch, head) and streams the key/value tiles through an online softmax: running row max ``m``, running
  denominator ``l`` and an fp32 accumulator ``acc`` that is rescaled by ``2^(m_old - m_new)`` whenever the max
  grows. Exponentials are ``exp2`` with ``log2(e)`` folded into the scale (``qk_scale = scale * log2(e)``), so
  every logit lives in base 2: ``s2 = S * log2(e)``. It writes ``out = acc / l`` and, when the map is wanted, the
  base-2 log-sum-exp ``lse2 = m + log2(l)`` (float32, ``[B, H, N]``: 4 bytes per row and head).
* **Pass 2** (``_attn_map_kernel``) writes the map. A program owns one ``[BLOCK_M, BLOCK_N]`` tile of
  ``amap[b]``; it loops over the heads, recomputes that tile of ``q_h k_h^T``, normalises it with the stored
  LSE (``p = exp2(s * qk_scale - lse2)``, already the softmax: no second reduction over keys), sums ``p`` over
  heads in fp32 registers and stores the tile once, scaled by ``1/H``, in the map's dtype. Every map element is
  written by exactly one program in a fixed head order: no atomics, bitwise deterministic.

Cost (multiply-adds counted as 2 FLOPs):

* pass 1: ``4 * B*H*N*M*D`` FLOPs (``q k^T`` and ``P v``); reads q, k, v once per query tile, writes ``out``
  (+ ``4 * B*H*N`` LSE bytes).
* pass 2: ``2 * B*H*N*M*D`` FLOPs (``q k^T`` again) + ``B*N*M * map_bytes`` written. That is the floor for this
  design: 1.5x the attention's matrix FLOPs plus one write of the map.

Precision: fp32 inputs use IEEE fp32 dots (no TF32), so fp32 results match a float64 reference to ~1e-6;
fp16/bf16 inputs use dots in the input dtype with fp32 accumulation, and ``p`` is cast to v's dtype for the
``P v`` dot, as flash attention does. Softmax statistics, accumulators and the head sum are fp32.

Tails: any N and M. Query rows ``>= N`` load zeros and are never stored; key columns ``>= M`` get ``-inf``
logits in pass 1 (zero probability, nothing added to ``l`` or ``acc``) and are never stored in pass 2. Any head
dim ``D <= 256`` works: the tile's head dim is ``D`` rounded up to a power of two (>= 16, the tensor-core
minimum), with the padding masked to zero (a no-op in the dot). Inputs may have any strides.

On a GPU both kernels are autotuned over a few configurations keyed on ``(N, M, D)`` (and, by Triton, the
dtypes); under ``TRITON_INTERPRET=1`` (CPU tests) each uses one small fixed configuration, because autotuning
interpreted kernels would only burn time.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
MAX_HEAD_DIM = 256  # beyond this a [BLOCK_M, D] fp32 accumulator no longer fits in registers

# Whether this module's kernels were built for the CPU interpreter: triton.jit decides it from TRITON_INTERPRET
# when the module is imported, so the variable must be set before the first import.
# Releases without ``triton.knobs`` test the variable against "1" themselves.
INTERPRETED: bool = (
    triton.knobs.runtime.interpret if hasattr(triton, "knobs") else os.environ.get("TRITON_INTERPRET", "0") == "1"
)


# GPU tile candidates, (BLOCK_M, BLOCK_N, num_warps, num_stages), per kernel and operand kind; timing on the device
# picks among them. All were compiled for sm_90 with Triton 3.9 at D = 40, 64, 128 and 256 (not run): each fits an
# H100 block's shared memory (227 KiB), and ptxas reports no register spills for fp16/bf16 at any D (except
# (128, 64, 4, 3) at D = 128, which timing will pass over) nor for fp32 at D <= 64. fp32 at D >= 128 spills
# somewhat: it is the exact path, not the fast one.
_TILES = {
    # Pass 1, fp16/bf16 tensor cores, D <= 128: a tall query tile reuses each K/V tile over many rows; 3 stages
    # pipeline the K/V loads.
    ("fwd", "tc"): [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    # Pass 2, fp16/bf16, D <= 128: the [BLOCK_M, BLOCK_N] fp32 head sum stays in registers over the head loop.
    ("map", "tc"): [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 128, 4, 3)],
    # D = 256: larger tiles overflow shared memory or spill.
    ("fwd", "tc_wide"): [(64, 64, 8, 2), (64, 32, 4, 2)],
    ("map", "tc_wide"): [(64, 64, 8, 2), (64, 32, 4, 2)],
    # fp32 with IEEE dots runs on the FMA units, where the dot operands live in registers: small tiles only.
    ("fwd", "fp32"): [(64, 32, 8, 2), (32, 32, 4, 2), (16, 64, 4, 2)],
    ("map", "fp32"): [(64, 32, 8, 2), (32, 32, 4, 2), (64, 16, 4, 2)],
}
_CONFIGS = {
    key: [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]
    for key, tiles in _TILES.items()
}


def _tile_kind(block_d: int, dot_precision: str) -> str:
    if dot_precision == "ieee":
        return "fp32"
    return "tc" if block_d <= 128 else "tc_wide"


def _autotune(kernel: str):
    """``triton.autotune`` over ``kernel``'s tiles, keyed on (N, M, D) (Triton adds the argument dtypes); the
    candidate list is narrowed to the dtype and head dim of the call. Under TRITON_INTERPRET=1: one fixed small
    tile (32 x 32, so the CPU tests' N, M of 30..200 cross several tiles and tails), no tuning."""
    if INTERPRETED:
        return triton.autotune(configs=[triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})], key=[])

    def prune(configs, named_args, **kwargs):
        return _CONFIGS[(kernel, _tile_kind(kwargs["BLOCK_D"], kwargs["DOT_PRECISION"]))]

    configs = [c for (name, _), group in _CONFIGS.items() if name == kernel for c in group]
    return triton.autotune(configs=configs, key=["N", "M", "HEAD_DIM"], prune_configs_by={"early_config_prune": prune})


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST_BF16: tl.constexpr):
    """``a @ b`` with fp32 accumulation. ``UPCAST_BF16`` (interpreter only) widens bf16 operands to fp32 first:
    exact, and the products are then those of a bf16 tensor-core dot; the Triton 3.9 interpreter otherwise
    multiplies bf16 bit patterns as integers (triton-lang/triton#11584)."""
    if UPCAST_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@_autotune("fwd")
@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, Lse,  # q [B, H, N, D], k/v [B, H, M, D], out [B, H, N, D], lse [B, H, N] fp32 (base 2)
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N, M,
    qk_scale,  # scale * log2(e): logits come out in base 2, ready for exp2
    HEAD_DIM: tl.constexpr,  # D; constexpr so the head-dim mask folds away when D == BLOCK_D
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16 (tl.arange and tensor-core minimum)
    WRITE_LSE: tl.constexpr,  # store the per-row LSE for the map pass; False for plain attention
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32); ignored by 16-bit dots
    UPCAST_BF16: tl.constexpr,  # interpreter + bf16 only: see _dot
    BLOCK_M: tl.constexpr,  # query rows per program: each K/V tile load is reused by this many rows
    BLOCK_N: tl.constexpr,  # keys per inner-loop step: width of the [BLOCK_M, BLOCK_N] logits tile
):
    # One program: query tile `tile_m` of head `bh` (1-D grid: no 65535 limit on B*H).
    pid = tl.program_id(0)
    num_m_tiles = tl.cdiv(N, BLOCK_M)
    tile_m = pid % num_m_tiles
    bh = pid // num_m_tiles
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)

    offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # [BLOCK_M] query rows (x strides: int64)
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N] keys within a tile (the tile start advances the pointers)
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = offs_m < N
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    k_ptrs = K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max of the base-2 logits
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running sum of exp2(s - m_i) * v

    for start_n in range(0, M, BLOCK_N):
        key_ok = (start_n + offs_n) < M  # [BLOCK_N]
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_BF16) * qk_scale  # [BLOCK_M, BLOCK_N] fp32
        s = tl.where(key_ok[None, :], s, float("-inf"))  # keys past M: zero probability
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has at least one real key
        alpha = tl.math.exp2(m_i - m_new)  # rescales the old sums to the new max (0 on the first tile)
        p = tl.math.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, UPCAST_BF16)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn

    out = acc / l_i[:, None]  # [BLOCK_M, BLOCK_D]
    o_ptrs = (
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od
    )
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if WRITE_LSE:
        lse_ptrs = Lse + bh.to(tl.int64) * N + offs_m  # lse is contiguous [B, H, N]
        tl.store(lse_ptrs, m_i + tl.math.log2(l_i), mask=row_ok)


@_autotune("map")
@triton.jit
def _attn_map_kernel(
    Q, K, Lse, Amap,  # q [B, H, N, D], k [B, H, M, D], lse [B, H, N] fp32 (base 2), amap [B, N, M]
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_ab, stride_an, stride_am,
    H, N, M,
    qk_scale,  # scale * log2(e), the same logits as pass 1
    inv_heads,  # 1 / H
    HEAD_DIM: tl.constexpr,  # D; constexpr so the head-dim mask folds away when D == BLOCK_D
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two >= 16 (tl.arange and tensor-core minimum)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32); ignored by 16-bit dots
    UPCAST_BF16: tl.constexpr,  # interpreter + bf16 only: see _dot
    BLOCK_M: tl.constexpr,  # query rows of the map tile this program owns
    BLOCK_N: tl.constexpr,  # key columns of the map tile this program owns
):
    # One program: map tile (tile_m, tile_n) of batch b. Key tiles vary fastest so that neighbouring programs
    # share the same query rows (and their LSE) in L2.
    pid = tl.program_id(0)
    num_n_tiles = tl.cdiv(M, BLOCK_N)
    num_m_tiles = tl.cdiv(N, BLOCK_M)
    tile_n = pid % num_n_tiles
    tile_m = (pid // num_n_tiles) % num_m_tiles
    off_b = (pid // (num_n_tiles * num_m_tiles)).to(tl.int64)

    offs_m = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # [BLOCK_M] query rows (x strides: int64)
    offs_n = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # [BLOCK_N] keys
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = offs_m < N
    key_ok = offs_n < M
    d_ok = offs_d < HEAD_DIM

    # Out-of-range rows/keys load zeros: their (finite) p is never stored, and real entries never mix with them
    # (the only reduction here is over heads), so no -inf masking is needed in this pass.
    q_ptrs = Q + off_b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd
    k_ptrs = K + off_b * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    lse_ptrs = Lse + off_b * H * N + offs_m
    q_mask = row_ok[:, None] & d_ok[None, :]
    k_mask = key_ok[:, None] & d_ok[None, :]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # sum over heads of P_h on this tile
    for _ in range(0, H):
        q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
        k = tl.load(k_ptrs, mask=k_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        lse2 = tl.load(lse_ptrs, mask=row_ok, other=0.0)  # [BLOCK_M]
        s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_BF16) * qk_scale  # [BLOCK_M, BLOCK_N]
        acc += tl.math.exp2(s - lse2[:, None])
        q_ptrs += stride_qh
        k_ptrs += stride_kh
        lse_ptrs += N

    a_ptrs = Amap + off_b * stride_ab + offs_m[:, None] * stride_an + offs_n[None, :] * stride_am
    tl.store(a_ptrs, (acc * inv_heads).to(Amap.dtype.element_ty), mask=row_ok[:, None] & key_ok[None, :])


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------


def _block_d(q: torch.Tensor) -> int:
    head_dim = q.shape[-1]
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"q has head dim D={head_dim}; the Triton attention kernel supports D <= {MAX_HEAD_DIM} "
            "(use backend='reference' for larger heads)"
        )
    return max(16, triton.next_power_of_2(head_dim))


def _output(
    name: str, given: torch.Tensor | None, shape, dtype: torch.dtype, inputs: tuple[torch.Tensor, ...], like_q: bool
):
    """``given`` checked against the expected output, or a fresh uninitialised one (every element gets written).

    A fresh ``out`` takes q's layout (``torch.empty_like``), as the op's fake implementation promises, so compiled
    graphs see the strides they traced; a fresh map is contiguous.
    """
    q = inputs[0]
    if given is None:
        return torch.empty_like(q) if like_q else q.new_empty(shape, dtype=dtype)
    if not isinstance(given, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(given).__name__}")
    if tuple(given.shape) != tuple(shape) or given.dtype != dtype or given.device != q.device:
        raise ValueError(
            f"{name} must be a {dtype} tensor of shape {tuple(shape)} on {q.device}, "
            f"got {given.dtype} {tuple(given.shape)} on {given.device}"
        )
    if torch._debug_has_internal_overlap(given) == 1:
        raise ValueError(f"{name} has overlapping elements (e.g. an expanded view); it must be writable element-wise")
    storage = given.untyped_storage().data_ptr()
    if any(t.untyped_storage().data_ptr() == storage for t in inputs):
        raise ValueError(f"{name} shares storage with q, k or v; the kernels read those while writing {name}")
    return given


def _dot_args(dtype: torch.dtype) -> dict:
    upcast = INTERPRETED and dtype == torch.bfloat16
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32", "UPCAST_BF16": upcast}


def _device_ctx(t: torch.Tensor):
    # Triton launches on the current CUDA device and stream: make the tensors' device current.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _forward(q, k, v, scale: float, out, write_lse: bool):
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    block_d = _block_d(q)
    out = _output("out", out, q.shape, q.dtype, (q, k, v), like_q=True)  # [B, H, N, D]
    # lse [B, H, N] fp32, base 2. Plain attention passes a never-written 1-element fp32 placeholder: the same
    # argument dtypes, so both calls share one autotuning result and `out` is bitwise the same with or without map.
    lse = torch.empty((batch, heads, n_q) if write_lse else (1,), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse

    def grid(meta):
        return (triton.cdiv(n_q, meta["BLOCK_M"]) * batch * heads,)

    with _device_ctx(q):
        _attn_fwd_kernel[grid](
            q, k, v, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            heads, n_q, n_k,
            scale * LOG2E,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            WRITE_LSE=write_lse,
            **_dot_args(q.dtype),
        )
    return out, lse


def attention_with_map_triton(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    map_dtype: torch.dtype,
    *,
    out: torch.Tensor | None = None,
    amap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, N, D] in q.dtype, amap [B, N, M] in map_dtype)``; inputs already validated by the op.

    ``out`` / ``amap`` may be preallocated (any strides; e.g. static buffers for CUDA graphs); they are fully
    overwritten. Note that the first call for a new (N, M, D, dtype) autotunes on a GPU, so warm up before
    capturing a graph.
    """
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    amap = _output("amap", amap, (batch, n_q, n_k), map_dtype, (q, k, v), like_q=False)  # [B, N, M], before any launch
    out, lse = _forward(q, k, v, scale, out, write_lse=True)
    if amap.numel() == 0:
        return out, amap
    if heads == 0:
        return out, amap.fill_(float("nan"))  # the mean over no heads, as torch.mean gives

    def grid(meta):
        return (triton.cdiv(n_k, meta["BLOCK_N"]) * triton.cdiv(n_q, meta["BLOCK_M"]) * batch,)

    with _device_ctx(q):
        _attn_map_kernel[grid](
            q, k, lse, amap,
            *q.stride(), *k.stride(), *amap.stride(),
            heads, n_q, n_k,
            scale * LOG2E,
            1.0 / heads,
            HEAD_DIM=head_dim,
            BLOCK_D=_block_d(q),
            **_dot_args(q.dtype),
        )
    return out, amap


def attention_triton(
    q: torch.Tensor,  # [B, H, N, D]
    k: torch.Tensor,  # [B, H, M, D]
    v: torch.Tensor,  # [B, H, M, D]
    scale: float,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` (``[B, H, N, D]``): pass 1 alone, no LSE written."""
    return _forward(q, k, v, scale, out, write_lse=False)[0]
