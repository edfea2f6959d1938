"""What every token-pruning method on a U-Net shares: finding the attention blocks, the DSAP clock, per-step
statistics, and the undo handle.

Once per U-Net call, a forward pre-hook kept out of any compiled region asks the clock (:mod:`.clock`) where the call
sits in its denoising run (step i of n), decides the phase ("prune_less" while ``i < config.prune_less_count(n)``,
else "normal"), sets each pruning unit's ``active`` flag and lets the active ones put their attention processor in
front of the module's own for this call only; a forward hook that runs even when the call fails takes them out
again. Between calls the U-Net carries exactly the user's processors, so whatever the user installs before or after
``apply`` (sliced attention, fused QKV, PAG, IP-Adapter, ``set_default_attn_processor``) is what the pruning units
wrap at the next call, and ``remove()`` has no processor to restore. A compiled U-Net sees one static graph per
phase, never one per step.

Cost per call: a few Python attribute reads and, for units that prune, two attribute swaps; no device sync when the
timestep is an entry of the scheduler's ``timesteps`` (every diffusers pipeline); one sync (a host read) otherwise.
CUDA graphs: the hooks run in Python, so a graph captured by hand replays the phase it was captured in; capture one
graph per phase (``handle.pin_phase("prune_less")``, then ``"normal"``) and replay the one whose phase
``handle.phase_at(step, num_steps)`` gives. ``torch.compile(mode="reduce-overhead")`` handles
this itself: the phase flags are guarded, so it records one graph per phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..backends import resolve
from .clock import Position, StepClock


@dataclass
class StepRecord:
    """What one denoising step did: which units pruned, and how many of their N tokens they kept."""

    step: int
    timestep: float | None  # None when the timestep was a schedule entry (never read on the host)
    phase: str  # "prune_less" or "normal"
    kept: dict[str, int | None] = field(default_factory=dict)  # unit name -> K (None: ran dense)
    tokens: dict[str, int] = field(default_factory=dict)  # unit name -> N, for the units that pruned
    num_steps: int | None = None  # steps of the run's schedule; None when the U-Net got bare timesteps
    # op -> the kernel family that ran it ("triton", "cuda", "cpu" or "reference"): the config's backend is a
    # preference, and an op its family has no kernel for runs as "auto" chooses for the U-Net's device
    kernels: dict[str, str] = field(default_factory=dict)


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


def block_limits(transformer: nn.Module, block: nn.Module) -> list[str]:
    """What neither pruning method handles in a ``BasicTransformerBlock`` of ``transformer``."""
    limits = ["only_cross_attention"] if getattr(block, "only_cross_attention", False) else []
    if getattr(transformer, "is_input_continuous", True) is not True:
        limits.append("non-continuous input")
    return limits


def present(module: nn.Module, features: tuple[str, ...], prefix: str = "") -> list[str]:
    """The optional sub-modules of ``features`` that ``module`` (an ``Attention``) carries."""
    return [prefix + feature for feature in features if getattr(module, feature, None) is not None]


def call_argument(args: tuple, kwargs: dict, name: str, index: int):
    """A U-Net forward argument given by keyword or by position."""
    return kwargs[name] if name in kwargs else args[index]


class PruningHandle:
    """Undo handle of a pruning method on a U-Net; also a context manager.

    Subclasses build ``self.units`` through :meth:`_install` (objects with ``name``, ``active``, ``last_tokens``,
    ``backends`` (op -> backend, for each atedm op it runs), ``clear()``, ``attach()``, ``detach()`` and
    ``remove()``) and say in :meth:`prunes` which unit prunes in which phase.
    """

    def __init__(self, pipe_or_unet, config) -> None:
        self.unet = unet_of(pipe_or_unet)
        self.config = config
        self.pipeline = pipe_or_unet if pipe_or_unet is not self.unet else None
        self.units: list = []
        self._hooks: list = []
        self._clock = StepClock(self.pipeline)
        self._records: list[StepRecord] = []
        self._pinned: str | None = None
        self._kernels: dict[torch.device, dict[str, str]] = {}  # device -> op -> family, resolved once per device

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
        self._hooks = [
            self.unet.register_forward_pre_hook(self._before_call, with_kwargs=True),
            self.unet.register_forward_hook(self._after_call, always_call=True),
        ]
        self.unet._atedm_handle = self  # one pruning method at a time: each wraps attention processors
        self.reset()

    @property
    def step(self) -> int:
        """The current denoising step index (-1 before the first U-Net call of a run)."""
        position = self._clock.position
        return -1 if position is None else position.step

    def reset(self) -> None:
        """Start a new run: the next U-Net call begins it. Clears the statistics."""
        self._clock.reset()
        self._records = []

    def phase_at(self, step: int, num_steps: int | None = None, timestep: float | None = None) -> str:
        """The DSAP phase of step ``step`` of a ``num_steps`` run ("prune_less" or "normal"); with
        ``num_steps=None`` (a U-Net fed bare timesteps) the phase follows ``timestep``'s noise level instead."""
        return self._phase(Position(step, num_steps, timestep, ()))

    def pin_phase(self, phase: str | None) -> None:
        """Run every call in ``phase`` ("prune_less" or "normal") whatever the clock says; None follows the clock
        again. For counting or timing one phase, and for capturing one CUDA graph per phase."""
        if phase not in (None, "prune_less", "normal"):
            raise ValueError(f"phase must be None, 'prune_less' or 'normal', got {phase!r}")
        self._pinned = phase

    def _phase(self, position: Position) -> str:
        if self._pinned is not None:
            return self._pinned
        fraction = getattr(self.config, "prune_less_fraction", 0.0)
        absolute = self.config.prune_less_steps
        if position.num_steps is not None:
            early = position.step < self.config.prune_less_count(position.num_steps)
        elif absolute is not None:
            early = position.step < absolute
        else:
            early = position.progress(self._clock.train_timesteps) < fraction
        return "prune_less" if early else "normal"

    def _prepare_call(self, args: tuple, kwargs: dict, position: Position) -> None:
        """Per-call work of a method before its units run (outside any compiled region); none by default."""

    @torch.compiler.disable
    def _before_call(self, module, args, kwargs):
        position, new_run = self._clock.locate(call_argument(args, kwargs, "timestep", 1))
        if new_run:
            self._records = []
        self._finish_record()
        phase = self._phase(position)
        for unit in self.units:
            unit.clear()  # nothing a previous, possibly failed, call left behind reaches this one
            unit.active = self.prunes(unit, phase)
        self._prepare_call(args, kwargs, position)
        for unit in self.units:
            if unit.active:
                unit.attach()
        if not self._records or self._records[-1].step != position.step:
            kernels = self._kernels_on(call_argument(args, kwargs, "sample", 0).device)
            self._records.append(StepRecord(position.step, position.timestep, phase, num_steps=position.num_steps,
                                            kernels=kernels))

    def _kernels_on(self, device: torch.device) -> dict[str, str]:
        """op -> the kernel family that runs it on ``device`` for this handle's units (see StepRecord.kernels)."""
        if device not in self._kernels:
            self._kernels[device] = {op: resolve(op, backend, device)
                                     for unit in self.units for op, backend in unit.backends.items()}
        return dict(self._kernels[device])

    @torch.compiler.disable
    def _after_call(self, module, args, output):
        for unit in self.units:
            unit.detach()  # the user's processors are back between calls, even after a failed call

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
        """One record per denoising step of the current (or latest) run, the current step included."""
        self._finish_record()
        return list(self._records)

    def remove(self) -> None:
        """Restore the U-Net exactly: hooks gone; the attention processors were never changed between calls."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for unit in self.units:
            unit.remove()
        self.units = []
        if getattr(self.unet, "_atedm_handle", None) is self:
            del self.unet._atedm_handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
