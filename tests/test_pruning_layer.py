"""One AT-EDM pruning layer against a hand-written float64 walk through the paper's steps, on a small diffusers
``Transformer2DModel``: dense first layer, head-averaged map (fp16, the op's default), G-WPR, top-K, gather after
the feed-forward, later layers and ``proj_out`` on K tokens, similarity-based copy, residual add."""

import pytest
import torch

from atedm_kernels.sdxl import AtEdmConfig
from atedm_kernels.sdxl.pruning import BlockPruner
from tests import brute_force as bf


def _transformer(layers: int):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(0)
    return Transformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=24, num_layers=layers, cross_attention_dim=12,
        use_linear_projection=True, norm_num_groups=4,
    ).eval()


def _layer(block, h, context):  # one BasicTransformerBlock, dense, in float64 via the module's own sublayers
    def attention(attn, x, ctx):
        heads = attn.heads
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        out, probs_mean = bf.attention_with_map(split(q), split(k), split(v), attn.scale)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return attn.to_out[0](out), probs_mean

    a1, amap = attention(block.attn1, block.norm1(h), block.norm1(h))
    h = h + a1
    a2, _ = attention(block.attn2, block.norm2(h), context)
    h = h + a2
    return h + block.ff(block.norm3(h)), amap


@pytest.mark.parametrize("layers,keep_ratio", [(3, 0.37), (2, 0.5)])
def test_pruning_layer_matches_the_papers_steps(layers, keep_ratio):
    model = _transformer(layers)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 5, 7, generator=gen)  # [B, C, H, W]: N = 35 tokens, odd on purpose
    context = torch.randn(2, 6, 12, generator=gen)
    config = AtEdmConfig(keep_ratio=keep_ratio, backend="reference")
    pruner = BlockPruner(model, "block", level=2, stage="down", position="L", config=config)
    pruner.attach()  # what the handle does before a pruning call
    try:
        with torch.no_grad():
            got = model(x, encoder_hidden_states=context).sample
    finally:
        pruner.remove()

    with torch.no_grad():
        m = model.double()
        batch, channels, height, width = x.shape
        n = height * width
        h = m.proj_in(m.norm(x.double()).permute(0, 2, 3, 1).reshape(batch, n, channels))  # [B, N, C]
        h, amap = _layer(m.transformer_blocks[0], h, context.double())
        amap = amap.to(torch.float16)  # the map's default dtype, what G-WPR and the sources read
        scores = bf.gwpr(amap, config.num_iters)
        keep = max(1, round(keep_ratio * n))
        keep_idx, prune_idx = bf.select_tokens(scores.float(), keep)
        src = bf.similarity_sources(amap, keep_idx, prune_idx)
        h = bf.gather_tokens(h, keep_idx)  # [B, K, C]
        for block in m.transformer_blocks[1:]:
            h, _ = _layer(block, h, context.double())
        h = bf.recover_tokens(m.proj_out(h), keep_idx, prune_idx, src)  # [B, N, C]
        want = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2) + x.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    # The pruned tokens really are copies of kept ones: the layer is not just the dense block.
    with torch.no_grad():
        dense = model.float()(x, encoder_hidden_states=context).sample
    assert (dense - got).abs().max() > 1e-2
