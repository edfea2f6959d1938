"""The quality run's pictures: the FID / fidelity against MACs trade-off, the sample grid, and the masks AT-EDM
keeps on the trained model."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

CELL = 64  # pixels per 32x32 sample in the grids (2x nearest-neighbour)
LABEL_WIDTH = 150


def _tile(image: torch.Tensor) -> Image.Image:
    """``[1, H, W]`` in [-1, 1] (a sample) or ``[H, W]`` in [0, 1] (a mask) as a CELL x CELL greyscale tile."""
    values = (image[0] + 1) / 2 if image.ndim == 3 else image.float()
    pixels = (values.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="L").resize((CELL, CELL), Image.NEAREST)


def _rows_picture(rows: list[tuple[str, list[torch.Tensor]]], title: str) -> Image.Image:
    columns = max(len(tiles) for _, tiles in rows)
    picture = Image.new("L", (LABEL_WIDTH + columns * (CELL + 2), 24 + len(rows) * (CELL + 2)), 255)
    draw = ImageDraw.Draw(picture)
    draw.text((4, 4), title, fill=0)
    for r, (label, tiles) in enumerate(rows):
        y = 24 + r * (CELL + 2)
        draw.text((4, y + CELL // 2 - 6), label, fill=0)
        for c, tile in enumerate(tiles):
            picture.paste(_tile(tile), (LABEL_WIDTH + c * (CELL + 2), y))
    return picture


def sample_grid(samples: dict[str, torch.Tensor], names: list[str], columns: int, path: Path) -> None:
    """Rows: methods; columns: the first ``columns`` seeds (seed i is class i % 10)."""
    rows = [(name, list(samples[name][:columns])) for name in names if name in samples]
    _rows_picture(rows, "rows: methods; columns: seeds 0.. (class = seed % 10); the same seed in every row").save(path)


def keep_mask(keep_idx: torch.Tensor, tokens: int) -> torch.Tensor:
    """``[side, side]`` (1 where kept) from one element's ``keep_idx`` ``[K]`` of a square grid of ``tokens``."""
    side = math.isqrt(tokens)
    mask = torch.zeros(tokens)
    mask[keep_idx] = 1.0
    return mask.view(side, side)


def mask_grid(dense: torch.Tensor, pruned: dict[str, torch.Tensor], masks: dict[str, list[torch.Tensor]],
              path: Path, title: str) -> None:
    """Rows: the dense samples, each pruned method's samples, then each recorded mask row (white: kept)."""
    rows = [("dense", list(dense))] + [(name, list(images)) for name, images in pruned.items()]
    rows += [(label, tiles) for label, tiles in masks.items()]
    _rows_picture(rows, title).save(path)


def tradeoff_plot(rows: list[dict], spread: float, path: Path) -> None:
    """FID and fidelity against MACs per step: one point per method, the sweeps as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(row for row in rows if row["method"] == "dense")
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    families = {"AT-EDM (keep sweep)": lambda r: r["method"] == "atedm" or r["method"].startswith("atedm-keep"),
                "random selection (keep sweep)": lambda r: r["method"].startswith("random-"),
                "tomesd (ratio sweep)": lambda r: r["method"] == "tomesd" or r["method"].startswith("tomesd-")}
    for axis, metric, label in ((axes[0], "fid", "FID to held-out images (lower is better)"),
                                (axes[1], "fidelity_rmse", "RMS distance to the dense sample (lower is better)")):
        used = set()
        for family, member in families.items():
            points = sorted((r["macs_vs_dense"], r[metric]) for r in rows if member(r) and metric in r)
            if points:
                axis.plot(*zip(*points), marker="o", label=family)
                used |= {r["method"] for r in rows if member(r)}
        for row in rows:
            if row["method"] in used or metric not in row:
                continue
            axis.scatter(row["macs_vs_dense"], row[metric], marker="s" if row["group"] == "peer" else "^")
            axis.annotate(row["method"], (row["macs_vs_dense"], row[metric]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
        if metric == "fid":
            axis.axhspan(dense["fid"] - spread, dense["fid"] + spread, color="grey", alpha=0.2,
                         label="dense FID ± its std over seed sets")
        axis.set_xlabel("MACs per step / dense")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("Fashion-MNIST denoiser of SD-XL's layout: quality against compute, one point per method")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
