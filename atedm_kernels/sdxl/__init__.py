"""Token pruning on diffusers SD-XL: AT-EDM (``apply(pipe_or_unet, AtEdmConfig())``) and SiTo
(``apply_sito(pipe_or_unet, SiToConfig())``), both returning a handle. The diffusers integration floor: it imports
the core (ops, backends, references, kernels) and nothing above it.

The random-weight SD-XL models moved to :mod:`atedm_kernels.tools.models`; importing them from here still works for
one release, with a ``DeprecationWarning``.
"""

import importlib
import warnings

from .apply import AtEdmHandle, apply
from .config import AtEdmConfig
from .schedule import PruningHandle, StepRecord
from .sito_layer import SiToConfig, SiToHandle, apply_sito

MOVED_TO_TOOLS = ("build_sdxl_unet", "build_tiny_pipeline", "sdxl_unet_config", "tiny_unet_config", "unet_inputs")

__all__ = [
    "AtEdmConfig",
    "AtEdmHandle",
    "PruningHandle",
    "SiToConfig",
    "SiToHandle",
    "StepRecord",
    "apply",
    "apply_sito",
]


def __getattr__(name: str):
    """The deprecated names: the model builders now live on the tools floor."""
    if name in MOVED_TO_TOOLS:
        warnings.warn(f"atedm_kernels.sdxl.{name} moved to atedm_kernels.tools.models.{name}; the old name goes in "
                      "the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("atedm_kernels.tools.models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
