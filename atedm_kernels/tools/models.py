"""SD-XL-architecture models with random weights (no download): the benchmark U-Net and a tiny twin for CPUs.

``scale="full"`` is SD-XL base's U-Net exactly (2.6 B parameters; A2 blocks at 4096 tokens and A10 blocks at 1024
tokens for a 1024x1024 image). ``scale="tiny"`` keeps its block structure (a DownBlock2D level with no attention,
then A2- and A-multi-layer levels, a multi-layer mid block, text-time conditioning, two transformer blocks per down
stage and three per up stage) at widths that run a forward on a CPU in well under a second.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

SDXL_LATENT_CHANNELS = 4
SDXL_VAE_SCALE = 8  # pixels per latent element


def sdxl_unet_config() -> dict:
    """The SD-XL base 1.0 U-Net config (diffusers ``UNet2DConditionModel`` keyword arguments)."""
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),  # diffusers' historical name: these are head counts (head dim 64)
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # pooled text 1280 + 6 time ids * 256
        "norm_num_groups": 32,
        "upcast_attention": False,
    }


TINY_TEXT_DIM = 32  # hidden size of each tiny text encoder; the U-Net sees both concatenated
TINY_TIME_DIM = 8


def tiny_unet_config() -> dict:
    """SD-XL's block structure at CPU widths: A2 and A4 blocks (standing in for A10), text-time conditioning."""
    config = sdxl_unet_config()
    config.update(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        transformer_layers_per_block=(1, 2, 4),
        attention_head_dim=(2, 4, 4),  # head counts: head dim 16
        cross_attention_dim=2 * TINY_TEXT_DIM,
        addition_time_embed_dim=TINY_TIME_DIM,
        projection_class_embeddings_input_dim=TINY_TEXT_DIM + 6 * TINY_TIME_DIM,
        norm_num_groups=8,
    )
    return config


SCALES = {"full": sdxl_unet_config, "tiny": tiny_unet_config}  # the model scales every tool offers
FILLS = ("init", "pool")
POOL_SIZE = (1 << 24) - 3  # random values tiled into the weights; odd so that rows of a weight do not repeat


def unet_config(scale: str) -> dict:
    """The U-Net keyword arguments of ``scale``: "full" (SD-XL base) or "tiny" (its block structure, CPU widths)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    return SCALES[scale]()


def parameter_bytes(config: dict, dtype: torch.dtype) -> int:
    """Bytes of the U-Net's parameters in ``dtype`` (counted on the meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        meta = UNet2DConditionModel(**config)
    return sum(p.numel() for p in meta.parameters()) * torch.empty((), dtype=dtype).element_size()


def build_sdxl_unet(
    scale: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    *,
    config: dict | None = None,
    fill: str = "init",
    progress: bool = False,
):
    """The one random-weight ``UNet2DConditionModel`` factory of the tools, of SD-XL's architecture, in eval mode.

    ``config`` (U-Net keyword arguments) overrides ``scale``'s. ``device="meta"`` builds it without memory (for
    MACs counting). ``fill`` says where the values come from: "init" is diffusers' own initialisation under
    ``torch.manual_seed(seed)``; "pool" builds on the meta device and fills every parameter from windows of one
    tiled random pool (:func:`_fill_from_pool`), about 10 s for SD-XL's 10 GB of float32 instead of about 40 s,
    for the models that are only timed.
    """
    from diffusers import UNet2DConditionModel

    kwargs = unet_config(scale) if config is None else config
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "pool" and torch.device(device).type != "meta":
        with torch.device("meta"):
            unet = UNet2DConditionModel(**kwargs)
        return _fill_from_pool(unet, torch.device(device), dtype, seed, progress).eval()
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**kwargs)
    return (unet if dtype == torch.float32 else unet.to(dtype=dtype)).eval()


@torch.no_grad()
def _fill_from_pool(unet, device: torch.device, dtype: torch.dtype, seed: int, progress: bool):
    """Allocate a meta-device U-Net's parameters on ``device`` in ``dtype`` and fill them in place.

    Matrices and kernels get ``U(-1, 1) / sqrt(fan_in)`` (PyTorch's default scale), 1-D weights (norms) 1, biases
    ``U(-1, 1) * 0.02``, each copied from a window of one random pool at a random offset.
    """
    from tqdm.auto import tqdm

    for module in unet.modules():  # allocate in place of the meta parameters, already in dtype
        for key, meta in module._parameters.items():
            if meta is not None:
                module._parameters[key] = nn.Parameter(torch.empty(meta.shape, device=device, dtype=dtype),
                                                       requires_grad=False)
    if any(True for _ in unet.buffers()):  # diffusers' U-Net has none; a meta buffer would fail much later
        raise NotImplementedError("fill='pool' fills parameters only; this U-Net config has buffers")
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.rand(POOL_SIZE, generator=gen) * 2 - 1).to(device=device, dtype=dtype)  # [P] in U(-1, 1)
    chunk = POOL_SIZE // 2
    params = list(unet.named_parameters())
    with tqdm(total=sum(p.numel() for _, p in params), desc="random weights", unit="param", unit_scale=True,
              disable=not progress, leave=False) as bar:
        for name, param in params:
            flat = param.view(-1)  # [numel]
            if param.dim() >= 2:
                scale = 1.0 / math.sqrt(param[0].numel())  # fan_in: in_features (x kernel area)
            elif name.endswith("weight"):
                flat.fill_(1.0)
                bar.update(flat.numel())
                continue
            else:
                scale = 0.02
            for start in range(0, flat.numel(), chunk):
                piece = flat[start : start + chunk]
                offset = int(torch.randint(0, POOL_SIZE - piece.numel() + 1, (1,), generator=gen))
                torch.mul(pool[offset : offset + piece.numel()], scale, out=piece)
            bar.update(flat.numel())
    return unet


def unet_inputs(unet, batch: int, height: int, width: int, seed: int = 0, text_len: int = 77) -> dict:
    """Random U-Net keyword inputs for an image of ``height x width`` pixels (SD-XL's text-time conditioning)."""
    config = unet.config
    param = next(unet.parameters())
    gen = torch.Generator().manual_seed(seed)
    text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=param.device, dtype=param.dtype)

    latent_h, latent_w = height // SDXL_VAE_SCALE, width // SDXL_VAE_SCALE
    time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=param.dtype, device=param.device)
    return {
        "sample": randn(batch, config.in_channels, latent_h, latent_w),
        "timestep": torch.tensor(999.0, device=param.device),
        "encoder_hidden_states": randn(batch, text_len, config.cross_attention_dim),
        "added_cond_kwargs": {"text_embeds": randn(batch, text_dim), "time_ids": time_ids.repeat(batch, 1)},
    }


def _tiny_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A character-level CLIP BPE vocabulary (lower-case letters, digits, a few marks) and an empty merge list."""
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n")
    return vocab_file, merges_file


def build_tiny_pipeline(seed: int = 0):
    """A ``StableDiffusionXLPipeline`` built from tiny random-weight components (no download), on the CPU."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = _tiny_tokenizer_files(Path(tmp))
        tokenizer, tokenizer_2 = (
            CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token="<|endoftext|>")
            for _ in range(2)
        )
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=SDXL_LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=256,
    )
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text_config).eval(),
        text_encoder_2=CLIPTextModelWithProjection(text_config).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=build_sdxl_unet("tiny", seed=seed),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
            steps_offset=1,
        ),
    )
