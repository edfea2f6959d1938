"""The pruning layer of one attention block (a diffusers ``Transformer2DModel`` with 2 or more layers).

Inside the block's first ``BasicTransformerBlock`` (self-attention ``attn1``, text cross-attention ``attn2``,
feed-forward, each with its residual add):

1. its self-attention (``attn1``) runs through ``attention_with_map``, which also yields the head-averaged map
   ``amap`` [B, N, N]; with a cross-attention ``wpr`` (see below) its cross-attention (``attn2``) does too, giving
   ``ca_map`` [B, N, L] (N image-token queries, L text-token keys);
2. after that layer's feed-forward, ``gwpr`` (or ``gwpr_cross`` on ``ca_map``) scores the N tokens,
   ``select_tokens`` keeps the top K, and ``similarity_sources`` picks, for every pruned token, the kept token that
   attended to it most; ``gather_tokens`` hands the K kept tokens [B, K, C] to the block's remaining layers;
3. after ``proj_out`` (linear projection, SD-XL) or after the last layer (convolutional projection, SD 1.x/2.x),
   ``recover_tokens`` restores N tokens, before the residual add and the reshape to [B, C, H, W].

Cross-attention G-WPR (``AtEdmConfig.wpr`` other than "self"): the map is the pruning layer's own ``attn2`` map.
Pruning happens after that layer's feed-forward, so both of its attentions have run on all N tokens and both maps
describe the same tokens the mask is applied to; ``attn2``'s map is the one step between the self-attention and
the mask, and row i says which of the L prompt tokens image token i reads (``gwpr_cross`` ranks image tokens by how
much they attend to prompt tokens that many image tokens attend to). It is taken in the same fused pass as the
attention output (one ``attention_with_map`` over L keys instead of SDPA: a [B, N, L] map costs little next to
the [B, N, N] one). Recovery still needs the self-attention map: a cross map has no token-to-token entries, and a
pruned token must copy the kept token that attended to it most (the paper's similarity-based copy), so ``attn1``
keeps emitting ``amap`` and ``similarity_sources`` reads it, whatever ``wpr`` scores with.

Each batch element (both classifier-free-guidance halves included) gets its own mask. When the block is not
``active`` (DSAP's prune-less steps), every piece defers to diffusers' own code and the user's processor, so the
block is exactly dense. The pruning processors sit in front of the user's processors only during a pruning call
(:mod:`.processors`); the block's hooks live until ``remove()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import ops
from ..backends import preference_for
from ..kernels import cpu_attention
from . import ablations
from .config import AtEdmConfig
from .processors import CallWrapper, call_processor, is_fused_processor, plain_processor_types
from .schedule import block_limits, present


class PruningAttnProcessor(CallWrapper):
    """Processor of a pruning layer's attention during a pruning call: the attention's output, and its head-averaged
    map handed to the block: [B, N, N] for the self-attention (``cross=False``, on ``attn1``), [B, N, L] for the
    text cross-attention (``cross=True``, on ``attn2``; only with a cross-attention ``wpr``).

    When the user's processor (``inner``) is a plain one (SDPA, sliced, fused QKV, xFormers:
    :func:`~.processors.plain_processor_types`), ``attention_with_map`` computes both in one pass. Any other processor (PAG's perturbed attention, a custom one)
    keeps its own output, and the map comes from a second attention on the module's plain q and k: correct whatever
    the processor does, at the cost of one more attention in this layer.
    """

    def __init__(self, block: "BlockPruner", cross: bool = False) -> None:
        super().__init__()
        self.block = block
        self.cross = cross

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if self.cross:
            if not isinstance(encoder_hidden_states, torch.Tensor) or attention_mask is not None \
                    or hidden_states.ndim != 3:
                raise ValueError(
                    f"{self.block.name}: AT-EDM's wpr={self.block.config.wpr!r} needs plain cross-attention from "
                    "[B, N, C] tokens to one encoder_hidden_states tensor (no attention_mask)"
                )
        elif encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                f"{self.block.name}: AT-EDM's pruning layer needs plain self-attention on [B, N, C] tokens "
                "(no encoder_hidden_states, no attention_mask)"
            )
        if type(self.inner) in plain_processor_types():
            fused = is_fused_processor(self.inner)
            out, amap = self._attention(attn, hidden_states, encoder_hidden_states, fused=fused)
        else:
            out = call_processor(self.inner, attn, hidden_states, encoder_hidden_states, temb=temb)
            _, amap = self._attention(attn, hidden_states, encoder_hidden_states, fused=False)
        self.block.capture_map(amap, cross=self.cross)  # [B, N, N] or [B, N, L]
        return out

    def _attention(self, attn, hidden_states: torch.Tensor, context: torch.Tensor | None,
                   fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``attn``'s output [B, N, C] and head-averaged map [B, N, M] for queries from ``hidden_states`` [B, N, C]
        and keys and values from ``context`` [B, L, C_ctx] (cross-attention, M = L) or, when it is None, from
        ``hidden_states`` (self-attention, M = N); ``fused``: project with the fused ``to_qkv`` / ``to_kv`` (what
        ``FusedAttnProcessor2_0`` uses) instead of ``to_q``, ``to_k``, ``to_v``."""
        batch, tokens, _ = hidden_states.shape
        heads = attn.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, H*D] -> [B, H, T, D]
            return t.view(batch, t.shape[1], heads, -1).transpose(1, 2)

        source = hidden_states if context is None else context  # keys and values come from here: [B, M, C_src]
        if fused and context is None:
            q, k, v = map(split_heads, attn.to_qkv(hidden_states).chunk(3, dim=-1))  # [B, H, N, D] each
        elif fused:
            q = split_heads(attn.to_q(hidden_states))  # [B, H, N, D]
            k, v = map(split_heads, attn.to_kv(context).chunk(2, dim=-1))  # [B, H, L, D] each
        else:
            q, k, v = map(split_heads, (attn.to_q(hidden_states), attn.to_k(source), attn.to_v(source)))
        backend = self.block.backends["attention_with_map"]
        out, amap = ops.attention_with_map(q, k, v, attn.scale, map_dtype=map_dtype_for(q.device), backend=backend)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)  # [B, N, H*D]
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor, amap


