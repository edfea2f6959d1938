"""MAC counting (atedm_kernels.tools.flops): the paper's SD-XL figures on the meta model, analytic checks on the tiny one."""

import pytest
import torch

from atedm_kernels.tools.flops import count_unet_macs
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_sdxl_unet

TINY_PIXELS = 256  # tiny U-Net: 32x32 latent; A2 blocks at 16x16 = 256 tokens, A4 blocks at 8x8 = 64 tokens
B = 2  # classifier-free-guidance batch, as the paper counts


@pytest.fixture(scope="module")
def sdxl():
    return build_sdxl_unet("full", device="meta")


@pytest.fixture(scope="module")
def tiny():
    """The tiny U-Net on the CPU, counted with real forwards (``on_meta=False``) on one thread: ~10x faster than
    meta's per-op Python shape logic for a model this small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_sdxl_unet("tiny", device="cpu")
    torch.set_num_threads(threads)


def count(unet, **kwargs):
    """``count_unet_macs`` of the tiny U-Net at TINY_PIXELS, batch B, with a real CPU forward."""
    kwargs = {"height": TINY_PIXELS, "width": TINY_PIXELS, "batch": B, "on_meta": False, **kwargs}
    return count_unet_macs(unet, **kwargs)


def test_sdxl_dense_and_atedm_match_the_paper(sdxl):
    """Paper: 6.7 T dense, 4.1 T AT-EDM (63% pruning) per normal step, SD-XL base at 1024x1024, batch 2.

    This count includes the cross-attention matmuls the paper's THOP count misses (0.032 T dense); without them
    (``paper_convention``) dense is 6.729 T and AT-EDM 4.026 T. AT-EDM stays 1.4% under the paper's rounded 4.1 T
    (see the reconciliation in ``atedm_kernels/flops.py``).
    """
    dense = count_unet_macs(sdxl, 1024, 1024, batch=B)
    normal = count_unet_macs(sdxl, 1024, 1024, batch=B, config=AtEdmConfig(), phase="normal")
    assert dense.total == pytest.approx(6.7e12, rel=0.03)
    assert normal.total == pytest.approx(4.1e12, rel=0.03)
    assert dense.paper_convention == pytest.approx(6.7e12, rel=0.01)
    assert dense.kinds["cross_attention"] == pytest.approx(0.0323e12, rel=0.01)
    # every A2 block prunes 4096 -> 1516 tokens, every A10 block 1024 -> 379
    assert set(normal.tokens.values()) == {(4096, 1516), (1024, 379)} and len(normal.tokens) == 11
    assert sum(dense.blocks.values()) == dense.total == sum(dense.kinds.values())


def _tiny_attention_blocks(unet):
    """(name, tokens N, channels C, layers L) of the tiny U-Net's attention blocks at TINY_PIXELS."""
    latent = TINY_PIXELS // 8
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        stage, index = name.split(".")[:2]
        # down_blocks.i halves the side i times; up_blocks.i mirrors it; the mid block is at the lowest level (2)
        halvings = {"down_blocks": int(index), "up_blocks": 2 - int(index)}[stage] if stage != "mid_block" else 2
        yield name, (latent >> halvings) ** 2, module.config.in_channels, len(module.transformer_blocks)


def test_tiny_attention_matmuls_analytic(tiny):
    """Dense: 2*B*N^2*C self-attention and 2*B*N*77*C cross-attention MACs per layer; AT-EDM: layers 2..L on K."""
    config = AtEdmConfig(prune_less_steps=0)
    dense = count(tiny)
    pruned = count(tiny, config=config)
    blocks = list(_tiny_attention_blocks(tiny))
    assert sorted({(n, layers) for _, n, _, layers in blocks}) == [(64, 4), (256, 2)]
    assert dense.kinds["self_attention"] == sum(2 * B * n * n * c * layers for _, n, c, layers in blocks)
    assert dense.kinds["cross_attention"] == sum(2 * B * n * 77 * c * layers for _, n, c, layers in blocks)
    kept = {name: config.kept_tokens(n) for name, n, _, _ in blocks}
    assert pruned.kinds["self_attention"] == sum(
        2 * B * c * (n * n + (layers - 1) * kept[name] ** 2) for name, n, c, layers in blocks
    )
    assert pruned.kinds["cross_attention"] == sum(
        2 * B * c * 77 * (n + (layers - 1) * kept[name]) for name, n, c, layers in blocks
    )
    assert pruned.tokens == {name: (n, kept[name]) for name, n, _, _ in blocks}
    assert pruned.kinds["conv"] == dense.kinds["conv"]  # AT-EDM leaves convolutions alone


