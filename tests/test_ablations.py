"""The paper's ablation baselines in the pruning layer (``AtEdmConfig.selection``, ``recovery``,
``prune_before_ff``): each against a float64 brute force or against the default layer it varies."""

import pytest
import torch

from atedm_kernels.tools.flops import MacCounter
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_sdxl_unet, unet_inputs
from atedm_kernels.sdxl import ablations


def _keep_idx(batch: int, tokens: int, keep: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(tokens, generator=g)[:keep] for _ in range(batch)])  # [B, K]


@pytest.mark.parametrize("grid", [(4, 4), (5, 3), (1, 7)])
def test_recoveries_against_brute_force(grid):
    height, width = grid
    tokens, keep = height * width, max(1, (height * width) // 3)
    x_kept = torch.randn(2, keep, 6, dtype=torch.float64)  # [B, K, C]
    keep_idx = _keep_idx(2, tokens, keep, seed=tokens)
    zeros = ablations.recover_zeros(x_kept, keep_idx, tokens)
    smooth = ablations.recover_interpolate(x_kept, keep_idx, grid)
    for b in range(2):
        padded = torch.zeros(tokens, 6, dtype=torch.float64)
        for j in range(keep):
            padded[keep_idx[b, j]] = x_kept[b, j]
        assert torch.equal(zeros[b], padded)
        image = padded.T.reshape(1, 6, height, width)
        small = torch.nn.functional.adaptive_avg_pool2d(image, (max(1, height // 2), max(1, width // 2)))
        up = torch.nn.functional.interpolate(small, size=grid, mode="bicubic", align_corners=False)
        expected = up.reshape(6, tokens).T.clone()
        expected[keep_idx[b]] = x_kept[b]
        torch.testing.assert_close(smooth[b], expected)


def test_random_scores_repeat_per_block_and_differ_between_blocks():
    first, again, other = ablations.RandomScores("a"), ablations.RandomScores("a"), ablations.RandomScores("b")
    cpu = torch.device("cpu")
    a = first(2, 50, cpu)
    assert torch.equal(a, again(2, 50, cpu)) and not torch.equal(a, other(2, 50, cpu))
    assert not torch.equal(a, first(2, 50, cpu))  # the next call draws anew


@pytest.fixture(scope="module")
def tiny():
    unet = build_sdxl_unet("tiny", seed=2)
    return unet, unet_inputs(unet, 2, 128, 128, seed=3)


def _run(unet, inputs, **fields):
    with apply(unet, AtEdmConfig(**fields)) as handle, MacCounter(unet) as counter, torch.no_grad():
        handle.pin_phase("normal")
        out = unet(**inputs).sample
    return out, counter.report().total


def test_prune_before_ff_is_the_default_output_at_fewer_macs(tiny):
    """The feed-forward and its norm act per token and pruned tokens are recovered from kept ones: moving the
    selection in front of the first layer's feed-forward changes the MACs, not the output."""
    default, default_macs = _run(*tiny)
    before, before_macs = _run(*tiny, prune_before_ff=True)
    torch.testing.assert_close(before, default, rtol=0, atol=1e-6)
    assert before_macs < default_macs


@pytest.mark.parametrize("fields", [{"selection": "random"}, {"recovery": "zeros"}, {"recovery": "interpolate"}])
def test_each_ablation_changes_the_output_not_the_macs(tiny, fields):
    default, default_macs = _run(*tiny)
    varied, macs = _run(*tiny, **fields)
    assert torch.isfinite(varied).all() and not torch.allclose(varied, default)
    assert macs == default_macs


@pytest.mark.parametrize("field, value, error", [("selection", "best", ValueError), ("selection", 1, TypeError),
                                                 ("recovery", "copy-ish", ValueError),
                                                 ("prune_before_ff", 1, TypeError)])
def test_config_rejects_unknown_choices(field, value, error):
    with pytest.raises(error, match=field):
        AtEdmConfig(**{field: value})
