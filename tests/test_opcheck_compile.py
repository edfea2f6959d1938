"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) through the whole pruning chain."""

import pytest
import torch

import atedm_kernels as ak
from atedm_kernels.backends import OP_KERNELS


def _inputs():
    gen = torch.Generator().manual_seed(7)
    amap = torch.softmax(torch.randn(2, 21, 21, generator=gen), -1)
    keep_idx, prune_idx = ak.select_tokens(torch.rand(2, 21, generator=gen), 8)
    src = ak.similarity_sources(amap, keep_idx, prune_idx)
    x = torch.randn(2, 21, 6, generator=gen)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (13, 9, 9))
    return {
        "attention_with_map": ((q, k, v, None, torch.float32, "reference"), {}),
        "attention": ((q, k, v, 0.5, "reference"), {}),
        "gwpr": ((amap, 5, 0.1, "reference"), {}),
        "gwpr_cross": ((torch.softmax(torch.randn(2, 21, 5, generator=gen), -1), 3, "entropy", "reference"), {}),
        "select_tokens": ((torch.rand(2, 21, generator=gen), 8, "reference"), {}),
        "similarity_sources": ((amap, keep_idx, prune_idx, "reference"), {}),
        "gather_tokens": ((x, keep_idx, "reference"), {}),
        "recover_tokens": ((x[:, :8].contiguous(), keep_idx, prune_idx, src, "reference"), {}),
        # SiTo's split of a 3 x 7 grid into 2 x 2 patches, with noise (declared in atedm_kernels/ops.py)
        "sito_select": ((torch.randn(2, 21, 6, generator=gen), 3, 7, 2, 2, 0.5, torch.rand(2, 21, generator=gen), 0.1,
                         "reference"), {}),
    }


ALL_OPS = sorted(_inputs())


def test_all_ops_registered():
    for name in ALL_OPS:
        assert hasattr(torch.ops.atedm, name), name


@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(name):
    args, kwargs = _inputs()[name]
    torch.library.opcheck(getattr(torch.ops.atedm, name).default, args, kwargs)


def _gpu_backend(name: str) -> str:
    """The op's GPU kernel family from the backends' table; ops without one run their reference on CUDA tensors."""
    return next((kernel for kernel in OP_KERNELS[name] if kernel in ("triton", "cuda")), "reference")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck_on_cuda(name):
    """opcheck with CUDA tensors through each op's GPU kernel: the fake, the schema and the dispatcher agree with
    what the Triton kernel and the CUDA extension return."""
    args, kwargs = _inputs()[name]
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args[:-1]) + (_gpu_backend(name),)
    torch.library.opcheck(getattr(torch.ops.atedm, name).default, args, kwargs)


def _prune_and_recover(q, k, v, x, keep: int):
    out, amap = ak.attention_with_map(q, k, v)  # [B, H, N, D], [B, N, N]
    scores = ak.gwpr(amap, 4)  # [B, N]
    keep_idx, prune_idx = ak.select_tokens(scores, keep)
    src = ak.similarity_sources(amap, keep_idx, prune_idx)
    kept = ak.gather_tokens(x + out.mean(1), keep_idx) * 2.0  # [B, K, C]
    return ak.recover_tokens(kept, keep_idx, prune_idx, src)  # [B, N, C]


def test_compile_fullgraph_through_the_chain():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 19, 8, generator=gen) for _ in range(3))
    x = torch.randn(2, 19, 8, generator=gen)
    torch._dynamo.reset()
    compiled = torch.compile(_prune_and_recover, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, x, 7), _prune_and_recover(q, k, v, x, 7), rtol=0, atol=0)
