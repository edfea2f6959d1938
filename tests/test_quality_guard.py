"""What holds on the trained Fashion-MNIST denoiser (committed weights, no data set needed), guarded with fixed seeds
and classes. DDIM with eta 0 makes every run deterministic.

The full quality run (docs/quality.md, ``benchmarks/results/quality_fashion.json``) found that two of the paper's
orderings do not hold on this model: G-WPR's selection is not closer to dense than random selection at the same keep
ratio, and the similarity copy is not closer than padding zeros. What does hold, and is guarded here:

* DSAP's direction: pruning less in the early steps keeps the samples closer to dense (RMS pixel distance to the
  dense sample of the same seed and class) than pruning everywhere, and than pruning less in the late steps instead;
* G-WPR's selection is not random: the tokens it keeps lie on the garment more often than the garment's share of
  the token grid, where random selection keeps the garment at its share.
"""

import pytest
import torch
import torch.nn.functional as F

from atedm_kernels.sdxl import AtEdmConfig
from atedm_kernels.tools.fashion import model as fashion_model
from atedm_kernels.tools.fashion import quality

SAMPLES = 10  # one per class
STEPS = 10
SEEDS = list(range(100, 100 + SAMPLES))
LABELS = torch.arange(SAMPLES) % fashion_model.NUM_CLASSES


@pytest.fixture(scope="module")
def denoiser():
    return fashion_model.load_denoiser()


@pytest.fixture(scope="module")
def dense(denoiser):
    return quality.sample(denoiser, quality.Method("dense", "dense", "test"), LABELS, SEEDS, steps=STEPS)


def _distance(denoiser, dense, **method) -> float:
    images = quality.sample(denoiser, quality.Method(kind="atedm", group="test", **method), LABELS, SEEDS, steps=STEPS)
    return (images - dense).flatten(1).square().mean(1).sqrt().mean().item()


def test_pruning_less_early_beats_pruning_everywhere_and_pruning_less_late(denoiser, dense):
    config = AtEdmConfig()
    early = _distance(denoiser, dense, name="on", atedm=config, dsap="on")
    never = _distance(denoiser, dense, name="off", atedm=config, dsap="off")
    late = _distance(denoiser, dense, name="reversed", atedm=config, dsap="reversed")
    assert early < never and early < late, {"early": early, "never": never, "late": late}


def _kept_on_garment(denoiser, dense, config: AtEdmConfig) -> tuple[float, float]:
    """(share of kept tokens on the garment, garment share of the grid) over the 256-token blocks' normal steps."""
    garment = (dense > -0.6).float()  # [S, 1, 32, 32]: brighter than the background
    kept, share = [], []

    def observer(block, scores, keep_idx, step):  # keep_idx [2S, K]: unconditional half first
        if scores.shape[1] != 256 or step < config.prune_less_count(STEPS):
            return
        on_garment = F.adaptive_avg_pool2d(garment, 16).flatten(1) > 0.5  # [S, 256]
        kept.append(on_garment.gather(1, keep_idx[SAMPLES:]).float().mean().item())
        share.append(on_garment.float().mean().item())

    quality.sample(denoiser, quality.Method("x", "atedm", "test", config), LABELS, SEEDS, steps=STEPS,
                   observer=observer)
    return sum(kept) / len(kept), sum(share) / len(share)


def test_gwpr_keeps_the_garment_above_its_share_and_random_selection_does_not(denoiser, dense):
    gwpr_kept, share = _kept_on_garment(denoiser, dense, AtEdmConfig())
    random_kept, _ = _kept_on_garment(denoiser, dense, AtEdmConfig(selection="random"))
    assert gwpr_kept > share and gwpr_kept > random_kept, {"gwpr": gwpr_kept, "random": random_kept, "share": share}
