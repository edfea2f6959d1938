"""``apply``: AT-EDM on a diffusers SD-XL pipeline or U-Net, with the DSAP schedule, undone by ``handle.remove()``.

DSAP (denoising-steps-aware pruning): the step index is the number of distinct timesteps the U-Net has seen since
the last reset; it resets when the timestep rises (a new generation starts) or on ``handle.reset()``. For steps
``< prune_less_steps`` the prune-less blocks (by default the first block of each down stage and the last block of
each up stage) run dense; the mid block is always pruned. The schedule is decided once per U-Net call, outside any
compiled region, and only flips each block's ``active`` flag, so a compiled U-Net sees two static graphs (the
prune-less phase and the normal phase), never one per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import AtEdmConfig
from .pruning import BlockPruner

SECOND_LEVEL = 2  # feature level of SD-XL's 4096-token A2 blocks at 1024 px; AT-EDM-dagger leaves it dense


@dataclass
class StepRecord:
    """What one denoising step did: which blocks pruned, and how many of their N tokens they kept."""

    step: int
    timestep: float
    phase: str  # "prune_less" or "normal"
    kept: dict[str, int | None] = field(default_factory=dict)  # block name -> K (None: ran dense)
    tokens: dict[str, int] = field(default_factory=dict)  # block name -> N, for the blocks that pruned


def _unet_of(pipe_or_unet) -> nn.Module:
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, nn.Module) or not all(hasattr(unet, a) for a in ("down_blocks", "mid_block", "up_blocks")):
        raise TypeError(
            "pipe_or_unet must be a diffusers StableDiffusionXLPipeline (or any pipeline with .unet) or a "
            f"UNet2DConditionModel, got {type(pipe_or_unet).__name__}"
        )
    return unet


def _attention_blocks(unet: nn.Module):
    """(name, Transformer2DModel, level, stage, position) for every attention block of the U-Net."""
    levels = len(unet.down_blocks)
    for i, down in enumerate(unet.down_blocks):
        for j, block in enumerate(getattr(down, "attentions", None) or []):
            position = "F" if j == 0 else "L" if j == len(down.attentions) - 1 else "M"
            yield f"down_blocks.{i}.attentions.{j}", block, i + 1, "down", position
    for j, block in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        yield f"mid_block.attentions.{j}", block, levels, "mid", "M"
    for i, up in enumerate(unet.up_blocks):
        for j, block in enumerate(getattr(up, "attentions", None) or []):
            position = "F" if j == 0 else "L" if j == len(up.attentions) - 1 else "M"
            yield f"up_blocks.{i}.attentions.{j}", block, levels - i, "up", position


def _timestep_value(args: tuple, kwargs: dict) -> float:
    timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])  # one host read per U-Net call, not per token
    return float(timestep)


class AtEdmHandle:
    """Undo handle of :func:`apply`; also a context manager (``with apply(pipe): ...``)."""

    def __init__(self, unet: nn.Module, config: AtEdmConfig) -> None:
        self.unet = unet
        self.config = config
        self.blocks: list[BlockPruner] = []
        try:
            for name, block, level, stage, position in _attention_blocks(unet):
                if len(block.transformer_blocks) < 2:
                    continue  # single-layer blocks have no later layer to save: AT-EDM leaves them alone
                self.blocks.append(BlockPruner(block, name, level, stage, position, config))
        except Exception:
            self.remove()
            raise
        if not self.blocks:
            raise ValueError("pipe_or_unet has no attention block with 2 or more transformer layers to prune")
        self._hook = unet.register_forward_pre_hook(self._before_step, with_kwargs=True)
        self.reset()

    # -- schedule ----------------------------------------------------------------------------------------------

    def prunes(self, block: BlockPruner, phase: str) -> bool:
        """Whether ``block`` prunes in ``phase`` ("prune_less" or "normal")."""
        if self.config.skip_second_level and block.level == SECOND_LEVEL:
            return False
        if phase == "normal" or self.config.prune_less_blocks == "none":
            return True
        down, up = self.config.prune_less_blocks.split("-")
        dense_position = {"down": down, "up": up}.get(block.stage)
        return block.position != dense_position

    @property
    def step(self) -> int:
        """The current denoising step index (-1 before the first U-Net call)."""
        return self._step

    def observe(self, observer) -> None:
        """Call ``observer(block, scores [B, N], keep_idx [B, K])`` after every token selection (None: stop)."""
        for block in self.blocks:
            block.observer = observer

    def reset(self) -> None:
        """Start a new generation: the next U-Net call is step 0. Clears the statistics."""
        self._step = -1
        self._last_timestep: float | None = None
        self._records: list[StepRecord] = []

    @torch.compiler.disable
    def _before_step(self, module, args, kwargs):
        timestep = _timestep_value(args, kwargs)
        if self._last_timestep is None or timestep > self._last_timestep:
            if self._last_timestep is not None:
                self.reset()
            self._step = 0
        elif timestep < self._last_timestep:
            self._step += 1
        self._last_timestep = timestep
        self._finish_record()
        phase = "prune_less" if self._step < self.config.prune_less_steps else "normal"
        for block in self.blocks:
            block.active = self.prunes(block, phase)
            block.last_tokens = None
        if not self._records or self._records[-1].step != self._step:
            self._records.append(StepRecord(self._step, timestep, phase))

    def _finish_record(self) -> None:
        if not self._records:
            return
        record = self._records[-1]
        for block in self.blocks:
            if block.active and block.last_tokens is not None:
                record.tokens[block.name], record.kept[block.name] = block.last_tokens
            else:
                record.kept.setdefault(block.name, None)

    # -- results and teardown ----------------------------------------------------------------------------------

    def stats(self) -> list[StepRecord]:
        """One record per denoising step since the last reset (the current step included)."""
        self._finish_record()
        return list(self._records)

    def remove(self) -> None:
        """Restore the U-Net exactly: processors back, hooks gone."""
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
            self._hook = None
        for block in self.blocks:
            block.remove()
        self.blocks = []
        if getattr(self.unet, "_atedm_handle", None) is self:
            del self.unet._atedm_handle

    def __enter__(self) -> "AtEdmHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply(pipe_or_unet, config: AtEdmConfig | None = None) -> AtEdmHandle:
    """Apply AT-EDM to a diffusers SD-XL pipeline or U-Net in place; returns the handle that undoes it.

    Every ``Transformer2DModel`` with 2 or more layers gets a pruning layer (its first layer); the DSAP schedule of
    ``config`` decides per denoising step which of them prune.
    """
    if config is None:
        config = AtEdmConfig()
    if not isinstance(config, AtEdmConfig):
        raise TypeError(f"config must be an AtEdmConfig, got {type(config).__name__}")
    unet = _unet_of(pipe_or_unet)
    if getattr(unet, "_atedm_handle", None) is not None:
        raise ValueError("pipe_or_unet already has a token-pruning method applied; call its handle.remove() first")
    handle = AtEdmHandle(unet, config)
    unet._atedm_handle = handle
    return handle
