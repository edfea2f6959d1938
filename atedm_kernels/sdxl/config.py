"""``AtEdmConfig``: the knobs of AT-EDM on a U-Net, with the paper's defaults."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .._validation import check_bool, check_choice, check_float, check_int
from ..backends import BACKENDS
from ..reference.gwpr import GWPR_CROSS_KINDS
from .ablations import RECOVERIES, SELECTIONS

# "<down>-<up>": which attention block of each down stage (F first, L last) and of each up stage (F, M middle, L)
# runs dense during the prune-less steps; "none" prunes every block in every step.
PRUNE_LESS_PATTERN = re.compile(r"^[FL]-[FML]$")
# Where the pruning layer's token scores come from: "self" (G-WPR on the self-attention map, the paper's best) or
# one of the cross-attention G-WPR forms of ``gwpr_cross`` on the layer's text cross-attention map.
WPR_KINDS = ("self", *GWPR_CROSS_KINDS)


def check_prune_less(fraction, steps) -> None:
    """The DSAP fields' checks, shared by every method's config."""
    check_float("prune_less_fraction", fraction, 0.0, 1.0)
    if steps is not None:
        check_int("prune_less_steps", steps, 0)


def prune_less_count(fraction: float, steps: int | None, num_steps: int) -> int:
    """Prune-less steps at the start of a ``num_steps`` run: ``steps`` if given, else ``ceil(fraction * num_steps)``
    (rounded to 9 decimals first, so that 0.3 * 10 counts 3, not 4)."""
    if steps is not None:
        return min(steps, num_steps)
    return min(math.ceil(round(fraction * num_steps, 9)), num_steps)


@dataclass(frozen=True)
class AtEdmConfig:
    """AT-EDM settings.

    Attributes:
        keep_ratio: fraction of tokens kept after each pruning layer, in (0, 1]; K = max(1, round(keep_ratio * N)).
            0.37 is the paper's 63% pruning (4.1 T MACs per step on SD-XL at 1024 px).
        num_iters: G-WPR power iterations. The paper does not state its count; 10 brings the scores of a
            head-averaged SD-XL-like map to a ranking that further iterations no longer change much.
        damping: G-WPR damping d (``s <- (1-d) A^T s + d/N``); the paper's WPR uses none.
        prune_less_fraction: DSAP: the first ``prune_less_fraction`` of the denoising trajectory is the prune-less
            phase, in which the ``prune_less_blocks`` run dense (the paper's 15 of 50 steps: 0.3). In a run of n steps
            step i (0-based) is prune-less when ``i < ceil(prune_less_fraction * n)``: 15 of 50, 2 of 4, 1 of 1
            (see :meth:`prune_less_count`; how the step and n are found: :mod:`.schedule`).
        prune_less_steps: an absolute count instead: steps ``< prune_less_steps`` are prune-less whatever the
            run's length (0: never; None, the default: use ``prune_less_fraction``).
        prune_less_blocks: which blocks DSAP leaves dense in the early steps, "<down>-<up>" with down in {F, L} and
            up in {F, M, L} (the paper's best, "F-L": first block of each down stage, last of each up stage), or
            "none". The mid block is always pruned.
        skip_second_level: True gives the paper's AT-EDM-dagger: no pruning at the second feature level (SD-XL's
            4096-token A2 blocks at 1024 px).
        backend: op backend for the pruning layer ("auto", "reference", "triton", "cuda", "cpu").
        wpr: where the pruning layer's token scores come from. "self" (the default, the paper's best): ``gwpr`` on
            the head-averaged self-attention map of the layer's ``attn1`` [B, N, N]. "entropy", "hard_clip",
            "soft_clip", "power": the paper's cross-attention variants, ``gwpr_cross(kind=wpr)`` on the head-averaged
            text cross-attention map of the same layer's ``attn2`` [B, N, L] (L = 77 text tokens), which then runs
            through ``attention_with_map`` too. Either way the pruned tokens are recovered from the self-attention
            map (see :mod:`.pruning`); ``damping`` belongs to the self form and must stay 0 with the others.
        selection: "gwpr" (the default: keep the top-K token scores) or "random" (the paper's random-selection
            baseline: keep the top K of uniform random scores; :mod:`.ablations`).
        recovery: how pruned tokens come back after ``proj_out``: "copy" (the default: each copies its most similar
            kept token), or the paper's baselines "zeros" and "interpolate" (:mod:`.ablations`).
        prune_before_ff: True moves the selection in front of the first layer's feed-forward (the paper's
            supplementary C alternative), which then runs on the K kept tokens only. The feed-forward and its norm
            act on each token alone and pruned tokens are recovered from kept ones, so the output is the default's
            (the same selection, the same kept values) at fewer MACs (:mod:`.ablations`).
    """

    keep_ratio: float = 0.37
    num_iters: int = 10
    damping: float = 0.0
    prune_less_fraction: float = 0.3
    prune_less_steps: int | None = None
    prune_less_blocks: str = "F-L"
    skip_second_level: bool = False
    backend: str = "auto"
    wpr: str = "self"
    selection: str = "gwpr"
    recovery: str = "copy"
    prune_before_ff: bool = False

    def __post_init__(self) -> None:
        # a wrong type raises TypeError, a wrong value ValueError; each message names the field
        check_float("keep_ratio", self.keep_ratio, 0.0, 1.0, open_low=True)
        check_int("num_iters", self.num_iters, 1)
        check_float("damping", self.damping, 0.0, 1.0)
        check_prune_less(self.prune_less_fraction, self.prune_less_steps)
        if not isinstance(self.prune_less_blocks, str):
            raise TypeError(f"prune_less_blocks must be a str, got {type(self.prune_less_blocks).__name__}")
        if not (self.prune_less_blocks == "none" or PRUNE_LESS_PATTERN.match(self.prune_less_blocks)):
            raise ValueError(
                f"prune_less_blocks must be 'none' or '<F|L>-<F|M|L>' (e.g. 'F-L'), got {self.prune_less_blocks!r}"
            )
        check_bool("skip_second_level", self.skip_second_level)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("wpr", self.wpr, WPR_KINDS)
        check_choice("selection", self.selection, SELECTIONS)
        check_choice("recovery", self.recovery, RECOVERIES)
        check_bool("prune_before_ff", self.prune_before_ff)
        if self.wpr != "self" and self.damping != 0:
            raise ValueError(f"damping must be 0 with wpr={self.wpr!r} (cross-attention G-WPR has no damping), "
                             f"got {self.damping!r}")

    @classmethod
    def few_step(cls, **overrides) -> "AtEdmConfig":
        """The preset for 1-4 step distilled SD-XL models (SDXL-Turbo, SDXL-Lightning, LCM-distilled SD-XL):
        ``keep_ratio=0.37``, ``prune_less_steps=1``, ``prune_less_blocks="F-L"``; ``overrides`` change any field
        (``AtEdmConfig.few_step(backend="cuda")``).

        Prune-less phase: exactly the first step, whatever the step count. DSAP exists because the early steps
        decide the layout; a distilled model's first step alone maps pure noise to a whole image estimate, and every
        later step re-noises that estimate to a lower noise level and refines it, so the layout is decided in step 0
        and later steps run the normal schedule. An absolute count, not a fraction: with 1-4 steps a fraction's
        rounding decides whole steps (``ceil(0.3 * 4) = 2`` would put half of a 4-step run in the prune-less phase).
        A 1-step run is therefore all prune-less.

        Keep ratio: the paper's 0.37 (63% pruning), the one ratio with a measurement on a distilled model
        (supplementary E: on SDXL-Turbo, 33.4% fewer MACs, FID 14.5% lower, CLIP score 2.1% lower); nothing measured
        here supports another. MACs per step at 1024 px, batch 2 (``flops.count_unet_macs``; dense 6.761 T): the
        prune-less step 4.974 T, a normal step 4.042 T, so the mean step of a 1-, 2- and 4-step run is 4.974 T
        (26.4% fewer), 4.508 T (33.3%, the paper's SDXL-Turbo figure) and 4.275 T (36.8%).
        """
        return cls(**{"keep_ratio": 0.37, "prune_less_steps": 1, "prune_less_blocks": "F-L", **overrides})

    def prune_less_count(self, num_steps: int) -> int:
        """How many of a ``num_steps`` run's first steps are prune-less (see ``prune_less_fraction``)."""
        return prune_less_count(self.prune_less_fraction, self.prune_less_steps, num_steps)

    def kept_tokens(self, n: int) -> int:
        """K for a block of ``n`` tokens: ``max(1, round(keep_ratio * n))``."""
        return max(1, round(self.keep_ratio * n))
