"""Every reference op against the independent float64 brute force of tests/brute_force.py (float32 inputs,
1e-6 relative), on fresh random inputs of odd sizes, with the tie rules exercised exactly."""

import pytest
import torch

import atedm_kernels as ak
from tests import brute_force as bf

RTOL = 1e-6


def random_map(gen, batch, n, m=None, sharp=3.0, dtype=torch.float32):
    """A row-stochastic attention-like map [B, N, M] with varied row entropy."""
    logits = torch.randn(batch, n, m or n, generator=gen) * sharp
    return torch.softmax(logits, dim=-1).to(dtype)


def split(gen, batch, n, keep):
    scores = torch.rand(batch, n, generator=gen)
    return ak.select_tokens(scores, keep, backend="reference")


@pytest.mark.parametrize("shape", [(1, 1, 5, 7, 8), (2, 3, 17, 17, 16), (2, 2, 33, 20, 12), (3, 1, 9, 40, 32)])
def test_attention_with_map_matches_float64(gen, shape):
    batch, heads, n, m, d = shape
    q, k, v = (torch.randn(batch, heads, s, d, generator=gen) for s in (n, m, m))
    out, amap = ak.attention_with_map(q, k, v, map_dtype=torch.float32, backend="reference")
    ref_out, ref_map = bf.attention_with_map(q, k, v)
    torch.testing.assert_close(out.double(), ref_out, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(amap.double(), ref_map, rtol=RTOL, atol=1e-7)
    assert out.dtype == torch.float32 and amap.shape == (batch, n, m)


def test_attention_with_map_default_map_dtype_and_scale(gen):
    q, k, v = (torch.randn(2, 2, 11, 8, generator=gen) for _ in range(3))
    out, amap = ak.attention_with_map(q, k, v, scale=0.3, backend="reference")
    ref_out, ref_map = bf.attention_with_map(q, k, v, scale=0.3)
    assert amap.dtype == torch.float16
    torch.testing.assert_close(amap.double(), ref_map, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.double(), ref_out, rtol=RTOL, atol=1e-6)
    torch.testing.assert_close(amap.float().sum(-1), torch.ones(2, 11), rtol=0, atol=2e-3)


def test_attention_equals_attention_with_map_output(gen):
    q, k, v = (torch.randn(2, 3, 13, 8, generator=gen) for _ in range(3))
    out, _ = ak.attention_with_map(q, k, v, backend="reference")
    assert torch.equal(ak.attention(q, k, v, backend="reference"), out)


@pytest.mark.parametrize("batch,n,iters,damping", [(1, 1, 3, 0.0), (2, 13, 5, 0.0), (3, 31, 10, 0.15), (2, 9, 1, 0.5)])
def test_gwpr_matches_float64(gen, batch, n, iters, damping):
    amap = random_map(gen, batch, n)
    scores = ak.gwpr(amap, iters, damping, backend="reference")
    assert scores.dtype == torch.float32 and scores.shape == (batch, n)
    torch.testing.assert_close(scores.double(), bf.gwpr(amap, iters, damping), rtol=RTOL, atol=1e-9)
    torch.testing.assert_close(scores.sum(-1).double(), torch.ones(batch, dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gwpr_half_maps_accumulate_in_float32(gen, dtype):
    amap = random_map(gen, 2, 21, dtype=dtype)
    scores = ak.gwpr(amap, 6, backend="reference")
    torch.testing.assert_close(scores.double(), bf.gwpr(amap, 6), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("batch,n,keep", [(1, 1, 1), (2, 17, 1), (2, 17, 17), (3, 50, 19), (2, 129, 48)])
def test_select_tokens_matches_brute_force(gen, batch, n, keep):
    scores = torch.rand(batch, n, generator=gen)
    keep_idx, prune_idx = ak.select_tokens(scores, keep, backend="reference")
    ref_keep, ref_prune = bf.select_tokens(scores, keep)
    assert torch.equal(keep_idx, ref_keep) and torch.equal(prune_idx, ref_prune)
    assert keep_idx.dtype == prune_idx.dtype == torch.int64


def test_select_tokens_ties_go_to_lower_index(gen):
    # Few distinct values: nearly every boundary is a tie.
    scores = torch.randint(0, 3, (4, 37), generator=gen).float()
    for keep in (1, 5, 12, 36):
        keep_idx, prune_idx = ak.select_tokens(scores, keep, backend="reference")
        ref_keep, ref_prune = bf.select_tokens(scores, keep)
        assert torch.equal(keep_idx, ref_keep) and torch.equal(prune_idx, ref_prune)
    constant = torch.full((2, 10), 0.25)
    keep_idx, prune_idx = ak.select_tokens(constant, 4, backend="reference")
    assert keep_idx.tolist() == [[0, 1, 2, 3]] * 2 and prune_idx.tolist() == [[4, 5, 6, 7, 8, 9]] * 2


@pytest.mark.parametrize("batch,n,keep", [(1, 2, 1), (2, 19, 7), (3, 64, 24), (2, 45, 45)])
def test_similarity_sources_matches_brute_force(gen, batch, n, keep):
    amap = random_map(gen, batch, n)
    keep_idx, prune_idx = split(gen, batch, n, keep)
    src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="reference")
    assert src.shape == (batch, n - keep) and src.dtype == torch.int64
    assert torch.equal(src, bf.similarity_sources(amap, keep_idx, prune_idx))


def test_similarity_sources_ties_go_to_lowest_position(gen):
    amap = random_map(gen, 2, 23)
    amap[:, 5] = amap[:, 2]  # duplicated rows: kept tokens 2 and 5 tie on every column
    amap[:, 11] = amap[:, 2]
    amap = amap.to(torch.float16)  # coarse values add more ties
    keep_idx = torch.tensor([[2, 5, 11, 14, 20]] * 2)
    prune_idx = torch.tensor([[i for i in range(23) if i not in (2, 5, 11, 14, 20)]] * 2)
    src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="reference")
    assert torch.equal(src, bf.similarity_sources(amap, keep_idx, prune_idx))
    assert not (src == 1).any() and not (src == 2).any()  # positions 1 and 2 only ever tie with position 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,n,keep,channels", [(1, 1, 1, 3), (2, 37, 13, 5), (3, 64, 64, 16)])
def test_gather_and_recover_match_brute_force(gen, dtype, batch, n, keep, channels):
    x = torch.randn(batch, n, channels, generator=gen).to(dtype)
    amap = random_map(gen, batch, n)
    keep_idx, prune_idx = split(gen, batch, n, keep)
    kept = ak.gather_tokens(x, keep_idx, backend="reference")
    assert torch.equal(kept, bf.gather_tokens(x, keep_idx))
    src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="reference")
    restored = ak.recover_tokens(kept, keep_idx, prune_idx, src, backend="reference")
    assert torch.equal(restored, bf.recover_tokens(kept, keep_idx, prune_idx, src))
    # Every kept token of the original x comes back exactly, in place.
    original_kept = torch.stack([x[b, keep_idx[b]] for b in range(batch)])
    assert torch.equal(restored.gather(1, keep_idx[..., None].expand(-1, -1, channels)), original_kept)


@pytest.mark.parametrize("kind", ["entropy", "hard_clip", "soft_clip", "power"])
def test_gwpr_cross_matches_float64(gen, kind):
    ca_map = random_map(gen, 2, 15, m=6, sharp=2.5)
    scores = ak.gwpr_cross(ca_map, 4, kind, backend="reference")
    assert scores.shape == (2, 15) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), bf.gwpr_cross(ca_map, 4, kind), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2), rtol=1e-5, atol=0)


