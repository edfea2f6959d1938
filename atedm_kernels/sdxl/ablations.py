"""The paper's ablation baselines of the pruning layer (its supplementary C), as ``AtEdmConfig`` choices, so that
what they lose against AT-EDM is measured on the same layer, kernels and schedule.

* ``selection="random"``: the N tokens are scored by uniform random numbers instead of G-WPR; the top K of those
  (``select_tokens``) are kept, so the keep count, the similarity copy and the MACs are AT-EDM's.
* ``recovery="zeros"`` (the paper's "padding zeros"): a pruned token's output after ``proj_out`` is 0, so the block
  adds nothing to it: after the block's residual add it leaves the block as it entered.
* ``recovery="interpolate"`` (the paper's "interpolation"): zeros are placed at the pruned tokens of the
  ``[B, C, H, W]`` grid, the grid is average-pooled 2x2 and upsampled back bicubically; kept tokens keep their own
  values, pruned ones take the interpolated ones. Where most neighbours are pruned, the result is near zero, which is
  why the paper rejects it.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

SELECTIONS = ("gwpr", "random")
RECOVERIES = ("copy", "zeros", "interpolate")


class RandomScores:
    """Uniform random token scores ``[B, N]``, from a generator per device seeded by the block's name (the same
    draws in every run of a fresh handle, different draws in different blocks)."""

    def __init__(self, name: str) -> None:
        self.seed = zlib.crc32(name.encode())
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return torch.rand(batch, tokens, generator=generator, device=device)  # [B, N]


def scatter_kept(x_kept: torch.Tensor, keep_idx: torch.Tensor, tokens: int) -> torch.Tensor:
    """``[B, N, C]`` holding ``x_kept`` ``[B, K, C]`` at ``keep_idx`` ``[B, K]`` and zeros elsewhere."""
    batch, _, channels = x_kept.shape
    out = x_kept.new_zeros(batch, tokens, channels)
    return out.scatter_(1, keep_idx.unsqueeze(-1).expand(-1, -1, channels), x_kept)


def recover_zeros(x_kept: torch.Tensor, keep_idx: torch.Tensor, tokens: int) -> torch.Tensor:
    return scatter_kept(x_kept, keep_idx, tokens)  # [B, N, C]


def recover_interpolate(x_kept: torch.Tensor, keep_idx: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Kept tokens as they are, pruned ones from the 2x average-pooled, bicubically upsampled zero-padded grid."""
    height, width = grid
    padded = scatter_kept(x_kept, keep_idx, height * width)  # [B, N, C]
    image = padded.transpose(1, 2).unflatten(2, (height, width))  # [B, C, H, W]
    work = torch.promote_types(image.dtype, torch.float32)  # 16-bit grids are pooled and upsampled in float32
    small = F.adaptive_avg_pool2d(image.to(work), (max(1, height // 2), max(1, width // 2)))
    smooth = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).to(padded.dtype)
    smooth = smooth.flatten(2).transpose(1, 2)  # [B, N, C]
    kept = torch.zeros(padded.shape[:2], dtype=torch.bool, device=padded.device).scatter_(1, keep_idx, True)
    return torch.where(kept.unsqueeze(-1), padded, smooth)  # [B, N, C]
