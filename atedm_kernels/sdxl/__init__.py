"""AT-EDM on diffusers SD-XL: ``apply(pipe_or_unet, AtEdmConfig()) -> handle``, plus random-weight SD-XL models."""

from .apply import AtEdmHandle, StepRecord, apply
from .config import AtEdmConfig
from .models import build_sdxl_unet, build_tiny_pipeline, sdxl_unet_config, tiny_unet_config, unet_inputs

__all__ = [
    "AtEdmConfig",
    "AtEdmHandle",
    "StepRecord",
    "apply",
    "build_sdxl_unet",
    "build_tiny_pipeline",
    "sdxl_unet_config",
    "tiny_unet_config",
    "unet_inputs",
]
