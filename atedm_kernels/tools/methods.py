"""The one registry of the methods the tools install on a U-Net: dense, AT-EDM and SiTo (chosen by their config:
``None``, an ``AtEdmConfig``, a ``SiToConfig``) and tomesd at its SD-XL setting. ``atedm generate``, ``atedm
bench``, the MACs counter, the quality run and the CLI install a method through here; the cache-based peers
(DeepCache, T-GATE, AT-EDM on DeepCache) drive whole runs and live in :mod:`.peers`.
"""

from __future__ import annotations

import contextlib

from ..sdxl import AtEdmConfig, SiToConfig, apply, apply_sito

PRUNING = {"atedm": (AtEdmConfig, apply), "sito": (SiToConfig, apply_sito)}  # name -> (config type, installer)
NAMES = ("dense", *PRUNING)  # the methods the CLI's --method names (dense always runs beside them)
# tomesd as its authors set it for SD-XL (every attention and the MLP merged, down to 8x downsampling)
TOMESD_SDXL = {"max_downsample": 8, "merge_attn": True, "merge_crossattn": True, "merge_mlp": True}
TOMESD_RATIO = 0.5  # tomesd's SD-XL merge ratio


def method_of(config) -> str:
    """The method ``config`` stands for: "dense" for None, "atedm" or "sito" by its type."""
    if config is None:
        return "dense"
    for name, (kind, _) in PRUNING.items():
        if isinstance(config, kind):
            return name
    raise TypeError(f"config must be an AtEdmConfig, a SiToConfig or None, got {type(config).__name__}")


def accelerate(pipe_or_unet, config):
    """Install the method ``config`` stands for on a pipeline or U-Net; its handle (None for dense: nothing to
    undo)."""
    method = method_of(config)
    return None if method == "dense" else PRUNING[method][1](pipe_or_unet, config)


@contextlib.contextmanager
def installed(pipe_or_unet, config):
    """:func:`accelerate` for the duration of a ``with`` block; yields the handle (None for dense)."""
    handle = accelerate(pipe_or_unet, config)
    try:
        yield handle
    finally:
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def tomesd_patched(unet, ratio: float = TOMESD_RATIO):
    """tomesd's token merging at :data:`TOMESD_SDXL` and ``ratio`` on ``unet`` for the duration of the block."""
    import tomesd

    tomesd.apply_patch(unet, ratio=ratio, **TOMESD_SDXL)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
