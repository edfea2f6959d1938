"""DeepCache and T-GATE, the peer methods the benchmarks and the quality run compare with, at their authors' SD-XL
settings, on a bare U-Net, and AT-EDM stacked on DeepCache.

Both peers make the cost of a U-Net call depend on the step, so a method here is a *run*: its steps fall into a few
kinds (DeepCache: a full call or a cached one; T-GATE: its attention-caching flags and the CFG batch), and the mean
step of the whole run is the weighted mean of one call of each kind, made in step order so that every cache a
call reads was filled by an earlier call of the same run (:meth:`PeerRun.calls`). The benchmark times those calls
and the MACs counter counts them; ``tests/test_stacking.py`` checks the weighted mean against a call-by-call count
of the whole run.

* **DeepCache** (``DeepCache==0.1.1``, ``DeepCacheSDHelper``): the authors' SD-XL setting, ``cache_interval=3``,
  ``cache_branch_id=0`` (skip branch 0: block 0, layer 0), uniform, 50 steps: horseee/DeepCache at 1691a3a,
  ``stable_diffusion_xl.py`` (``cache_interval=3, cache_layer_id=0, cache_block_id=0``, ``uniform=True``,
  ``num_inference_steps=50``) and the README's ``set_params(cache_interval=3, cache_branch_id=0)``. Step ``i`` runs
  the whole U-Net when ``i % cache_interval == 0`` (17 of 50) and only the shallow branch otherwise (``conv_in``,
  the last resnet of the last up block, ``conv_out``; every deeper block returns its cached output).
  The helper takes a pipeline and reads ``pipe.scheduler.timesteps`` and ``pipe.unet``; on a bare U-Net it gets
  a stand-in object with those two attributes (:func:`deepcache`), its only shim.
* **T-GATE** (``tgate==1.0.0``): the authors' SD-XL setting, ``gate_step=10, sp_interval=5, fi_interval=1,
  warm_up=2``, 25 steps (HaozheLiu-ST/T-GATE at ab2a88f, README "SD-XL w/ TGATE"). Its public API is a pipeline
  method (``TgateSDXLLoader(pipe).tgate(...)``), a copy of diffusers' SD-XL loop that before each step calls
  ``tgate_utils.tgate_scheduler`` for the step's flags and ``tgate_utils.register_forward`` to set them on every
  ``Attention``. :class:`PeerRun` does the same two calls around a bare U-Net and, as that loop does, drops
  classifier-free guidance from ``gate_step`` on: those calls take the unconditional half of the batch (batch 1
  for one image). Per step of 25: steps 0, 1, 2, 5, 9 run in full with CFG; 3, 4, 6, 7, 8 reuse every
  self-attention's output (cached at 2 and 5); 10-24 reuse every cross-attention's output (cached at 9 as the mean
  of the two CFG halves) without CFG. ``register_forward`` replaces each ``Attention.forward`` for good (the
  package has no undo, and a pipeline that ran ``.tgate`` keeps its last flags for plain calls after it);
  :func:`remove_tgate` deletes those instance attributes and the caches, the second shim.
* **AT-EDM + DeepCache**: both on one U-Net in either order (AT-EDM works through hooks and per-call processors,
  DeepCache by replacing ``forward`` of the U-Net and its blocks). The steps DeepCache runs in full are pruned on
  AT-EDM's DSAP schedule of the whole run (its clock counts every call, cached ones included); the cached steps
  never reach a pruning layer. AT-EDM + T-GATE does not stack: T-GATE's ``Attention.forward`` computes attention
  itself and never calls the module's processor, so AT-EDM's pruning layer gets no attention map (it stops with
  ``ValueError: ... the module's forward bypasses its processor``).
"""

from __future__ import annotations

import contextlib
import types
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

DEEPCACHE = {"cache_interval": 3, "cache_branch_id": 0}  # horseee/DeepCache@1691a3a stable_diffusion_xl.py, README
DEEPCACHE_STEPS = 50
TGATE = {"gate_step": 10, "sp_interval": 5, "fi_interval": 1, "warm_up": 2}  # HaozheLiu-ST/T-GATE@ab2a88f README
TGATE_STEPS = 25
PACKAGES = {"deepcache": "DeepCache", "tgate": "tgate", "atedm+deepcache": "DeepCache"}
NUM_STEPS = {"deepcache": DEEPCACHE_STEPS, "tgate": TGATE_STEPS, "atedm+deepcache": DEEPCACHE_STEPS}
SETTINGS = {  # what each row's number is, for tables and JSON
    "deepcache": "cache_interval=3, cache_branch_id=0, uniform; mean of 50 steps (17 full, 33 cached)",
    "tgate": "gate_step=10, sp_interval=5, fi_interval=1, warm_up=2; mean of 25 steps (the last 15 without CFG)",
    "atedm+deepcache": "AtEdmConfig() (DSAP over the run) on DeepCache's setting; mean of 50 steps",
}


def missing(name: str) -> str | None:
    """Why the peer variant ``name`` cannot run here (its package is not importable), else None."""
    package = PACKAGES[name]
    try:
        __import__(package)
    except ImportError as error:
        return f"{package} is not importable ({error}); pip install \"atedm-kernels[peers]\""
    return None