def test_tiny_linear_and_conv_analytic(tiny):
    report = count(tiny)
    emb = tiny.time_embedding
    assert report.blocks["time_embedding"] == B * (
        emb.linear_1.in_features * emb.linear_1.out_features + emb.linear_2.in_features * emb.linear_2.out_features
    )
    latent = TINY_PIXELS // 8
    conv = tiny.conv_in
    assert report.blocks["conv_in"] == B * conv.out_channels * latent * latent * conv.in_channels * 9
    # a transformer layer's attn1 projections: 4 Linear C x C on B*N rows, plus its matmuls 2*B*N^2*C
    name, n, c, layers = next(_tiny_attention_blocks(tiny))
    block = tiny.get_submodule(name)
    proj = 2 * B * n * c * c  # proj_in and proj_out (linear projection, C -> C)
    attn1 = 4 * B * n * c * c + 2 * B * n * n * c
    cross_dim = tiny.config.cross_attention_dim
    attn2 = 2 * B * n * c * c + 2 * B * 77 * cross_dim * c + 2 * B * n * 77 * c
    inner = block.transformer_blocks[0].ff.net[0].proj.out_features // 2  # GEGLU: C -> 2 * inner, inner -> C
    ff = B * n * c * 2 * inner + B * n * inner * c
    assert report.blocks[name] == proj + layers * (attn1 + attn2 + ff)


@pytest.fixture(scope="module")
def tiny_reports(tiny):
    """Dense and AT-EDM (default config) reports of the tiny U-Net, counted once for the tests below."""
    reports = {"dense": count(tiny)}
    for phase in ("normal", "prune_less", "average"):
        reports[phase] = count(tiny, config=AtEdmConfig(), phase=phase)
    return reports


def test_keep_ratio_one_equals_dense(tiny, tiny_reports):
    full_keep = count(tiny, config=AtEdmConfig(keep_ratio=1.0), phase="normal")
    assert full_keep.total == tiny_reports["dense"].total and full_keep.blocks == tiny_reports["dense"].blocks


def test_phases_average_and_dagger(tiny, tiny_reports):
    dense, normal, prune_less, average = (tiny_reports[p].total for p in ("dense", "normal", "prune_less", "average"))
    assert normal < average < prune_less < dense
    assert abs(average - (15 * prune_less + 35 * normal) / 50) <= 2  # each of the 4 kinds is rounded to a MAC
    assert len(tiny_reports["prune_less"].tokens) == 11 - 4  # F-L: 2 down-stage firsts, 2 up-stage lasts dense
    short = count(tiny, config=AtEdmConfig(prune_less_steps=15), phase="average", num_steps=10)
    assert short.total == prune_less  # an absolute count: every one of 10 steps is among the first 15
    tenth = count(tiny, config=AtEdmConfig(), phase="average", num_steps=10)
    assert abs(tenth.total - (3 * prune_less + 7 * normal) / 10) <= 2  # the default fraction: 3 of 10 steps

    dagger = count(tiny, config=AtEdmConfig(skip_second_level=True))
    assert normal < dagger.total < dense
    dense_blocks = tiny_reports["dense"].blocks
    second_level = [name for name in dense_blocks if name.startswith(("down_blocks.1.att", "up_blocks.1.att"))]
    assert len(second_level) == 5 and all(dagger.blocks[name] == dense_blocks[name] for name in second_level)
    assert dagger.tokens and all(dagger.blocks[name] < dense_blocks[name] for name in dagger.tokens)


def test_meta_twin_and_batch_linearity(tiny, tiny_reports):
    """The default count runs on a meta twin of the CPU model and agrees with the real forward; MACs are linear
    in the batch."""
    four = count_unet_macs(tiny, TINY_PIXELS, TINY_PIXELS, batch=4, config=AtEdmConfig())
    assert four.kinds == {kind: 2 * macs for kind, macs in tiny_reports["normal"].kinds.items()}
    assert four.blocks == {name: 2 * macs for name, macs in tiny_reports["normal"].blocks.items()}


