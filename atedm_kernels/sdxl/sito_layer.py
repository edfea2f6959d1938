"""SiTo on a diffusers SD U-Net: ``apply_sito(pipe_or_unet, SiToConfig()) -> SiToHandle``.

Where SiTo prunes (as in the method's published diffusers patch): in **every** ``BasicTransformerBlock`` of the
chosen levels, around the self-attention only.

1. A forward pre-hook on the ``BasicTransformerBlock`` takes the block's input tokens ``x [B, N, C]`` (the residual
   stream, before ``norm1``) and runs ``sito_select`` on them: base token per ``sy x sx`` patch, pruned tokens,
   and each pruned token's most similar kept token (``keep_idx [B, K]``, ``prune_idx [B, N-K]``, ``src``).
2. ``attn1``'s processor receives ``norm1(x) [B, N, C]``, gathers the K kept tokens, and runs the module's own
   processor (diffusers' SDPA, or whatever fused attention was installed) on them: queries, keys and values are
   all the K kept tokens, and ``to_q/to_k/to_v/to_out`` run on K tokens.
3. ``recover_tokens`` scatters the K outputs back to N: each pruned token copies the attention output of its
   ``src`` token, so the residual add ``attn_output + x`` and everything after it (cross-attention, feed-forward,
   ``proj_out``) stay N-sized and dense.

The token grid: a forward pre-hook on each ``Transformer2DModel`` reads its input ``hidden_states [B, C, H, W]``
(before ``proj_in`` flattens it), so ``h, w`` are exact for any latent size, square or not, with no assumption
about how the U-Net's downsamplers round odd sizes.

The same handle interface as :class:`~atedm_kernels.sdxl.apply.AtEdmHandle`: the denoising clock of
:mod:`.clock`, ``stats()`` (one :class:`StepRecord` per step with N and K of every layer that really pruned),
``reset()``, ``remove()``, context manager; the SiTo processor wraps whatever processor the module has at each call
(:mod:`.processors`). SiTo has no DSAP; ``prune_less_steps`` (default 0) optionally runs the first steps dense.
The base-token noise of all layers is drawn once per U-Net call, in the handle's pre-hook, so a compiled U-Net takes
it as an input (no graph break, seeded or not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .._validation import check_choice, check_float, check_int
from ..backends import BACKENDS, preference_for
from ..sito import sito_kept_tokens, sito_select
from .clock import Position
from .config import prune_less_count
from .processors import CallWrapper, call_processor
from .schedule import PruningHandle, attention_blocks, block_limits, call_argument, present


@dataclass(frozen=True)
class SiToConfig:
    """SiTo settings (defaults: the paper's prune ratio 0.5, 2x2 patches and noise 0.1, applied to the
    self-attention of every attention level: SiTo's published patch prunes only the highest-resolution blocks,
    which on SD-XL carry no attention, so this extends it to SD-XL's levels).

    Attributes:
        prune_ratio: fraction of each block's N tokens whose self-attention is not computed, in [0, 1);
            ``r = min(round(prune_ratio * N), N - P)``, ``K = N - r`` (P patches: the base tokens always stay).
            0 runs the pruning path with every token kept (the dense result).
        sx, sy: base-token patch width and height in tokens (ints >= 1); partial last patches count as patches.
        noise_alpha: scale of the Gaussian noise added to the similarity scores that choose base tokens (>= 0).
        levels: feature levels whose attention blocks prune (1 = the latent's resolution; SD-XL's attention sits
            at levels 2 and 3); ``None`` (default) = every level that has attention.
        prune_less_steps: denoising steps ``< prune_less_steps`` run dense (SiTo itself has none: default 0).
        seed: seed of the base-token noise: each U-Net call's noise is drawn from a generator seeded by (seed, the
            call's place in its run), so the same seed gives the same images whatever ran before and whichever
            pipeline calls; ``None`` draws from torch's global RNG.
        backend: backend of the gather/recover ops ("auto", "reference", "cuda"; "triton" counts as "auto").
    """

    prune_ratio: float = 0.5
    sx: int = 2
    sy: int = 2
    noise_alpha: float = 0.1
    levels: tuple[int, ...] | None = None
    prune_less_steps: int = 0
    seed: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        # a wrong type raises TypeError, a wrong value ValueError; each message names the field
        check_float("prune_ratio", self.prune_ratio, 0.0, 1.0, open_high=True)
        check_int("sx", self.sx, 1)
        check_int("sy", self.sy, 1)
        check_float("noise_alpha", self.noise_alpha, 0.0, math.inf)
        if self.levels is not None:
            levels = self.levels
            if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
                raise TypeError(f"levels must be None or a sequence of ints >= 1, got {type(levels).__name__}")
            levels = tuple(levels)
            if not levels:
                raise ValueError("levels must be None or a non-empty sequence of ints >= 1, got an empty one")
            for level in levels:
                check_int("levels", level, 1)
            object.__setattr__(self, "levels", tuple(sorted(set(levels))))
        check_int("prune_less_steps", self.prune_less_steps, 0)
        if self.seed is not None:
            check_int("seed", self.seed, -(2**63))
        check_choice("backend", self.backend, BACKENDS)

    def prune_less_count(self, num_steps: int) -> int:
        """How many of a ``num_steps`` run's first steps run dense: ``min(prune_less_steps, num_steps)``."""
        return prune_less_count(0.0, self.prune_less_steps, num_steps)

    def kept_tokens(self, h: int, w: int) -> int:
        """K for an ``h x w`` token grid: ``N - min(round(prune_ratio * N), N - P)``, ``N = h * w``."""
        return sito_kept_tokens(h, w, self.sx, self.sy, self.prune_ratio)


class _GridProbe:
    """Forward pre-hook on a ``Transformer2DModel``: remembers the (H, W) of its ``[B, C, H, W]`` input."""

    def __init__(self, transformer: nn.Module) -> None:
        self.grid: tuple[int, int] | None = None
        self._hook = transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.grid = (hidden.shape[-2], hidden.shape[-1]) if hidden.ndim == 4 else None

    def remove(self) -> None:
        self._hook.remove()
        self.grid = None


class SiToAttnProcessor(CallWrapper):
    """``attn1`` processor of a SiTo layer during a pruning call: the user's processor (``inner``) on the K kept
    tokens, recovered to N."""

    def __init__(self, layer: "SiToLayer") -> None:
        super().__init__()
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        selection, self.layer._selection = self.layer._selection, None
        if selection is None:
            return call_processor(self.inner, attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                f"{self.layer.name}: SiTo needs plain self-attention on [B, N, C] tokens (no encoder_hidden_states, "
                "no attention_mask)"
            )
        keep_idx, prune_idx, src = selection
        backends = self.layer.backends
        kept = ops.gather_tokens(hidden_states, keep_idx, backend=backends["gather_tokens"])  # [B, K, C]
        out = call_processor(self.inner, attn, kept, temb=temb)  # [B, K, C]: q, k, v all from K tokens
        self.layer.last_tokens = (hidden_states.shape[1], keep_idx.shape[1])  # reported only once really pruned
        return ops.recover_tokens(out, keep_idx, prune_idx, src, backend=backends["recover_tokens"])  # [B, N, C]


def _check_sito_prunable(block: nn.Module, transformer: nn.Module, name: str) -> None:
    attn = block.attn1
    unsupported = present(attn, ("group_norm", "spatial_norm"))
    if getattr(attn, "residual_connection", False):
        unsupported.append("residual_connection")
    unsupported += block_limits(transformer, block)
    if unsupported:
        raise ValueError(f"{name}: SiTo cannot prune this self-attention ({', '.join(unsupported)})")


class SiToLayer:
    """SiTo on one ``BasicTransformerBlock``: a pre-hook that selects tokens and an ``attn1`` processor."""

    def __init__(self, handle: "SiToHandle", block: nn.Module, probe: _GridProbe, name: str, level: int,
                 index: int) -> None:
        self.handle = handle
        self.config = handle.config
        self.block = block
        self.probe = probe
        self.name = name
        self.level = level
        self.index = index  # row of the handle's per-call noise
        # op -> backend, for each atedm op a pruning call runs: config.backend is a preference of kernel family,
        # resolved per op (as AT-EDM's layer does); the step records report these
        self.backends = {op: preference_for(op, self.config.backend)
                         for op in ("sito_select", "gather_tokens", "recover_tokens")}
        self.active = False  # set by the schedule before each U-Net call
        self.last_tokens: tuple[int, int] | None = None  # (N, K) of the latest call that really pruned
        self._selection: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._processor = SiToAttnProcessor(self)  # in front of the user's processor during pruning calls
        self._hook = block.register_forward_pre_hook(self._select, with_kwargs=True)

    def _select(self, module, args, kwargs):
        self._selection = None
        if not self.active:
            return None
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [B, N, C], before norm1
        grid = self.probe.grid
        if x.ndim != 3 or grid is None or grid[0] * grid[1] != x.shape[1]:
            raise ValueError(
                f"{self.name}: SiTo needs [B, N, C] tokens of the block's [B, C, H, W] grid, got tokens "
                f"{tuple(x.shape)} for grid {grid}"
            )
        cfg = self.config
        h, w = grid
        noise = self.handle.noise_for(self.index, x.shape[0], x.shape[1])  # [B, N] float32, or None
        self._selection = sito_select(x, h, w, cfg.sx, cfg.sy, cfg.prune_ratio, noise, cfg.noise_alpha)
        return None

    def clear(self) -> None:
        """Forget the state of the latest call (selection, token counts)."""
        self._selection = self.last_tokens = None

    def attach(self) -> None:
        """Prune in the coming call: ``active``, and the SiTo processor in front of the user's."""
        self.active = True
        self._processor.wrap(self.block.attn1)

    def detach(self) -> None:
        """The call is over: the user's processor alone again."""
        self._processor.unwrap(self.block.attn1)

    def remove(self) -> None:
        self.detach()
        self._hook.remove()
        self.active = False
        self.clear()


class SiToHandle(PruningHandle):
    """Undo handle of :func:`apply_sito`; also a context manager (``with apply_sito(pipe): ...``).

    Its units are the :class:`SiToLayer`s, one per pruned ``BasicTransformerBlock`` (``handle.layers``);
    ``stats()`` keys are ``"<attention block>.transformer_blocks.<j>"``.
    """

    def __init__(self, pipe_or_unet, config: SiToConfig) -> None:
        super().__init__(pipe_or_unet, config)
        self._probes: list[_GridProbe] = []
        self._noise: torch.Tensor | None = None  # [units, B, latent tokens] for the current call
        self._install(self._build_units, "no attention block with self-attention for SiTo to prune")

    def _build_units(self) -> None:
        config = self.config
        blocks = list(attention_blocks(self.unet))
        available = sorted({level for _, _, level, _, _ in blocks})
        if config.levels is not None and not set(config.levels) <= set(available):
            raise ValueError(
                f"levels {config.levels} are not all attention levels of this U-Net; it has {tuple(available)}"
            )
        for name, transformer, level, _, _ in blocks:
            if config.levels is not None and level not in config.levels:
                continue
            for j, block in enumerate(transformer.transformer_blocks):
                _check_sito_prunable(block, transformer, f"{name}.transformer_blocks.{j}")
            probe = _GridProbe(transformer)
            self._probes.append(probe)
            for j, block in enumerate(transformer.transformer_blocks):
                self.units.append(
                    SiToLayer(self, block, probe, f"{name}.transformer_blocks.{j}", level, len(self.units))
                )

    @property
    def layers(self) -> list[SiToLayer]:
        return self.units

    def prunes(self, layer: SiToLayer, phase: str) -> bool:
        """Every wrapped layer prunes in normal steps and none in the prune-less ones."""
        return phase == "normal"

    def _prepare_call(self, args: tuple, kwargs: dict, position: Position) -> None:
        """Draw the call's base-token noise for every layer at once, outside any compiled region: from the global
        RNG, or with ``seed`` from a generator seeded by (seed, the call's place in its run), so a seeded run gives
        the same noise whatever ran before and whichever pipeline calls."""
        self._noise = None
        cfg = self.config
        if cfg.noise_alpha == 0 or cfg.prune_ratio == 0 or not any(unit.active for unit in self.units):
            return
        sample = call_argument(args, kwargs, "sample", 0)  # [B, C, H, W]
        batch, tokens = sample.shape[0], sample.shape[-2] * sample.shape[-1]  # no level has more tokens
        generator = None
        if cfg.seed is not None and sample.device.type != "meta":  # meta (MACs counting) has no generator
            generator = torch.Generator(device=sample.device).manual_seed(position.seed(cfg.seed))
        self._noise = torch.randn(len(self.units), batch, tokens, generator=generator, device=sample.device)

    def noise_for(self, index: int, batch: int, tokens: int) -> torch.Tensor | None:
        """Layer ``index``'s noise for ``batch`` x ``tokens`` tokens this call ([B, N] float32), or None."""
        if self._noise is None:
            return None
        if batch > self._noise.shape[1] or tokens > self._noise.shape[2]:
            raise ValueError(
                f"SiTo layer {index} sees {batch} x {tokens} tokens, more than the U-Net's sample "
                f"({self._noise.shape[1]} x {self._noise.shape[2]})"
            )
        return self._noise[index, :batch, :tokens]

    def remove(self) -> None:
        """Restore the U-Net exactly: hooks gone; the attention processors were never changed between calls."""
        super().remove()
        for probe in self._probes:
            probe.remove()
        self._probes = []
        self._noise = None


def apply_sito(pipe_or_unet, config: SiToConfig | None = None) -> SiToHandle:
    """Apply SiTo to a diffusers SD/SD-XL pipeline or U-Net in place; returns the handle that undoes it.

    Every ``BasicTransformerBlock`` of ``config.levels`` (default: all attention levels) prunes its self-attention.
    AT-EDM and SiTo both rewrite attention processors, so only one of them can be applied to a U-Net at a time.
    """
    if config is None:
        config = SiToConfig()
    if not isinstance(config, SiToConfig):
        raise TypeError(f"config must be a SiToConfig, got {type(config).__name__}")
    return SiToHandle(pipe_or_unet, config)
