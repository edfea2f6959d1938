"""SiTo (similarity-based token pruning, Zhang et al., AAAI 2025) on the same gather/recover ops as AT-EDM.

SiTo needs no attention map, so the attention itself stays whatever fused kernel the model already uses (SDPA).
``torch.ops.atedm.sito_select`` is declared with the other ops in :mod:`atedm_kernels.ops`; :func:`sito_select`
(its keyword-friendly wrapper) is re-exported here, and :mod:`.reference` holds the per-stage references. The U-Net
integration is :func:`atedm_kernels.sdxl.sito_layer.apply_sito`.
"""

from ..ops import check_sito_select, sito_select
from .reference import (
    base_tokens_reference,
    normalize_tokens,
    num_patches,
    num_pruned,
    pruned_tokens_reference,
    recovery_sources_reference,
    similarity_scores_reference,
    sito_kept_tokens,
    sito_select_reference,
)

__all__ = [
    "base_tokens_reference",
    "check_sito_select",
    "normalize_tokens",
    "num_patches",
    "num_pruned",
    "pruned_tokens_reference",
    "recovery_sources_reference",
    "similarity_scores_reference",
    "sito_kept_tokens",
    "sito_select",
    "sito_select_reference",
]