def map_dtype_for(device: torch.device) -> torch.dtype | None:
    """The map's dtype in the pruning layer: the op's default, float16, on CUDA and on a CPU whose native kernels
    (``atedm_kernels._cpu``) read and write it in place; float32 elsewhere (MPS, or a CPU without ``_cpu``), where
    the PyTorch fallbacks would convert a 16-bit map on every read. float16 halves the map's memory (67 MB instead of
    134 MB per SD-XL 4096-token layer), gives a CPU the map a GPU ranks by, and halves G-WPR's time there
    (memory-bound: 14.8 against 32.4 ms per 4096-token layer in benchmarks/results/cpu_kernels.json)."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_attention.native_available()):
        return None
    return torch.float32


def check_prunable(transformer: nn.Module, name: str, cross: bool) -> None:
    """Refuse blocks whose first self-attention (and, when ``cross``, cross-attention) the pruning processors cannot
    reproduce exactly."""
    first = transformer.transformer_blocks[0]
    features = ("group_norm", "spatial_norm", "norm_q", "norm_k")
    unsupported = present(first.attn1, features)
    if cross:
        attn2 = getattr(first, "attn2", None)
        if attn2 is None:
            unsupported.append("no cross-attention to score a cross-attention wpr with")
        else:
            unsupported += present(attn2, (*features, "norm_cross"), prefix="attn2.")
    unsupported += block_limits(transformer, first)
    if unsupported:
        raise ValueError(f"{name}: AT-EDM cannot prune this attention block ({', '.join(unsupported)})")


class BlockPruner:
    """AT-EDM on one ``Transformer2DModel``: installs the processor and hooks, and removes them again."""

    def __init__(self, transformer: nn.Module, name: str, level: int, stage: str, position: str,
                 config: AtEdmConfig) -> None:
        cross = config.wpr != "self"  # scores from the layer's cross-attention map
        check_prunable(transformer, name, cross)
        self.transformer = transformer
        self.name = name
        self.level = level  # feature level: 1 is the highest resolution
        self.stage = stage  # "down", "mid" or "up"
        self.position = position  # "F", "M" or "L" within its stage (mid: "M")
        self.config = config
        # op -> backend, for each atedm op a pruning call runs: config.backend is a preference of kernel family,
        # resolved per op once: an op without a kernel of that family runs as "auto" does (e.g. "cpu" has no
        # select_tokens kernel; "cuda" has no attention kernel). The step records report these.
        self.backends = {op: preference_for(op, config.backend) for op in self._ops_run(config)}
        self.active = False  # set by the DSAP schedule before each U-Net call
        self.last_tokens: tuple[int, int] | None = None  # (N, K) of the latest pruned call
        # Called as observer(block, scores [B, N], keep_idx [B, K]) after each selection (pictures, debugging).
        self.observer: Callable[[BlockPruner, torch.Tensor, torch.Tensor], None] | None = None
        self._amap: torch.Tensor | None = None  # [B, N, N] from the pruning layer's self-attention
        self._ca_map: torch.Tensor | None = None  # [B, N, L] from its cross-attention (cross-attention wpr only)
        self._restore: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # keep_idx, prune_idx, src
        self._random_scores = ablations.RandomScores(name) if config.selection == "random" else None
        self._grid: tuple[int, int] | None = None  # (H, W) of the block's input, for recovery="interpolate"

        first = transformer.transformer_blocks[0]
        # (module, processor in front of the user's during pruning calls): attn1 always, attn2 for a cross wpr
        self._wrapped = [(first.attn1, PruningAttnProcessor(self))]
        if cross:
            self._wrapped.append((first.attn2, PruningAttnProcessor(self, cross=True)))
        self._hooks = [first.register_forward_hook(self._prune)]
        if config.prune_before_ff:
            self._hooks += [first.ff.register_forward_pre_hook(self._ff_kept_only),
                            first.ff.register_forward_hook(self._ff_back_to_all)]
        if config.recovery == "interpolate":
            self._hooks.append(transformer.register_forward_pre_hook(self._note_grid))
        if transformer.use_linear_projection:
            self._hooks.append(transformer.proj_out.register_forward_hook(self._recover))
        else:
            self._hooks.append(transformer.transformer_blocks[-1].register_forward_hook(self._recover))

    def capture_map(self, amap: torch.Tensor, cross: bool) -> None:
        if cross:
            self._ca_map = amap  # [B, N, L]
        else:
            self._amap = amap  # [B, N, N]

    def _select(self, hidden_states: torch.Tensor) -> None:
        """Score the N tokens of ``hidden_states`` [B, N, C], keep the top K, and find each pruned token's source."""
        cfg = self.config
        amap, self._amap = self._amap, None
        ca_map, self._ca_map = self._ca_map, None
        if amap is None or (cfg.wpr != "self" and ca_map is None):
            raise ValueError(
                f"{self.name}: its first layer's attention produced no map: it ran without AT-EDM's processor "
                "(attach() was not called, or the module's forward bypasses its processor)"
            )
        tokens = hidden_states.shape[1]
        keep = cfg.kept_tokens(tokens)
        backends = self.backends
        if self._random_scores is not None:
            scores = self._random_scores(hidden_states.shape[0], tokens, hidden_states.device)  # [B, N]
        elif cfg.wpr == "self":
            scores = ops.gwpr(amap, cfg.num_iters, cfg.damping, backend=backends["gwpr"])  # [B, N]
        else:
            scores = ops.gwpr_cross(ca_map, cfg.num_iters, cfg.wpr, backend=backends["gwpr_cross"])  # [B, N]
        keep_idx, prune_idx = ops.select_tokens(scores, keep, backend=backends["select_tokens"])  # [B, K], [B, N-K]
        src = ops.similarity_sources(amap, keep_idx, prune_idx, backend=backends["similarity_sources"])  # [B, N-K]
        self._restore = (keep_idx, prune_idx, src)
        self.last_tokens = (tokens, keep)
        if self.observer is not None:
            self.observer(self, scores, keep_idx)

    @property
    def selection(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(keep_idx [B, K], prune_idx [B, N-K], src [B, N-K]) of the current call, from its selection until its
        recovery (what an observer sees); None otherwise."""
        return self._restore

    @staticmethod
    def _ops_run(config: AtEdmConfig) -> tuple[str, ...]:
        scoring = () if config.selection == "random" else ("gwpr",) if config.wpr == "self" else ("gwpr_cross",)
        recovery = ("recover_tokens",) if config.recovery == "copy" else ()
        return ("attention_with_map", *scoring, "select_tokens", "similarity_sources", "gather_tokens", *recovery)

    def _gather(self, hidden_states: torch.Tensor) -> torch.Tensor:
        keep_idx = self._restore[0]
        return ops.gather_tokens(hidden_states, keep_idx, backend=self.backends["gather_tokens"])  # [B, K, C]

    def _prune(self, module, args, hidden_states: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        if not self.config.prune_before_ff:
            self._select(hidden_states)
        return self._gather(hidden_states)  # [B, K, C]

    def _ff_kept_only(self, module, args) -> tuple | None:
        """``prune_before_ff``: select before the first layer's feed-forward and feed it the K kept tokens only."""
        if not self.active:
            return None
        norm_hidden_states = args[0]  # [B, N, C]
        self._select(norm_hidden_states)
        return (self._gather(norm_hidden_states), *args[1:])  # [B, K, C]

    def _ff_back_to_all(self, module, args, ff_output: torch.Tensor) -> torch.Tensor | None:
        """Back to N rows for the layer's residual add (pruned rows 0: ``_prune`` drops them next)."""
        if not self.active:
            return None
        keep_idx, prune_idx, _ = self._restore
        return ablations.scatter_kept(ff_output, keep_idx, keep_idx.shape[1] + prune_idx.shape[1])  # [B, N, C]

    def _recover(self, module, args, hidden_states: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        (keep_idx, prune_idx, src), self._restore = self._restore, None
        tokens = keep_idx.shape[1] + prune_idx.shape[1]
        if self.config.recovery == "zeros":
            return ablations.recover_zeros(hidden_states, keep_idx, tokens)  # [B, N, C]
        if self.config.recovery == "interpolate":
            return ablations.recover_interpolate(hidden_states, keep_idx, self._grid)  # [B, N, C]
        backend = self.backends["recover_tokens"]
        return ops.recover_tokens(hidden_states, keep_idx, prune_idx, src, backend=backend)  # [B, N, C]

    def _note_grid(self, module, args) -> None:
        self._grid = tuple(args[0].shape[-2:])  # the block's input [B, C, H, W]

    def clear(self) -> None:
        """Forget the state of the latest call (map, selection, token counts)."""
        self._amap = self._ca_map = self._restore = self.last_tokens = None

    def attach(self) -> None:
        """Prune in the coming call: ``active``, and the pruning processor in front of the user's."""
        self.active = True
        for attn, processor in self._wrapped:
            processor.wrap(attn)

    def detach(self) -> None:
        """The call is over: the user's processors alone again."""
        for attn, processor in self._wrapped:
            processor.unwrap(attn)

    def remove(self) -> None:
        self.detach()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.active = False
        self.clear()
