"""Pure-PyTorch references: they define what every ``atedm`` op means and run on any device."""

from .attention import attention_reference, attention_with_map_reference
from .gather_recover import gather_tokens_reference, recover_tokens_reference
from .gwpr import gwpr_cross_reference, gwpr_reference
from .select_tokens import select_tokens_reference
from .similarity_sources import similarity_sources_reference

__all__ = [
    "attention_reference",
    "attention_with_map_reference",
    "gather_tokens_reference",
    "gwpr_cross_reference",
    "gwpr_reference",
    "recover_tokens_reference",
    "select_tokens_reference",
    "similarity_sources_reference",
]
