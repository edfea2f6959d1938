"""``apply``: AT-EDM on a diffusers SD-XL pipeline or U-Net, with the DSAP schedule, undone by ``handle.remove()``.

DSAP (denoising-steps-aware pruning): during the prune-less phase (the first ``prune_less_fraction`` of the run, or
the first ``prune_less_steps`` steps) the prune-less blocks (by default the first block of each down stage and the
last block of each up stage) run dense; the mid block is always pruned. The step clock (:mod:`.clock`) and the
handle's life cycle (:mod:`.schedule`) are shared with the other methods.
"""

from __future__ import annotations

from .config import AtEdmConfig
from .pruning import BlockPruner
from .schedule import PruningHandle, attention_blocks

SECOND_LEVEL = 2  # feature level of SD-XL's 4096-token A2 blocks at 1024 px; AT-EDM-dagger leaves it dense


class AtEdmHandle(PruningHandle):
    """Undo handle of :func:`apply`; also a context manager (``with apply(pipe): ...``).

    Its units are :class:`~.pruning.BlockPruner`s, one per ``Transformer2DModel`` with 2 or more layers
    (``handle.blocks``); ``stats()`` keys are the blocks' module paths.
    """

    def __init__(self, pipe_or_unet, config: AtEdmConfig) -> None:
        super().__init__(pipe_or_unet, config)
        self._install(self._build_units, "no attention block with 2 or more transformer layers to prune")

    def _build_units(self) -> None:
        for name, block, level, stage, position in attention_blocks(self.unet):
            if len(block.transformer_blocks) < 2:
                continue  # single-layer blocks have no later layer to save: AT-EDM leaves them alone
            self.units.append(BlockPruner(block, name, level, stage, position, self.config))

    @property
    def blocks(self) -> list[BlockPruner]:
        return self.units

    def prunes(self, block: BlockPruner, phase: str) -> bool:
        """Whether ``block`` prunes in ``phase`` ("prune_less" or "normal")."""
        if self.config.skip_second_level and block.level == SECOND_LEVEL:
            return False
        if phase == "normal" or self.config.prune_less_blocks == "none":
            return True
        down, up = self.config.prune_less_blocks.split("-")
        dense_position = {"down": down, "up": up}.get(block.stage)
        return block.position != dense_position

    def observe(self, observer) -> None:
        """Call ``observer(block, scores [B, N], keep_idx [B, K])`` after every token selection (None: stop)."""
        for block in self.units:
            block.observer = observer


def apply(pipe_or_unet, config: AtEdmConfig | None = None) -> AtEdmHandle:
    """Apply AT-EDM to a diffusers SD-XL pipeline or U-Net in place; returns the handle that undoes it.

    Every ``Transformer2DModel`` with 2 or more layers gets a pruning layer (its first layer); the DSAP schedule of
    ``config`` decides per denoising step which of them prune.
    """
    if config is None:
        config = AtEdmConfig()
    if not isinstance(config, AtEdmConfig):
        raise TypeError(f"config must be an AtEdmConfig, got {type(config).__name__}")
    return AtEdmHandle(pipe_or_unet, config)
