"""The quality diagnosis (``atedm_kernels.tools.fashion.diagnose``): its error split on outputs made to known values,
and one short run on the trained model."""

import math

import torch

from atedm_kernels.tools.fashion import diagnose


def test_error_split_on_known_outputs():
    """Kept tokens exact and pruned tokens left at their input: no kept error, and the pruned error is exactly the
    zeros baseline, the square root of the pruned tokens' share of the update."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen)  # [B, C, H, W], N = 20
    dense = x + torch.randn(2, 3, 4, 5, generator=gen)
    keep_idx = torch.tensor([[0, 3, 7, 19], [1, 2, 11, 12]])  # [B, K]
    prune_idx = torch.stack([torch.tensor([i for i in range(20) if i not in row]) for row in keep_idx.tolist()])
    pruned = x.clone()
    flat_pruned, flat_dense = pruned.view(2, 3, 20), dense.view(2, 3, 20)
    for b in range(2):
        flat_pruned[b, :, keep_idx[b]] = flat_dense[b, :, keep_idx[b]]
    sums = diagnose.ErrorSums()
    sums.add_outputs(keep_idx, prune_idx, x, pruned, dense)
    sums.add_distances(keep_idx, prune_idx, torch.zeros_like(prune_idx), width=5)
    report = sums.report()
    update = (dense - x).flatten(2).square().sum(1)  # [B, N]
    share = torch.gather(update, 1, prune_idx).sum() / update.sum()
    assert report["kept_error"] == 0.0
    assert math.isclose(report["pruned_update_share"], share.item(), rel_tol=1e-6)  # float32 sums
    assert math.isclose(report["pruned_error"], report["zeros_pruned_error"], rel_tol=1e-12)
    # token 1 of batch 0 (row 0, col 1) copies token 0 (row 0, col 0) and its nearest kept token is token 0 too
    assert report["nearest_kept_distance"] <= report["source_distance"]


def test_short_run_on_the_trained_model():
    report = diagnose.run(count=2, steps=3)
    assert set(report["methods"]) == {"atedm", "random-selection"}
    for row in report["methods"].values():
        assert all(math.isfinite(v) and v >= 0 for v in row.values())
        assert 0 < row["pruned_update_share"] < 1 and row["kept_error"] < row["pruned_error"]
        assert math.isclose(row["zeros_pruned_error"], math.sqrt(row["pruned_update_share"]))
        assert row["nearest_kept_distance"] >= 1.0  # a pruned token is never its own neighbour
