"""The Fashion-MNIST denoiser: a diffusers ``UNet2DConditionModel`` with SD-XL's block layout at 32x32 pixels,
conditioned on the class through cross-attention tokens, so AT-EDM's every block kind and its cross-attention
G-WPR variants apply to it.

Layout (SD-XL's, narrowed): a ``DownBlock2D`` level with no attention at 32x32, then cross-attention levels at 16x16
(256 tokens, 2 transformer layers, as SD-XL's A2 blocks) and 8x8 (64 tokens, 4 layers, standing in for SD-XL's A10),
a mid block of 4 layers, and the mirrored up path (three resnets / transformer blocks per up stage). Head dim 16.
The class ``c`` (0..9, or :data:`NULL_CLASS` for classifier-free guidance's unconditional branch) enters only as
:data:`CLASS_TOKENS` learnt tokens of width :data:`TOKEN_DIM`: ``encoder_hidden_states = tokens[c]`` ``[B, 4, 64]``.
The noise schedule is DDPM's with a cosine ``alphas_cumprod`` (``squaredcos_cap_v2``), ε-prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..models import sdxl_unet_config

NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the unconditional class of classifier-free guidance
CLASS_TOKENS = 4
TOKEN_DIM = 64
TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"
WEIGHTS = Path(__file__).parent / "weights"
DENOISER_FILE = WEIGHTS / "fashion_unet.safetensors"


def unet_config() -> dict:
    """``UNet2DConditionModel`` keyword arguments: SD-XL's layout (:func:`~..models.sdxl_unet_config`) at
    Fashion-MNIST's size, one pixel channel in and out, the class through cross-attention only (no text-time
    embedding)."""
    config = sdxl_unet_config()
    config.update(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2, 4),  # level 1 has no attention; SD-XL's are (1, 2, 10)
        attention_head_dim=(2, 4, 6),  # diffusers' name for head counts: head dim 16
        cross_attention_dim=TOKEN_DIM,
        norm_num_groups=16,
        addition_embed_type=None,
        addition_time_embed_dim=None,
        projection_class_embeddings_input_dim=None,
    )
    return config


class FashionDenoiser(nn.Module):
    """ε-prediction ``forward(sample [B, 1, 32, 32], timestep [B] or scalar, labels [B]) -> [B, 1, 32, 32]``."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(**unet_config())
        self.class_tokens = nn.Embedding(NUM_CLASSES + 1, CLASS_TOKENS * TOKEN_DIM)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """The cross-attention tokens of ``labels`` ``[B]``: ``[B, CLASS_TOKENS, TOKEN_DIM]``."""
        return self.class_tokens(labels).view(labels.shape[0], CLASS_TOKENS, TOKEN_DIM)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=self.condition(labels)).sample


def noise_scheduler():
    """The training schedule (DDPM, cosine); samplers are made from its config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)


def save(model: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # float16 on disk (half the bytes; the loader casts back): 10 MB for the 5.1 M parameters
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={key: json.dumps(value) for key, value in metadata.items()})


def load_denoiser(path: Path = DENOISER_FILE, device: str | torch.device = "cpu") -> FashionDenoiser:
    """The trained denoiser (the committed EMA weights), in eval mode."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: python -m atedm_kernels.tools.fashion.train makes it")
    model = FashionDenoiser()
    model.load_state_dict({name: tensor.float() for name, tensor in load_file(str(path)).items()})
    return model.to(device).eval().requires_grad_(False)