def test_linear_shapes_sum_to_the_linear_macs(sdxl, tiny_reports):
    """``MacsReport.linears`` (what benchmarks/benchmark_pruned_linears.py times): calls per (rows, in, out, bias)
    that add up to the linear MACs, and the pruned layers' feed-forward on 2 K rows where dense has 2 N."""
    for phase, report in tiny_reports.items():
        macs = sum(calls * rows * fan_in * fan_out for (rows, fan_in, fan_out, _), calls in report.linears.items())
        assert macs == pytest.approx(report.kinds["linear"], abs=1 if phase == "average" else 0)  # rounded to a MAC
    dense = count_unet_macs(sdxl, 1024, 1024, batch=B).linears
    normal = count_unet_macs(sdxl, 1024, 1024, batch=B, config=AtEdmConfig(), phase="normal").linears
    # SD-XL's third level: 6 blocks of 10 layers at 1024 tokens; AT-EDM keeps 379 after each block's first layer
    assert dense[B * 1024, 1280, 10240, True] == 60 and (B * 379, 1280, 10240, True) not in dense
    assert normal[B * 1024, 1280, 10240, True] == 6 and normal[B * 379, 1280, 10240, True] == 54
    # per layer: q, k, v without a bias and 2 outputs with one (+ proj_in / proj_out per block, with a bias)
    assert dense[B * 1024, 1280, 1280, False] == 60 * 4 and dense[B * 1024, 1280, 1280, True] == 60 * 2 + 6 * 2
    assert normal[B * 77, 2048, 1280, False] == dense[B * 77, 2048, 1280, False] == 2 * 60  # text keys, values


def test_table_lists_blocks_and_total(tiny_reports):
    report = tiny_reports["normal"]
    table = report.table()
    assert "down_blocks.1.attentions.0" in table and "256->95" in table and "total" in table
    assert sum(report.groups().values()) == report.total


@pytest.mark.parametrize(
    ("kwargs", "match", "error"),
    [
        ({"height": 1001}, "height", ValueError),
        ({"width": 0}, "width", ValueError),
        ({"batch": 0}, "batch", ValueError),
        ({"batch": True}, "batch", TypeError),
        ({"phase": "early"}, "phase", ValueError),
        ({"num_steps": 0}, "num_steps", ValueError),
        ({"on_meta": "yes"}, "on_meta", TypeError),
        ({"unet": torch.nn.Linear(2, 2)}, "unet", ValueError),
    ],
)
def test_bad_arguments_name_the_argument(tiny, kwargs, match, error):
    """A wrong type raises TypeError, a wrong value ValueError, each naming the argument."""
    args = {"unet": tiny, "height": TINY_PIXELS, "width": TINY_PIXELS, **kwargs}
    with pytest.raises(error, match=match):
        count_unet_macs(**args)


def test_bad_config_and_already_applied(tiny):
    with pytest.raises(TypeError, match="config"):
        count(tiny, config={"keep_ratio": 0.5})
    with apply(tiny, AtEdmConfig(backend="reference")):
        with pytest.raises(ValueError, match="already has token pruning"):
            count(tiny)


def test_sito_counts_the_pruned_self_attention():
    """SiTo shrinks only attn1 (its projections and both matmuls) to K tokens; prune_ratio 0 is dense."""
    from atedm_kernels.sdxl import SiToConfig
    from atedm_kernels.tools.models import build_sdxl_unet
    from atedm_kernels.sito import sito_kept_tokens

    tiny = build_sdxl_unet("tiny", device="meta")
    dense = count_unet_macs(tiny, 128, 128, batch=2)
    assert count_unet_macs(tiny, 128, 128, batch=2, config=SiToConfig(prune_ratio=0.0)).total == dense.total
    sito = count_unet_macs(tiny, 128, 128, batch=2, config=SiToConfig())
    # Per layer: to_q/k/v/out on K instead of N rows (4 C^2 each) and both matmuls K^2 C instead of N^2 C.
    saved = 0
    for side, c, layers in ((8, 64, 2 * 2 + 3 * 2), (4, 64, 2 * 4 + 4 + 3 * 4)):  # A2 level, multi-layer level
        n, k = side * side, sito_kept_tokens(side, side, 2, 2, 0.5)
        saved += layers * 2 * (4 * (n - k) * c * c + 2 * (n * n - k * k) * c)
    assert dense.total - sito.total == saved
