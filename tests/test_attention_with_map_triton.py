"""The fused Triton attention + head-averaged map (``atedm_kernels.kernels.triton_attention``).

Without CUDA the kernels run on CPU tensors under the Triton interpreter (small shapes). With CUDA they run
compiled on the GPU: the same small cases, plus the SD-XL shapes marked ``gpu``.

Accuracy follows FlashAttention's tests: the kernel's error against the float64 brute force of
``tests/brute_force.py`` (not the package's reference) must be at most twice the error of a plain PyTorch
computation in the input's precision, plus a small absolute slack; fp32 inputs must also match float64 to ~1e-5,
and every map to within its own dtype's rounding.
"""

import os

import torch

# Under TRITON_INTERPRET=1, triton.jit builds interpreted functions instead of compiled ones, at decoration time:
# for triton.language's own jit'd helpers (tl.sum, tl.max, tl.cdiv, ...) when triton.language is first imported,
# for our kernels when their module is. So the variable must be set before anything imports triton.language, and
# importing diffusers does (tests/conftest.py does that): set it in the environment or at the top of conftest.py.
# Setting it here too is enough only when nothing imported triton.language earlier. Set it only where there is no
# GPU: with a GPU it would make every Triton kernel of the pytest process (GPU tests, benchmarks) run interpreted.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import atedm_kernels  # noqa: E402
from atedm_kernels.kernels import triton_attention as ta  # noqa: E402
from tests import brute_force as bf  # noqa: E402

if not torch.cuda.is_available():
    from triton.runtime.interpreter import InterpretedFunction

    if not (ta.INTERPRETED and isinstance(triton.language.standard.sum, InterpretedFunction)):
        pytest.skip(
            "triton.language (or atedm_kernels.kernels.triton_attention) was imported before TRITON_INTERPRET=1 "
            "was set, so the Triton kernels are compiled and cannot run on CPU tensors: run with "
            "TRITON_INTERPRET=1 in the environment, or set it at the top of tests/conftest.py",
            allow_module_level=True,
        )

DEVICE = "cpu" if ta.INTERPRETED else "cuda"


def _qkv(shape, dtype, seed=0, transposed=False):
    """q [B,H,N,D], k/v [B,H,M,D]; ``transposed`` makes them [B,N,H,D] storage permuted (non-contiguous)."""
    batch, heads, n_q, n_k, head_dim = shape
    gen = torch.Generator().manual_seed(seed)

    def make(n):
        if transposed:
            x = torch.randn(batch, n, heads, head_dim, generator=gen).permute(0, 2, 1, 3)
        else:
            x = torch.randn(batch, heads, n, head_dim, generator=gen)
        return x.to(DEVICE, dtype)

    return make(n_q), make(n_k), make(n_k)


def _torch_same_precision(q, k, v, scale):
    """What plain PyTorch gets in the input's dtype: logits rounded to it, probabilities cast to it for P v."""
    out = torch.empty_like(q)  # [B, H, N, D]
    for h in range(q.shape[1]):
        logits = torch.matmul(q[:, h], k[:, h].transpose(-1, -2)).float() * scale  # [B, N, M]
        out[:, h] = torch.matmul(torch.softmax(logits, dim=-1).to(q.dtype), v[:, h])
    return out


def _max_err(x, ref):
    return (x.double() - ref).abs().max().item()


