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
dtypes), among those that fit the device's shared memory (``_TILES`` says how they were chosen); under
``TRITON_INTERPRET=1`` (CPU tests) each uses one small fixed configuration, because autotuning interpreted kernels
would only burn time.
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


# GPU tile candidates, (BLOCK_M, BLOCK_N, num_warps, num_stages), per kernel and tile class; timing on the device
# picks among those whose shared memory fits it (see _autotune). Chosen from compiles for sm_75, sm_80, sm_89, sm_90
# and sm_120 with Triton 3.9 (benchmarks/triton_compile_matrix.py; table in
# benchmarks/results/triton_compile_matrix.json, specialised as B=2, H=10, N=M=4096): no tile of the "mma" classes
# spills registers at D = 40, 64, 80 or 128 on sm_80, sm_89, sm_90 or sm_120, and every (kernel, dtype, D, target)
# keeps at least one tile that fits the target's shared memory. What the measurements showed and these lists avoid:
# (128, 64, 4, 3) and (64, 64, 4, 3) spill at D = 80/128 on sm_80/89, 128 x 128 tiles spill at D >= 80 except on
# sm_90; no 16-bit tile compiles without spills for sm_75, where the small tiles below spill least; fp32 at
# D > 128 spilled 4-20 KB in 32 x 32 and larger tiles and most of them need more than 99 KiB (the fp32 lists are
# the exact path, not the fast one; theirs spill at most ~1 KB).
_TILES = {
    # Pass 1, 16-bit tensor-core dots (sm_80+), D <= 128: 8 warps over a tall query tile, 3 stages of K/V loads.
    ("fwd", "mma"): [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 8, 3)],
    # Pass 2, same: the [BLOCK_M, BLOCK_N] fp32 head sum stays in registers over the head loop.
    ("map", "mma"): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2)],
    # D in 129..256: two stages at most; (32, 64, 4, 2) and (64, 32, 4, 1) fit a 99 KiB block.
    ("fwd", "mma_wide"): [(64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 1)],
    ("map", "mma_wide"): [(64, 64, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2)],
    # fp32 IEEE dots (FMA units, operands in registers), and 16-bit dots on sm_75: small tiles.
    ("fwd", "small"): [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("map", "small"): [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
    ("fwd", "small_wide"): [(32, 16, 4, 2), (16, 32, 4, 2), (16, 16, 4, 1)],
    ("map", "small_wide"): [(32, 16, 4, 2), (16, 16, 4, 2), (32, 16, 4, 1)],
}

# Shared memory per block a kernel may use (the opt-in maximum, bytes) by compute capability, from the CUDA C++
# Programming Guide's table of technical specifications. The compile-matrix check uses it; on a GPU the pruning
# reads the device's own figure.
SHARED_MEMORY_PER_BLOCK = {
    75: 64 * 1024,  # T4, RTX 20
    80: 163 * 1024,  # A100
    86: 99 * 1024,  # RTX 30, A10, A40
    89: 99 * 1024,  # RTX 40, L4, L40
    90: 227 * 1024,  # H100, H200
    120: 99 * 1024,  # RTX 50
}


def block_d(head_dim: int) -> int:
    """The tile's head dim: ``head_dim`` rounded up to a power of two, at least 16 (tl.arange and tensor cores)."""
    return max(16, triton.next_power_of_2(head_dim))


def _mma(dtype: torch.dtype, capability: int) -> bool:
    """Whether the dots run as 16-bit tensor-core MMAs with the Ampere-and-later tiles (``capability``: 80, 90...)."""
    return dtype != torch.float32 and capability >= 80


def tile_class(dtype: torch.dtype, tile_d: int, capability: int) -> str:
    """Which tile list serves ``dtype`` at tile head dim ``tile_d`` (a ``block_d``) on compute capability
    ``capability`` (major * 10 + minor)."""
    return ("mma" if _mma(dtype, capability) else "small") + ("_wide" if tile_d > 128 else "")


def tile_candidates(kernel: str, dtype: torch.dtype, tile_d: int, capability: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates of ``kernel`` ("fwd" or "map") for one call."""
    return _TILES[(kernel, tile_class(dtype, tile_d, capability))]


def shared_memory_estimate(kernel: str, tile: tuple[int, int, int, int], tile_d: int, dtype: torch.dtype) -> int:
    """An upper bound of the shared memory (bytes) Triton gives ``kernel`` with ``tile``::

        fwd:  num_stages * 2 * BLOCK_N * tile_d * e  +  BLOCK_M * tile_d * e  +  1 KiB
        map:  num_stages * (BLOCK_M + BLOCK_N) * tile_d * e                   +  1 KiB

    ``e`` the element size: the pipelined operand tiles (K and V in pass 1, q and k in pass 2), pass 1's query tile
    (staged in shared memory for wgmma on sm_90, and by single-stage and FMA kernels elsewhere) and scratch for
    reductions and layout conversions. Exact on sm_90; the compile-matrix test checks it against Triton's figure
    for every compiled config and target.
    """
    block_m, block_n, _, stages = tile
    e = dtype.itemsize
    if kernel == "map":
        return stages * (block_m + block_n) * tile_d * e + 1024
    return stages * 2 * block_n * tile_d * e + block_m * tile_d * e + 1024


def _device_shared_memory() -> int:
    """The current CUDA device's opt-in shared memory per block (bytes), as Triton checks it at launch."""
    device = torch.cuda.current_device()
    return triton.runtime.driver.active.utils.get_device_properties(device)["max_shared_mem"]


def _autotune(kernel: str):
    """``triton.autotune`` over ``kernel``'s tiles, keyed on (N, M, D) (Triton adds the argument dtypes); the
    candidates are narrowed to the call's tile class on the current device and to those whose shared memory
    (``shared_memory_estimate``) fits that device's opt-in maximum per block. Under TRITON_INTERPRET=1: one fixed
    small tile (32 x 32, so the CPU tests' N, M of 30..200 cross several tiles and tails), no tuning."""
    if INTERPRETED:
        return triton.autotune(configs=[triton.Config({"BLOCK_M": 32, "BLOCK_N": 32})], key=[])

    def prune(configs, named_args, **kwargs):
        dtype, tile_d = named_args["Q"].dtype, kwargs["BLOCK_D"]
        major, minor = torch.cuda.get_device_capability()
        capability = 10 * major + minor
        limit = _device_shared_memory()
        tiles = tile_candidates(kernel, dtype, tile_d, capability)
        fitting = [t for t in tiles if shared_memory_estimate(kernel, t, tile_d, dtype) <= limit]
        if not fitting:
            raise RuntimeError(
                f"no Triton attention tile for {dtype} at head dim {kwargs['HEAD_DIM']} fits this GPU's "
                f"{limit // 1024} KiB of shared memory per block (use backend='reference')"
            )
        return [_config(t) for t in fitting]

    tiles = dict.fromkeys(t for (name, _), group in _TILES.items() if name == kernel for t in group)  # unique, ordered
    configs = [_config(t) for t in tiles]
    return triton.autotune(configs=configs, key=["N", "M", "HEAD_DIM"], prune_configs_by={"early_config_prune": prune})


def _config(tile: tuple[int, int, int, int]) -> triton.Config:
    block_m, block_n, num_warps, num_stages = tile
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


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
    ROW_ALIGN: tl.constexpr,  # a power of two dividing every stride but the head dim's: see row_align_of_strides
    STATIC_M: tl.constexpr,  # interpreter only: M as a Python int for the key loop (see loop_bound); else 0
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

    q_rows = tl.multiple_of(off_b * stride_qb + off_h * stride_qh + offs_m * stride_qn, ROW_ALIGN)  # [BLOCK_M]
    k_rows = tl.multiple_of(off_b * stride_kb + off_h * stride_kh + offs_n * stride_kn, ROW_ALIGN)  # [BLOCK_N]
    v_rows = tl.multiple_of(off_b * stride_vb + off_h * stride_vh + offs_n * stride_vn, ROW_ALIGN)  # [BLOCK_N]
    o_rows = tl.multiple_of(off_b * stride_ob + off_h * stride_oh + offs_m * stride_on, ROW_ALIGN)  # [BLOCK_M]
    q_ptrs = Q + q_rows[:, None] + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    k_ptrs = K + k_rows[:, None] + offs_d[None, :] * stride_kd
    v_ptrs = V + v_rows[:, None] + offs_d[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max of the base-2 logits
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # running sum of exp2(s - m_i) * v

    for start_n in range(0, M if STATIC_M == 0 else STATIC_M, BLOCK_N):
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
    o_ptrs = Out + o_rows[:, None] + offs_d[None, :] * stride_od
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
    ROW_ALIGN: tl.constexpr,  # divides every stride of q and k but the head dim's: see row_align_of_strides
    STATIC_H: tl.constexpr,  # interpreter only: H as a Python int for the head loop (see loop_bound); else 0
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
    q_rows = offs_m * stride_qn  # [BLOCK_M] int64 row offsets within a head
    k_rows = offs_n * stride_kn  # [BLOCK_N]
    q_head = off_b * stride_qb  # int64 offset of head h of batch b, advanced by one head per step
    k_head = off_b * stride_kb
    lse_ptrs = Lse + off_b * H * N + offs_m  # [BLOCK_M] (lse is contiguous [B, H, N])
    q_mask = row_ok[:, None] & d_ok[None, :]
    k_mask = key_ok[:, None] & d_ok[None, :]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # sum over heads of P_h on this tile
    for _ in range(0, H if STATIC_H == 0 else STATIC_H):
        q_ptrs = Q + tl.multiple_of(q_head + q_rows, ROW_ALIGN)[:, None] + offs_d[None, :] * stride_qd
        k_ptrs = K + tl.multiple_of(k_head + k_rows, ROW_ALIGN)[:, None] + offs_d[None, :] * stride_kd
        q = tl.load(q_ptrs, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
        k = tl.load(k_ptrs, mask=k_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        lse2 = tl.load(lse_ptrs, mask=row_ok, other=0.0)  # [BLOCK_M]
        s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_BF16) * qk_scale  # [BLOCK_M, BLOCK_N]
        acc += tl.math.exp2(s - lse2[:, None])
        q_head += stride_qh
        k_head += stride_kh
        lse_ptrs += N

    a_ptrs = Amap + off_b * stride_ab + offs_m[:, None] * stride_an + offs_n[None, :] * stride_am
    tl.store(a_ptrs, (acc * inv_heads).to(Amap.dtype.element_ty), mask=row_ok[:, None] & key_ok[None, :])


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------


def _checked_block_d(q: torch.Tensor) -> int:
    head_dim = q.shape[-1]
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"q has head dim D={head_dim}; the Triton attention kernel supports D <= {MAX_HEAD_DIM} "
            "(use backend='reference' for larger heads)"
        )
    return block_d(head_dim)


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


def row_align_of_strides(*strides: tuple[int, ...]) -> int:
    """The largest power of two up to 16 that divides every stride in ``strides`` except each tuple's last (the head
    dim's), in elements.

    The kernels declare their row offsets multiples of it (``ROW_ALIGN``), so that with 16-byte-aligned rows (D = 40
    in fp16: 80-byte rows) Triton emits vector and asynchronous loads. Triton's own launcher only marks strides that
    are multiples of 16, and without the declaration such a kernel runs unvectorised and spills registers.
    """
    align = 16
    for tensor_strides in strides:
        for stride in tensor_strides[:-1]:
            align = math.gcd(align, stride)
    return align


def dot_args(dtype: torch.dtype, interpreted: bool = INTERPRETED) -> dict:
    """The ``DOT_PRECISION`` and ``UPCAST_BF16`` constexprs for inputs of ``dtype``."""
    upcast = interpreted and dtype == torch.bfloat16
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32", "UPCAST_BF16": upcast}


def loop_bound(value: int, interpreted: bool = INTERPRETED) -> int:
    """The ``STATIC_M`` / ``STATIC_H`` constexpr: ``value`` when interpreted, 0 (loop to the runtime argument) when
    compiled. Triton 3.6's interpreter passes a runtime integer to ``range()`` as a 1-element numpy array, which numpy
    2.4 and later refuse to convert to an index; a constexpr reaches it as a Python int. Compiled kernels keep the
    runtime bound, so no size is baked into a binary."""
    return int(value) if interpreted else 0


def _device_ctx(t: torch.Tensor):
    # Triton launches on the current CUDA device and stream: make the tensors' device current.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _forward(q, k, v, scale: float, out, write_lse: bool):
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    tile_d = _checked_block_d(q)
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
            BLOCK_D=tile_d,
            WRITE_LSE=write_lse,
            ROW_ALIGN=row_align_of_strides(q.stride(), k.stride(), v.stride(), out.stride()),
            STATIC_M=loop_bound(n_k),
            **dot_args(q.dtype),
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
            BLOCK_D=_checked_block_d(q),
            ROW_ALIGN=row_align_of_strides(q.stride(), k.stride()),
            STATIC_H=loop_bound(heads),
            **dot_args(q.dtype),
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
