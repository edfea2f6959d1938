"""Why G-WPR does not beat random selection on the trained Fashion-MNIST denoiser: where each pruning block's error
comes from.

For every pruning block call of a sampling run (AT-EDM's normal and prune-less steps alike), the block is run a
second time on the same input with pruning off, and its output is compared token by token with the pruned one.
With ``u`` the dense block's update (output minus input) and ``e`` the pruned output's error against the dense
output, summed over every call of the run, per method:

* ``kept_error`` = ``sqrt(sum_kept |e|^2 / sum_all |u|^2)``: what pruning costs the tokens that ran the block;
* ``pruned_error`` = ``sqrt(sum_pruned |e|^2 / sum_all |u|^2)``: what the recovery of the pruned tokens gets wrong;
* ``pruned_update_share`` = ``sum_pruned |u|^2 / sum_all |u|^2``: how much of the block's work the selection
  dropped (a selection that keeps the tokens with the largest updates makes it small). ``sqrt`` of it is the
  ``pruned_error`` of giving the pruned tokens no update at all (``recovery="zeros"``);
* the mean grid distance from a pruned token to the kept token it copies, and to its nearest kept token.

    python -m atedm_kernels.tools.fashion.diagnose --samples 20 --out benchmarks/results/quality_fashion_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ...sdxl import AtEdmConfig
from . import model as fashion_model
from . import quality

METHODS = {"atedm": AtEdmConfig(), "random-selection": AtEdmConfig(selection="random")}


class ErrorSums:
    """Sums of squared norms over every pruning block call of one run (see the module docstring)."""

    def __init__(self) -> None:
        self.kept_error = self.pruned_error = self.kept_update = self.pruned_update = 0.0
        self.source_distance: list[float] = []  # per call: mean grid distance pruned token -> its source
        self.nearest_distance: list[float] = []  # per call: mean grid distance pruned token -> nearest kept token

    def add_outputs(self, keep_idx, prune_idx, x, pruned, dense) -> None:
        """``x``, ``pruned``, ``dense``: the block's input and outputs ``[B, C, H, W]``."""
        update = (dense - x).flatten(2).norm(dim=1).square()  # [B, C, H, W] -> [B, N]: per-token norm over C
        error = (pruned - dense).flatten(2).norm(dim=1).square()  # [B, N]
        self.kept_error += torch.gather(error, 1, keep_idx).sum().item()
        self.pruned_error += torch.gather(error, 1, prune_idx).sum().item()
        self.kept_update += torch.gather(update, 1, keep_idx).sum().item()
        self.pruned_update += torch.gather(update, 1, prune_idx).sum().item()

    def add_distances(self, keep_idx, prune_idx, src, width: int) -> None:
        def grid(index):  # [B, T] -> rows, cols as float
            return (index // width).double(), (index % width).double()

        py, px = grid(prune_idx)  # [B, N-K]
        sy, sx = grid(torch.gather(keep_idx, 1, src))  # the kept token each pruned token copies
        ky, kx = grid(keep_idx)  # [B, K]
        self.source_distance.append(((py - sy).square() + (px - sx).square()).sqrt().mean().item())
        nearest = ((py[..., None] - ky[:, None]).square() + (px[..., None] - kx[:, None]).square()).sqrt()
        self.nearest_distance.append(nearest.amin(-1).mean().item())

    def report(self) -> dict:
        total = self.kept_update + self.pruned_update
        return {
            "kept_error": math.sqrt(self.kept_error / total),
            "pruned_error": math.sqrt(self.pruned_error / total),
            "pruned_update_share": self.pruned_update / total,
            "zeros_pruned_error": math.sqrt(self.pruned_update / total),
            "source_distance": sum(self.source_distance) / len(self.source_distance),
            "nearest_kept_distance": sum(self.nearest_distance) / len(self.nearest_distance),
        }


def measure(denoiser, config: AtEdmConfig, count: int, steps: int) -> dict:
    """:class:`ErrorSums` over one sampling run of ``count`` samples (seeds ``0..count-1``, class = seed mod 10)."""
    sums = ErrorSums()
    hooks = []
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # block name -> (keep_idx, prune_idx) of its call

    def compare_with_dense(block):
        def hook(module, args, kwargs, output):  # after the pruned block: run it again with pruning off
            selection = seen.pop(block.name, None)
            if not block.active or selection is None:
                return None
            keep_idx, prune_idx = selection
            block.active = False
            try:
                dense = module(*args, **kwargs)[0]
            finally:
                block.active = True
            x = args[0] if args else kwargs["hidden_states"]
            sums.add_outputs(keep_idx, prune_idx, x, output[0], dense)
            return None
        return hook

    def setup(installed) -> None:
        for block in installed.handle.blocks:
            hooks.append(block.transformer.register_forward_hook(compare_with_dense(block), with_kwargs=True))

    def observer(block, scores, keep_idx, step) -> None:
        keep_idx, prune_idx, src = block.selection
        seen[block.name] = (keep_idx, prune_idx)
        width = math.isqrt(scores.shape[1])  # the model's token grids are square (32x32 latents)
        assert width * width == scores.shape[1], scores.shape
        sums.add_distances(keep_idx, prune_idx, src, width)

    method = quality.Method("diagnose", "atedm", "diagnose", config, keep=config.keep_ratio)
    labels = torch.arange(count) % fashion_model.NUM_CLASSES
    try:
        quality.sample(denoiser, method, labels, list(range(count)), steps, observer=observer, setup=setup)
    finally:
        for hook in hooks:
            hook.remove()
    return sums.report()


def run(count: int, steps: int = quality.STEPS) -> dict:
    denoiser = fashion_model.load_denoiser()
    return {"samples": count, "steps": steps, "guidance": quality.GUIDANCE,
            "methods": {name: measure(denoiser, config, count, steps) for name, config in METHODS.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=quality.STEPS)
    parser.add_argument("--out", type=Path, help="write the report to this JSON file")
    args = parser.parse_args(argv)
    report = run(args.samples, args.steps)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
