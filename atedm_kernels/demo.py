"""``atedm demo``: AT-EDM on a random-weight SD-XL-architecture U-Net, no download.

Runs the same short denoising loop dense and with AT-EDM (tiny U-Net on a CPU, the full SD-XL architecture on a
GPU), prints MACs, time and speed-up, and draws the pruning masks and G-WPR scores of every pruning block at a few
steps as heat maps over the latent grid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .sdxl import AtEdmConfig, apply, build_sdxl_unet, unet_inputs


@dataclass
class Selection:
    """One pruning block's token selection at one step, for batch element 0."""

    step: int
    block: str
    grid: tuple[int, int]  # latent rows x columns at the block's level
    scores: torch.Tensor  # [N] G-WPR scores
    kept: torch.Tensor  # [N] bool


@dataclass
class DemoResult:
    dense_ms: float
    atedm_ms: float
    dense_macs: int
    atedm_macs: int
    selections: list[Selection] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.atedm_ms


def _level_grid(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """Token grid of a feature level: each level below the first halves the latent (stride-2, padded conv)."""
    rows, cols = latent_hw
    for _ in range(level - 1):
        rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
    return rows, cols


def _denoise(unet, inputs: dict, steps: int, device: torch.device) -> float:
    """Run ``steps`` Euler steps of a real diffusers scheduler; returns the wall time in ms."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps, device=device)
    latents = inputs["sample"] * scheduler.init_noise_sigma
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(latents, t)
            noise = unet(**{**inputs, "sample": model_in, "timestep": t}).sample
            latents = scheduler.step(noise, t, latents).prev_sample
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def run_demo(scale: str, steps: int, height: int, width: int, config: AtEdmConfig, device: torch.device,
             seed: int = 0) -> DemoResult:
    from .flops import count_unet_macs

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = build_sdxl_unet(scale, device=device, dtype=dtype, seed=seed)
    inputs = unet_inputs(unet, 2, height, width, seed=seed)
    latent_hw = tuple(inputs["sample"].shape[-2:])
    meta_unet = build_sdxl_unet(scale, device="meta")
    dense_macs = count_unet_macs(meta_unet, height, width, batch=2).total
    atedm_macs = count_unet_macs(meta_unet, height, width, batch=2, config=config, phase="average", num_steps=steps).total

    _denoise(unet, inputs, 1, device)  # warm-up
    dense_ms = _denoise(unet, inputs, steps, device)
    selections: list[Selection] = []
    with apply(unet, config) as handle:

        def record(block, scores, keep_idx):
            kept = torch.zeros(scores.shape[1], dtype=torch.bool)
            kept[keep_idx[0].cpu()] = True
            grid = _level_grid(latent_hw, block.level)
            selections.append(Selection(handle.step, block.name, grid, scores[0].float().cpu(), kept))

        _denoise(unet, inputs, 1, device)  # warm-up
        atedm_ms = _denoise(unet, inputs, steps, device)
        handle.reset()
        handle.observe(record)
        _denoise(unet, inputs, steps, device)  # traced run, not timed
    return DemoResult(dense_ms, atedm_ms, dense_macs, atedm_macs, selections)


def draw_selections(selections: list[Selection], path: Path, max_steps: int = 4) -> Path:
    """Save a grid of heat maps: one row per pruning block; per chosen step its G-WPR scores and its mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({s.step for s in selections})
    if len(steps) > max_steps:  # spread the shown steps over the run
        steps = [steps[round(i * (len(steps) - 1) / (max_steps - 1))] for i in range(max_steps)]
    blocks = list(dict.fromkeys(s.block for s in selections))
    by_key = {(s.block, s.step): s for s in selections}
    fig, axes = plt.subplots(len(blocks), 2 * len(steps), figsize=(2.2 * 2 * len(steps), 2.2 * len(blocks)),
                             squeeze=False)
    for r, block in enumerate(blocks):
        for c, step in enumerate(steps):
            score_ax, mask_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            for ax in (score_ax, mask_ax):
                ax.set_xticks([])
                ax.set_yticks([])
            sel = by_key.get((block, step))
            if sel is None:
                score_ax.text(0.5, 0.5, "dense", ha="center", va="center")
                mask_ax.text(0.5, 0.5, "dense", ha="center", va="center")
                continue
            score_ax.imshow(sel.scores.view(sel.grid).numpy(), cmap="viridis")
            mask_ax.imshow(sel.kept.view(sel.grid).numpy(), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                score_ax.set_title(f"step {step}: G-WPR", fontsize=9)
                mask_ax.set_title(f"step {step}: kept", fontsize=9)
        axes[r, 0].set_ylabel(block.replace(".attentions.", "\nattn "), fontsize=8)
    fig.suptitle("AT-EDM token selection (batch element 0): scores, and kept tokens in white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # leave the top strip to the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