def test_non_contiguous_inputs(gen):
    x = torch.randn(2, 8, 30, generator=gen).transpose(1, 2)  # [B, N=30, C=8], non-contiguous
    amap = random_map(gen, 2, 30).transpose(1, 2).contiguous().transpose(1, 2)
    scores = ak.gwpr(amap, 4, backend="reference")
    torch.testing.assert_close(scores.double(), bf.gwpr(amap, 4), rtol=RTOL, atol=1e-9)
    keep_idx, prune_idx = ak.select_tokens(scores, 11, backend="reference")
    assert torch.equal(ak.gather_tokens(x, keep_idx, backend="reference"), bf.gather_tokens(x, keep_idx))


def test_similarity_sources_ignores_nan(gen):
    amap = random_map(gen, 1, 9)
    keep_idx, prune_idx = torch.tensor([[1, 4, 6]]), torch.tensor([[0, 2, 3, 5, 7, 8]])
    amap[0, 1, 2] = float("nan")  # NaN at the true maximum's competitor: never wins
    amap[0, 4, 2] = 0.0
    amap[0, 6, 2] = 0.5
    amap[0, [1, 4, 6], 3] = float("nan")  # a column of NaN: position 0
    src = ak.similarity_sources(amap, keep_idx, prune_idx, backend="reference")
    assert src[0, 1] == 2 and src[0, 2] == 0
