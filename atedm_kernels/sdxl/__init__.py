"""Token pruning on diffusers SD-XL: AT-EDM (``apply(pipe_or_unet, AtEdmConfig())``), SiTo
(``apply_sito(pipe_or_unet, SiToConfig())``), both returning a handle, plus random-weight SD-XL models."""

from .apply import AtEdmHandle, apply
from .config import AtEdmConfig
from .models import build_sdxl_unet, build_tiny_pipeline, sdxl_unet_config, tiny_unet_config, unet_inputs
from .schedule import PruningHandle, StepRecord
from .sito_layer import SiToConfig, SiToHandle, apply_sito

__all__ = [
    "AtEdmConfig",
    "AtEdmHandle",
    "PruningHandle",
    "SiToConfig",
    "SiToHandle",
    "StepRecord",
    "apply",
    "apply_sito",
    "build_sdxl_unet",
    "build_tiny_pipeline",
    "sdxl_unet_config",
    "tiny_unet_config",
    "unet_inputs",
]
