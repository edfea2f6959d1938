"""The demo's picture: every pruning block (rows, in U-Net order) at every denoising step (columns).

Each cell is the block's token grid coloured by its G-WPR score times N (1 = an average token's share, so blocks of
different sizes share one colour bar); kept tokens are vivid, pruned tokens faded. A block that ran
dense at a step (DSAP's prune-less phase, or AT-EDM-dagger's second level) says so in its cell.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch


CELL_IN = 0.95  # inches per cell
LABEL_IN = 2.0  # inches of row labels on the left
COLORBAR_IN = 1.1
TITLE_IN = 1.0
CAPTION_IN = 1.15
FADE = 0.72  # how far a pruned token's colour is blended towards white


@dataclass
class Selection:
    """One pruning block's token selection at one step (0-based), for the traced batch element."""

    step: int
    block: str
    scores: torch.Tensor  # [N] G-WPR scores
    kept: torch.Tensor  # [N] bool


@dataclass
class BlockInfo:
    """A pruning block, for the picture's row labels (in U-Net order)."""

    name: str
    stage: str  # "down", "mid" or "up"
    level: int  # 1: the latent's resolution; each level below halves it
    index: int  # position within its stage at this level (0-based)
    count: int  # blocks of its stage at this level
    layers: int  # transformer layers
    grid: tuple[int, int]  # token rows x columns


@dataclass
class Trace:
    """What a traced AT-EDM run did: its blocks in U-Net order, each step's DSAP phase, every selection."""

    blocks: list[BlockInfo]
    phases: list[str]  # per step: "prune_less" or "normal"
    selections: list[Selection]


def _row_label(block) -> str:
    rows, cols = block.grid
    where = f"{block.stage}, level {block.level}"
    return f"{where}\nblock {block.index + 1} of {block.count}\n{rows}x{cols} tokens, {block.layers} layers"


def _score_range(trace: Trace) -> tuple[float, float]:
    """1st and 99th percentile of score x N over the whole figure (one colour scale for every cell)."""
    values = torch.cat([s.scores * s.scores.numel() for s in trace.selections]).double()
    values = values[values > 0]
    if values.numel() == 0:
        return 0.5, 2.0
    low, high = torch.quantile(values, torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
    return (low, high) if high > low else (low / 2, low * 2)


def caption_text(keep_ratio: float) -> str:
    return (
        "A trained model (the Fashion-MNIST denoiser of SD-XL's layout): the maps are learnt. Rows: the pruning "
        "blocks in U-Net order (down, mid, up). Columns: the denoising steps. Colour: each token's G-WPR score x N "
        f"(1 = an average token's share). Vivid tokens are kept (keep_ratio {keep_ratio}), faded ones pruned (their "
        "output is copied from their most similar kept token). 'ran dense': the block did not prune at that step "
        "(DSAP's prune-less early steps leave the first down and the last up block of a level dense). The last row: "
        "the dense sample and the AT-EDM sample of the same seed."
    )


def draw_selections(trace: Trace, path: Path, *, model: str, keep_ratio: float,
                    samples: list[tuple[str, torch.Tensor]] = ()) -> Path:
    """Save the picture of ``trace`` to ``path`` (PNG), with ``samples`` (label, ``[H, W]`` in [0, 1]) in a last
    row; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    rows, cols = len(trace.blocks) + bool(samples), len(trace.phases)
    by_key = {(s.block, s.step): s for s in trace.selections}
    norm = Normalize(*_score_range(trace), clip=True)
    cmap = plt.get_cmap("viridis")

    width = LABEL_IN + CELL_IN * cols + COLORBAR_IN
    height = TITLE_IN + CELL_IN * rows + CAPTION_IN
    fig = plt.figure(figsize=(width, height), dpi=90)
    left, right = LABEL_IN / width, (LABEL_IN + CELL_IN * cols) / width
    bottom, top = CAPTION_IN / height, 1 - TITLE_IN / height
    grid = fig.add_gridspec(rows, cols, left=left, right=right, bottom=bottom, top=top, wspace=0.06, hspace=0.06)
    for r, block in enumerate(trace.blocks):
        for c, phase in enumerate(trace.phases):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            sel = by_key.get((block.name, c))
            if sel is None:
                ax.set_facecolor("0.88")
                ax.text(0.5, 0.5, "ran\ndense", ha="center", va="center", fontsize=8, color="0.3",
                        transform=ax.transAxes)
            else:
                colours = torch.from_numpy(cmap(norm((sel.scores * sel.scores.numel()).numpy()))[:, :3])  # [N, 3]
                pruned = ~sel.kept
                colours[pruned] = (1 - FADE) * colours[pruned] + FADE  # towards white
                ax.imshow(colours.view(*block.grid, 3).numpy(), interpolation="nearest")
            if r == 0:
                ax.set_title(f"step {c + 1}" + ("\nprune-less" if phase == "prune_less" else ""), fontsize=9)
            if c == 0:
                ax.set_ylabel(_row_label(block), rotation=0, ha="right", va="center", fontsize=8, labelpad=8)
    for c, (label, image) in enumerate(samples):
        ax = fig.add_subplot(grid[rows - 1, c])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel(label, fontsize=8)
        if c == 0:
            ax.set_ylabel("samples,\nsame seed", rotation=0, ha="right", va="center", fontsize=8, labelpad=8)
    bar_ax = fig.add_axes((right + 0.25 / width, bottom, 0.18 / width, top - bottom))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
    bar.set_label("G-WPR score x N  (1 = average token; faded = pruned)", fontsize=9)
    fig.suptitle(f"AT-EDM token selection at every step\n{model}, the class-conditional half of the CFG batch",
                 fontsize=11, y=1 - 0.12 / height)
    chars = max(60, int(width * 15))  # about 15 characters of 8-pt text per inch
    fig.text(0.012, 0.1 / height, textwrap.fill(caption_text(keep_ratio), chars), fontsize=8, va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
