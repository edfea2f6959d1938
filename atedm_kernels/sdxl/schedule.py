"""What every token-pruning method on a U-Net shares: finding the attention blocks, counting denoising steps,
per-step statistics, and the undo handle.

Step counting (DSAP's clock), decided once per U-Net call in a forward pre-hook kept out of any compiled region:

* applied to a pipeline: the step is the pipeline scheduler's own position, ``step_index // order`` (or its
  ``begin_index`` before the first ``step()``), read from host-side Python ints. This is exact for second-order
  schedulers (Heun, KDPM2: two U-Net calls per step, KDPM2 even at two different timesteps) and for img2img, which
  starts part-way into the schedule; the count restarts whenever the position goes back (a new generation).
* applied to a bare U-Net (no scheduler to ask): the step is the number of distinct timesteps the U-Net has seen
  since the last reset, reset when the timestep rises (SPEC.md section 5). This reads the timestep on the host: one
  device sync per call, which also keeps a manually captured CUDA graph from advancing the clock.

``handle.reset()`` restarts the count either way. The hook only flips each pruning unit's ``active`` flag, so a
compiled U-Net sees one static graph per schedule phase, never one per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepRecord:
    """What one denoising step did: which units pruned, and how many of their N tokens they kept."""

    step: int
    timestep: float | None  # None when the step came from the pipeline's scheduler (no device read)
    phase: str  # "prune_less" or "normal"
    kept: dict[str, int | None] = field(default_factory=dict)  # unit name -> K (None: ran dense)
    tokens: dict[str, int] = field(default_factory=dict)  # unit name -> N, for the units that pruned


def unet_of(pipe_or_unet) -> nn.Module:
    """The U-Net of a diffusers pipeline, or the U-Net itself."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, nn.Module) or not all(hasattr(unet, a) for a in ("down_blocks", "mid_block", "up_blocks")):
        raise TypeError(
            "pipe_or_unet must be a diffusers StableDiffusionXLPipeline (or any pipeline with .unet) or a "
            f"UNet2DConditionModel, got {type(pipe_or_unet).__name__}"
        )
    return unet


def attention_blocks(unet: nn.Module):
    """(name, Transformer2DModel, level, stage, position) for every attention block of the U-Net.

    ``level`` is the feature level (1: the latent's resolution; each down stage below halves it), ``stage`` is
    "down", "mid" or "up", ``position`` is "F", "M" or "L" within the stage's blocks.
    """
    levels = len(unet.down_blocks)

    def position(j: int, count: int) -> str:
        return "F" if j == 0 else "L" if j == count - 1 else "M"

    for i, down in enumerate(unet.down_blocks):
        blocks = getattr(down, "attentions", None) or []
        for j, block in enumerate(blocks):
            yield f"down_blocks.{i}.attentions.{j}", block, i + 1, "down", position(j, len(blocks))
    for j, block in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        yield f"mid_block.attentions.{j}", block, levels, "mid", "M"
    for i, up in enumerate(unet.up_blocks):
        blocks = getattr(up, "attentions", None) or []
        for j, block in enumerate(blocks):
            yield f"up_blocks.{i}.attentions.{j}", block, levels - i, "up", position(j, len(blocks))


def timestep_value(args: tuple, kwargs: dict) -> float:
    """The U-Net call's timestep as a float (one host read per call, not per token)."""
    timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)


class PruningHandle:
    """Undo handle of a pruning method on a U-Net; also a context manager.

    Subclasses build ``self.units`` (objects with ``name``, ``active``, ``last_tokens``, ``clear()`` and
    ``remove()``) through
    :meth:`_install`, and say in :meth:`prunes` which unit prunes in which phase.
    """

    def __init__(self, pipe_or_unet, config) -> None:
        self.unet = unet_of(pipe_or_unet)
        self.config = config
        # A pipeline's (current) scheduler is the step clock; a bare U-Net has none.
        self.pipeline = pipe_or_unet if pipe_or_unet is not self.unet else None
        self.units: list = []
        self._hook = None

    def prunes(self, unit, phase: str) -> bool:
        """Whether ``unit`` prunes in ``phase`` ("prune_less" or "normal")."""
        raise NotImplementedError

    def _install(self, build_units, nothing_to_prune: str) -> None:
        """Run ``build_units()`` (it fills ``self.units``), undo it all on failure, then take over the U-Net."""
        try:
            build_units()
        except Exception:
            self.remove()
            raise
        if not self.units:
            self.remove()
            raise ValueError(f"pipe_or_unet has {nothing_to_prune}")
        self._attach()

    def _attach(self) -> None:
        existing = getattr(self.unet, "_atedm_handle", None)
        if existing is not None:
            self.remove()
            raise ValueError(
                f"pipe_or_unet already has token pruning applied ({type(existing).__name__}); "
                "call its handle.remove() first"
            )
        self._hook = self.unet.register_forward_pre_hook(self._before_step, with_kwargs=True)
        self.unet._atedm_handle = self  # one pruning method at a time: each rewrites attention processors
        self.reset()

    @property
    def step(self) -> int:
        """The current denoising step index (-1 before the first U-Net call)."""
        return self._step

    def reset(self) -> None:
        """Start a new generation: the next U-Net call is step 0. Clears the statistics."""
        self._step = -1
        self._last_timestep: float | None = None
        self._records: list[StepRecord] = []

    def _scheduler_step(self) -> int | None:
        """The denoising step from the pipeline's scheduler, or None without one."""
        scheduler = getattr(self.pipeline, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "step_index"):
            return None
        index = scheduler.step_index
        if index is None:  # before the generation's first scheduler.step()
            index = getattr(scheduler, "begin_index", None) or 0
        return index // getattr(scheduler, "order", 1)

    def _advance_clock(self, args, kwargs) -> float | None:
        """Move ``self._step`` to the current call's step; returns the timestep read (None from a scheduler)."""
        step = self._scheduler_step()
        if step is not None:
            if step < self._step:
                self.reset()
            self._step = step
            return None
        timestep = timestep_value(args, kwargs)
        if self._last_timestep is None or timestep > self._last_timestep:
            if self._last_timestep is not None:
                self.reset()
            self._step = 0
        elif timestep < self._last_timestep:
            self._step += 1
        self._last_timestep = timestep
        return timestep

    @torch.compiler.disable
    def _before_step(self, module, args, kwargs):
        timestep = self._advance_clock(args, kwargs)
        self._finish_record()
        phase = "prune_less" if self._step < self.config.prune_less_steps else "normal"
        for unit in self.units:
            unit.clear()  # nothing a previous, possibly failed, call left behind reaches this one
            unit.active = self.prunes(unit, phase)
        if not self._records or self._records[-1].step != self._step:
            self._records.append(StepRecord(self._step, timestep, phase))

    def _finish_record(self) -> None:
        if not self._records:
            return
        record = self._records[-1]
        for unit in self.units:
            if unit.active and unit.last_tokens is not None:
                record.tokens[unit.name], record.kept[unit.name] = unit.last_tokens
            else:
                record.kept.setdefault(unit.name, None)

    def stats(self) -> list[StepRecord]:
        """One record per denoising step since the last reset (the current step included)."""
        self._finish_record()
        return list(self._records)

    def remove(self) -> None:
        """Restore the U-Net exactly: processors back, hooks gone."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for unit in self.units:
            unit.remove()
        self.units = []
        if getattr(self.unet, "_atedm_handle", None) is self:
            del self.unet._atedm_handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