def deepcache_full(step: int) -> bool:
    """Whether DeepCache (uniform mode, :data:`DEEPCACHE`) runs step ``step`` of a run in full."""
    return step % DEEPCACHE["cache_interval"] == 0


@contextlib.contextmanager
def deepcache(unet: nn.Module, scheduler):
    """DeepCache's helper at :data:`DEEPCACHE` on a bare U-Net whose calls take entries of ``scheduler.timesteps``;
    disabled on exit."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=types.SimpleNamespace(unet=unet, scheduler=scheduler))  # what it reads of a pipe
    helper.set_params(**DEEPCACHE)
    helper.enable()
    try:
        yield helper
    finally:
        helper.disable()


def remove_tgate(unet: nn.Module) -> None:
    """Undo ``tgate_utils.register_forward``: every ``Attention`` gets its class's ``forward`` back and no cache."""
    for module in unet.modules():
        if type(module).__name__ == "Attention":
            vars(module).pop("forward", None)
            vars(module).pop("cache", None)


def tgate_flags(step: int) -> tuple[dict, dict, bool]:
    """T-GATE's (cross-attention, self-attention, keep_shape) flags for ``step`` at :data:`TGATE`, from the package."""
    from tgate.tgate_utils import tgate_scheduler

    return tgate_scheduler(cur_step=step, **TGATE)


@dataclass(frozen=True)
class Call:
    """One U-Net call of a run: its step, its weight in the run's mean step, and whether it halves the batch."""

    step: int
    weight: float
    half_batch: bool = False  # T-GATE after gate_step: no classifier-free guidance, the unconditional half only


class PeerRun:
    """A peer method (``"deepcache"``, ``"tgate"``, ``"atedm+deepcache"``) installed on ``unet`` for one run of
    its authors' step count (or of ``scheduler``'s timesteps, for a caller's own loop), driven call by call; a
    context manager that removes it on exit.

    ``timestep(step)`` is the U-Net's timestep argument for a step (an entry of a real schedule tensor, as a
    pipeline passes it, on ``device``), ``prepare(step)`` must run before that call (T-GATE's flags), ``calls()``
    is one call of every kind of step, in step order, weighted so that their weighted sum is the run's mean step.
    """

    def __init__(self, unet: nn.Module, name: str, backend: str = "auto", device=None, scheduler=None) -> None:
        if name not in PACKAGES:
            raise ValueError(f"name must be one of {tuple(PACKAGES)}, got {name!r}")
        self.unet, self.name, self.backend = unet, name, backend
        if scheduler is None:  # SD-XL base's scheduler over the authors' step count
            from diffusers import EulerDiscreteScheduler

            scheduler = EulerDiscreteScheduler()
            scheduler.set_timesteps(NUM_STEPS[name], device=device)  # timesteps [num_steps] (default: the CPU)
        self.scheduler = scheduler  # a caller's, with its timesteps set: its own sampling loop drives the calls
        self.num_steps = len(scheduler.timesteps)
        self.handle = None  # AT-EDM's, for "atedm+deepcache"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> PeerRun:
        from ..sdxl import AtEdmConfig
        from .methods import installed

        try:
            if self.name == "atedm+deepcache":
                self.handle = self._stack.enter_context(installed(self.unet, AtEdmConfig(backend=self.backend)))
            if self.name in ("deepcache", "atedm+deepcache"):
                self._stack.enter_context(deepcache(self.unet, self.scheduler))
            if self.name == "tgate":
                self._stack.callback(remove_tgate, self.unet)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def timestep(self, step: int) -> torch.Tensor:
        return self.scheduler.timesteps[step]  # a 0-dim view: AT-EDM's clock reads its index, DeepCache its value

    def kind(self, step: int) -> tuple:
        """What decides the cost of ``step``'s call (equal kinds, equal calls)."""
        if self.name == "tgate":
            ca, sa, keep_shape = tgate_flags(step)
            return tuple(ca.items()), tuple(sa.items()), keep_shape, step >= TGATE["gate_step"]
        full = deepcache_full(step)
        if self.name == "deepcache":
            return (full,)
        return full, self.handle.phase_at(step, self.num_steps)

    def calls(self) -> list[Call]:
        kinds = [self.kind(step) for step in range(self.num_steps)]
        count = Counter(kinds)
        first = {}
        for step, kind in enumerate(kinds):
            first.setdefault(kind, step)
        half = self.name == "tgate"
        return [Call(step, count[kind] / self.num_steps, half and step >= TGATE["gate_step"])
                for kind, step in sorted(first.items(), key=lambda item: item[1])]

    def prepare(self, step: int) -> None:
        if self.name == "tgate":
            from tgate.tgate_utils import register_forward

            ca, sa, keep_shape = tgate_flags(step)
            register_forward(self.unet, "Attention", ca_kward=ca, sa_kward=sa, keep_shape=keep_shape)


def half_batch(inputs: dict) -> dict:
    """The unconditional half of a CFG batch's U-Net keyword inputs (diffusers puts it first)."""
    def half(value):
        if isinstance(value, dict):
            return {key: half(v) for key, v in value.items()}
        return value[: value.shape[0] // 2] if isinstance(value, torch.Tensor) and value.ndim else value

    return half(inputs)
