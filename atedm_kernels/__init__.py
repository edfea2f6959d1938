"""atedm-kernels: AT-EDM token pruning for diffusion U-Nets as fused GPU kernels.

Importing the package registers the ``torch.ops.atedm.*`` ops (see :mod:`atedm_kernels.ops` for the table).
"""

from . import ops, sito
from .backends import BACKENDS, BackendUnavailableError
from .ops import (
    attention,
    attention_with_map,
    gather_tokens,
    gwpr,
    gwpr_cross,
    recover_tokens,
    select_tokens,
    similarity_sources,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "attention",
    "attention_with_map",
    "gather_tokens",
    "gwpr",
    "gwpr_cross",
    "ops",
    "recover_tokens",
    "select_tokens",
    "similarity_sources",
    "sito",
]
