"""``atedm generate``: images from a local SD-XL pipeline, dense and accelerated, side by side with the same seed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch


class ModelNotAvailableError(RuntimeError):
    """The pipeline is neither a local folder nor already in the Hugging Face cache."""


@dataclass
class Generated:
    method: str  # "dense", "atedm" or "sito"
    prompt: str
    image: object  # PIL.Image.Image
    seconds: float
    macs_per_step: int | None


def load_pipeline(model: str, device: torch.device):
    """A ``StableDiffusionXLPipeline`` from a local folder or the local cache only (never downloads)."""
    path = Path(model).expanduser()
    if path.is_file():
        raise ModelNotAvailableError(
            f"model {model!r} is a single file: pass a diffusers pipeline folder (StableDiffusionXLPipeline."
            "from_single_file converts a checkpoint into one)"
        )
    if model.startswith((".", "/", "~")) and not path.is_dir():
        raise ModelNotAvailableError(f"model folder {model!r} does not exist")
    if path.is_dir():
        model = str(path)
    from diffusers import StableDiffusionXLPipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelNotAvailableError(
            f"model {model!r} is not available locally (not a pipeline folder and not in the Hugging Face cache): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    return pipe.to(device)


def accelerate(pipe, method: str, config):
    """Apply the named method to the pipeline; returns its handle (``None`` for dense)."""
    if method == "dense":
        return None
    if method == "atedm":
        from .sdxl import apply

        return apply(pipe, config)
    if method == "sito":
        from .sdxl.sito_layer import apply_sito

        return apply_sito(pipe, config)
    raise ValueError(f"method must be 'dense', 'atedm' or 'sito', got {method!r}")


def generate_images(pipe, prompts: list[str], methods: dict, *, seed: int, steps: int, guidance: float,
                    height: int, width: int, macs: dict[str, int | None]) -> list[Generated]:
    """Generate every prompt with every method (``{name: config or None}``), same seed for all."""
    results = []
    for method, config in methods.items():
        handle = accelerate(pipe, method, config)
        try:
            # One untimed step first: kernel compilation, autotuning and allocator warm-up are not the method's.
            pipe(prompts[0], num_inference_steps=1, guidance_scale=guidance, height=height, width=width)
            for prompt in prompts:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                start = time.perf_counter()
                image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=height,
                             width=width, generator=generator).images[0]
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize()
                results.append(Generated(method, prompt, image, time.perf_counter() - start, macs.get(method)))
        finally:
            if handle is not None:
                handle.remove()
    return results


def side_by_side(results: list[Generated]):
    """One row per prompt, one column per method, with time and MACs written under each image."""
    from PIL import Image, ImageDraw

    prompts = list(dict.fromkeys(r.prompt for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    width, height = results[0].image.size
    caption = 36
    grid = Image.new("RGB", (width * len(methods), (height + caption) * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    by_key = {(r.prompt, r.method): r for r in results}
    for row, prompt in enumerate(prompts):
        for col, method in enumerate(methods):
            r = by_key[(prompt, method)]
            x, y = col * width, row * (height + caption)
            grid.paste(r.image, (x, y))
            macs = f"{r.macs_per_step / 1e12:.2f} T MACs/step" if r.macs_per_step else "MACs n/a"
            draw.text((x + 4, y + height + 2), f"{method}: {r.seconds:.2f} s", fill="black")
            draw.text((x + 4, y + height + 18), macs, fill="black")
    return grid


def save_results(results: list[Generated], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    prompts = list(dict.fromkeys(r.prompt for r in results))
    for r in results:
        path = out_dir / f"{prompts.index(r.prompt):03d}_{r.method}.png"
        r.image.save(path)
        paths.append(path)
    grid_path = out_dir / "grid.png"
    side_by_side(results).save(grid_path)
    paths.append(grid_path)
    return paths
