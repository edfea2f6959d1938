"""The denoising clock: where one U-Net call sits in its run, found from the timestep the U-Net is called with.

Every diffusers pipeline (and the usual hand-written loop) calls the U-Net with ``t`` taken by iterating the
scheduler's ``timesteps`` tensor (``for t in timesteps``; img2img and inpaint iterate a slice of it). Such a ``t`` is a
view of that tensor, so its storage offset is its index ``k`` in the whole schedule of length ``L``: no device
read, no knowledge of which pipeline is calling. The step is ``k // order`` of ``n = ceil(L / order)`` steps, where
``order`` is the scheduler's (1, or 2 for Heun, KDPM2, DPM-SDE: two U-Net calls per step). The order is looked up
once per run, in the scheduler that owns the tensor: the pipeline the handle was applied to, else a pipeline or
scheduler among the calling frames' locals (another pipeline sharing the U-Net, a loop's ``scheduler`` variable);
where none is found, each call counts as a step of its own (order 1).

A new run starts when the schedule tensor changes (every pipeline call runs ``set_timesteps``, which builds a new
one: back-to-back generations of any length, 1 step included, and an interrupted one) or its index goes back.

A timestep that is not a schedule entry (a Python number, a tensor built per call) is read on the host: one device
sync per U-Net call when it lives on a GPU. Its step is the count of distinct falling timesteps since the run began
(a rising timestep starts a new run; an equal one is the same step, as in Heun's repeated timesteps, so back-to-back
one-step runs fed this way need ``handle.reset()`` between them), and the number of steps is unknown: the run's
position is then its noise level, ``(T - 1 - t) / T`` with ``T`` the scheduler's ``num_train_timesteps`` (1000
for SD and SD-XL), which gives the same 15 of 50 steps as the step count for "leading", "trailing" and "linspace"
spacings.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass

import torch

TRAIN_TIMESTEPS = 1000  # num_train_timesteps of SD/SD-XL schedulers, used when no scheduler says otherwise
FRAMES_SEARCHED = 16  # caller frames searched for the scheduler that owns a schedule: hook plumbing is ~5 deep


@dataclass(frozen=True)
class Position:
    """Where one U-Net call sits in its denoising run."""

    step: int  # 0-based denoising step; both calls of a second-order step share it
    num_steps: int | None  # steps of the whole schedule (img2img: the one it starts part-way into); None: unknown
    timestep: float | None  # the timestep as read on the host; None for a schedule entry (never read)
    key: tuple  # identifies the call within its run whatever ran before (seeds per-call noise)

    def progress(self, train_timesteps: int) -> float:
        """Fraction of the trajectory done when this call runs: ``step / num_steps``, or by noise level."""
        if self.num_steps is not None:
            return self.step / self.num_steps
        return (train_timesteps - 1 - self.timestep) / train_timesteps

    def seed(self, seed: int) -> int:
        """A 63-bit seed for this call's random draws, a pure function of ``seed`` and :attr:`key`."""
        digest = hashlib.blake2b(repr((seed, *self.key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


def schedule_entry(timestep) -> tuple[torch.Tensor, int] | None:
    """``(schedule, k)`` when ``timestep`` is element ``k`` of a 1-D tensor (a view of it, or an expand of such a
    view to the batch), else None. Reads tensor metadata only."""
    if not isinstance(timestep, torch.Tensor) or timestep._base is None or timestep.numel() == 0:
        return None
    schedule = timestep._base
    if schedule.ndim != 1 or schedule.stride(0) < 1:
        return None
    if any(stride != 0 and size != 1 for stride, size in zip(timestep.stride(), timestep.shape)):
        return None  # several elements: per-sample timesteps, not one schedule entry
    offset = timestep.storage_offset() - schedule.storage_offset()
    k, rest = divmod(offset, schedule.stride(0))
    if rest or not 0 <= k < schedule.shape[0]:
        return None
    return schedule, k


def _schedulers_near(pipeline) -> list:
    """Schedulers the clock may ask for an order: the applied pipeline's, then those of the calling frames (a
    scheduler, or a pipeline's scheduler, held in a local variable, ``self`` included)."""
    from diffusers import DiffusionPipeline, SchedulerMixin

    found = [getattr(pipeline, "scheduler", None)]
    frame = sys._getframe(1)
    for _ in range(FRAMES_SEARCHED):
        if frame is None:
            break
        for value in frame.f_locals.values():
            if isinstance(value, DiffusionPipeline):
                value = getattr(value, "scheduler", None)
            found.append(value)
        frame = frame.f_back
    return [s for s in found if isinstance(s, SchedulerMixin)]


class StepClock:
    """Turns each U-Net call's timestep into a :class:`Position` and says when a new run starts."""

    def __init__(self, pipeline=None) -> None:
        self.pipeline = pipeline  # the pipeline the handle was applied to (None for a bare U-Net)
        scheduler_config = getattr(getattr(pipeline, "scheduler", None), "config", None) or {}
        self.train_timesteps = int(scheduler_config.get("num_train_timesteps", TRAIN_TIMESTEPS))
        self.reset()

    def reset(self) -> None:
        """The next call starts a new run."""
        self._schedule: torch.Tensor | None = None  # held, so that its id cannot be reused by a new schedule
        self._order = 1
        self._index = -1  # schedule index (schedule mode) of the latest call
        self._timestep: float | None = None  # latest host-read timestep (bare-timestep mode)
        self.position: Position | None = None

    def locate(self, timestep) -> tuple[Position, bool]:
        """The call's position and whether it starts a new run."""
        entry = schedule_entry(timestep)
        if entry is not None:
            position, new_run = self._from_schedule(*entry)
        else:
            position, new_run = self._from_value(timestep)
        self.position = position
        return position, new_run

    def _from_schedule(self, schedule: torch.Tensor, k: int) -> tuple[Position, bool]:
        new_run = schedule is not self._schedule or k < self._index
        if new_run:
            self.reset()
            self._schedule = schedule
            self._order = self._order_of(schedule)
        self._index = k
        length = schedule.shape[0]
        position = Position(k // self._order, -(-length // self._order), None, ("schedule", length, k))
        return position, new_run

    def _order_of(self, schedule: torch.Tensor) -> int:
        for scheduler in _schedulers_near(self.pipeline):
            if getattr(scheduler, "timesteps", None) is schedule:
                return max(1, int(getattr(scheduler, "order", 1)))
        return 1

    def _from_value(self, timestep) -> tuple[Position, bool]:
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if not math.isfinite(value):
            raise ValueError(f"timestep must be finite, got {value}")
        previous = self.position
        new_run = self._schedule is not None or self._timestep is None or value > self._timestep
        if new_run:
            self.reset()
            step = 0
        else:
            step = previous.step + (value < self._timestep)
        self._timestep = value
        return Position(step, None, value, ("timestep", value)), new_run