def _check_accuracy(q, k, v, out, amap, scale, map_dtype):
    out64, map64 = bf.attention_with_map(q, k, v, scale)
    out_pt = _torch_same_precision(q, k, v, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert amap.shape == (q.shape[0], q.shape[2], k.shape[2]) and amap.dtype == map_dtype
    # Slack: one rounding of the largest value in the output's dtype (the two roundings may fall either way).
    out_slack = 1e-5 + torch.finfo(q.dtype).eps * out64.abs().max().item()
    map_slack = 1e-5 + torch.finfo(map_dtype).eps * map64.max().item()
    err_out, err_out_pt = _max_err(out, out64), _max_err(out_pt, out64)
    assert err_out <= 2 * err_out_pt + out_slack, f"out error {err_out:.3g} vs PyTorch's {err_out_pt:.3g}"
    if q.dtype == torch.float32:
        assert err_out <= 1e-5, f"fp32 out error {err_out:.3g}"
    # The map is held to more than "2x PyTorch", whatever the input dtype: the kernel's logits are exact products
    # summed in fp32 and its probabilities never pass through a 16-bit type, so only the map's own rounding remains.
    err_map = _max_err(amap, map64)
    assert err_map <= map_slack, f"amap error {err_map:.3g}"
    # Rows of the map are probability distributions.
    row_sums = amap.double().sum(dim=-1)
    assert (row_sums - 1).abs().max().item() <= torch.finfo(map_dtype).eps + 1e-5


# (B, H, N, M, D), input dtype, map dtype, non-contiguous [B, N, H, D] storage
CASES = [
    ((2, 3, 37, 53, 32), torch.float32, torch.float32, False),
    ((2, 3, 37, 53, 32), torch.float16, torch.float16, True),
    ((2, 3, 100, 100, 64), torch.bfloat16, torch.float16, False),
    ((2, 3, 100, 100, 64), torch.float32, torch.float16, True),
    ((2, 3, 130, 70, 64), torch.float16, torch.float32, False),
    ((1, 2, 40, 33, 128), torch.bfloat16, torch.float32, False),
    ((1, 2, 24, 29, 40), torch.float16, torch.float16, False),  # SD-1.5's head dim: padded to 64, masked
    ((2, 2, 5, 200, 32), torch.bfloat16, torch.bfloat16, True),  # long rows: the online softmax's rescaling
    ((1, 1, 1, 1, 16), torch.float32, torch.float32, False),  # one query, one key
    ((1, 1, 20, 18, 256), torch.float16, torch.float32, False),  # the widest head dim the kernel takes
]


@pytest.mark.parametrize("shape,dtype,map_dtype,transposed", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_float64(shape, dtype, map_dtype, transposed):
    q, k, v = _qkv(shape, dtype, transposed=transposed)
    assert q.is_contiguous() != transposed
    scale = shape[-1] ** -0.5
    out, amap = ta.attention_with_map_triton(q, k, v, scale, map_dtype)
    _check_accuracy(q, k, v, out, amap, scale, map_dtype)


def test_preallocated_outputs_fully_written_and_deterministic():
    shape, dtype, map_dtype = (2, 3, 37, 53, 32), torch.float16, torch.float16
    q, k, v = _qkv(shape, dtype, seed=1)
    out = torch.full_like(q, float("nan"))
    # A strided amap: [B, N, M] view of a [B, M, N] buffer.
    amap = torch.full((2, 53, 37), float("nan"), dtype=map_dtype, device=DEVICE).transpose(1, 2)
    res_out, res_map = ta.attention_with_map_triton(q, k, v, 0.2, map_dtype, out=out, amap=amap)
    assert res_out is out and res_map is amap
    assert not out.isnan().any() and not amap.isnan().any()
    out2, amap2 = ta.attention_with_map_triton(q, k, v, 0.2, map_dtype)
    assert torch.equal(out, out2) and torch.equal(amap, amap2)  # bitwise: deterministic, strides honoured
    plain = torch.full_like(q, float("nan"))
    assert ta.attention_triton(q, k, v, 0.2, out=plain) is plain
    assert torch.equal(plain, out2)  # the map-free path computes the very same out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter, on the NaN row
def test_nan_in_q_propagates_to_its_row_only():
    q, k, v = _qkv((2, 3, 37, 53, 32), torch.float32, seed=2)
    q[0, 1, 5, 3] = float("nan")
    out, amap = ta.attention_with_map_triton(q, k, v, 0.2, torch.float32)
    assert out[0, 1, 5].isnan().all() and amap[0, 5].isnan().all()
    assert out.isnan().sum() == out.shape[-1] and amap.isnan().sum() == amap.shape[-1]


def test_dispatch_through_ops():
    q, k, v = _qkv((1, 2, 20, 36, 32), torch.float16, seed=3)
    out, amap = atedm_kernels.attention_with_map(q, k, v, backend="triton")
    ref_out, ref_map = ta.attention_with_map_triton(q, k, v, 32**-0.5, torch.float16)
    assert torch.equal(out, ref_out) and torch.equal(amap, ref_map)
    assert torch.equal(atedm_kernels.attention(q, k, v, backend="triton"), ref_out)


def test_rejects_unsupported_head_dim_and_bad_outputs():
    q = torch.zeros(1, 1, 4, 512, device=DEVICE)
    with pytest.raises(ValueError, match="^q "):
        ta.attention_with_map_triton(q, q, q, 0.1, torch.float16)
    q = torch.zeros(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="^out "):
        ta.attention_triton(q, q, q, 0.1, out=torch.empty(1, 1, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match="^amap "):
        ta.attention_with_map_triton(q, q, q, 0.1, torch.float16, amap=torch.empty(1, 4, 4, device=DEVICE))


def test_rejects_outputs_that_alias_inputs_or_overlap():
    q, k, v = _qkv((1, 2, 12, 12, 16), torch.float32, seed=4)
    with pytest.raises(ValueError, match="^out .*storage"):
        ta.attention_triton(q, k, v, 0.25, out=q)
    with pytest.raises(ValueError, match="^amap .*overlapping"):
        ta.attention_with_map_triton(q, k, v, 0.25, torch.float32,
                                     amap=torch.empty(1, 12, 1, device=DEVICE).expand(1, 12, 12))


def test_fresh_out_keeps_q_layout_as_the_fake_promises():
    """The pruning layer passes [B, N, H, D].transpose(1, 2) views: out must have the strides torch.compile traced."""
    q, k, v = _qkv((2, 3, 11, 9, 16), torch.float16, seed=5, transposed=True)  # [B, H, N, D] views of [B, N, H, D]
    out, amap = atedm_kernels.attention_with_map(q, k, v, backend="triton")
    assert out.stride() == torch.empty_like(q).stride() and amap.is_contiguous()
    torch.library.opcheck(torch.ops.atedm.attention_with_map.default, (q, k, v, None, None, "triton"))
    torch.library.opcheck(torch.ops.atedm.attention.default, (q, k, v, None, "triton"))


# --------------------------------------------------------------------------------------------------------------
# SD-XL shapes on the GPU
# --------------------------------------------------------------------------------------------------------------


def _reference_f32_chunked(q, k, v, scale):
    """float32 attention and map, one head at a time (peak extra memory one [B, N, M] fp32 buffer)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    amap = torch.zeros(q.shape[0], q.shape[2], k.shape[2], dtype=torch.float32, device=q.device)
    for h in range(q.shape[1]):
        probs = torch.softmax(torch.matmul(q[:, h].float(), k[:, h].float().transpose(-1, -2)) * scale, dim=-1)
        out[:, h] = torch.matmul(probs, v[:, h].float())
        amap += probs
    return out, amap / q.shape[1]


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA (and compiled, not interpreted, Triton kernels)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 10, 4096, 4096, 64), (2, 20, 1024, 1024, 64)], ids=["A2-4096", "A10-1024"])
def test_sdxl_shapes(shape, dtype):
    map_dtype = torch.float16
    q, k, v = _qkv(shape, dtype, seed=4, transposed=True)  # diffusers' [B, N, H, D] layout
    scale = shape[-1] ** -0.5
    out, amap = ta.attention_with_map_triton(q, k, v, scale, map_dtype)
    out32, map32 = _reference_f32_chunked(q, k, v, scale)
    out_pt = _torch_same_precision(q, k, v, scale)
    out_slack = 1e-6 + torch.finfo(dtype).eps * out32.abs().max().item()
    map_slack = 1e-6 + torch.finfo(map_dtype).eps * map32.max().item()
    assert _max_err(out, out32) <= 2 * _max_err(out_pt, out32) + out_slack
    assert _max_err(amap, map32) <= map_slack  # fp32 logits and probabilities: only the map's rounding
    assert (amap.float().sum(-1) - 1).abs().max().item() <= torch.finfo(map_dtype).eps
    out2, amap2 = ta.attention_with_map_triton(q, k, v, scale, map_dtype)
    assert torch.equal(out, out2) and torch.equal(amap, amap2)
    assert torch.equal(ta.attention_triton(q, k, v, scale), out)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA (and compiled, not interpreted, Triton kernels)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("head_dim", [40, 64, 80, 128])
def test_head_dims_and_dtypes_at_odd_sizes(head_dim, dtype):
    """Every head dim of the SD family (40: SD 1.x, 64: SD-XL, 80 and 128) in every input dtype, at sizes that fill
    no tile (N = 333, M = 77 + 200), compiled for the GPU and judged against float64 like the interpreter cases."""
    q, k, v = _qkv((2, 3, 333, 277, head_dim), dtype, seed=head_dim, transposed=head_dim == 80)
    scale = head_dim**-0.5
    out, amap = ta.attention_with_map_triton(q, k, v, scale, torch.float32)
    _check_accuracy(q, k, v, out, amap, scale, torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA (and compiled, not interpreted, Triton kernels)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 10, 4096, 77, 64), (2, 20, 1024, 77, 64)], ids=["A2-4096x77", "A10-1024x77"])
def test_sdxl_cross_attention_shapes(shape, dtype):
    """SD-XL's cross-attention to the 77 text tokens (the map the cross-attention G-WPR variants read)."""
    q, k, v = _qkv(shape, dtype, seed=5, transposed=True)
    scale = shape[-1] ** -0.5
    out, amap = ta.attention_with_map_triton(q, k, v, scale, torch.float16)
    _check_accuracy(q, k, v, out, amap, scale, torch.float16)

